"""Files, schemas and stores: atomic writes, every file rho reads typed, the stores."""
