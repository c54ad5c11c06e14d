"""`rho <subcommand>`'s commands: one module each, holding the options dataclass whose field docs
are the command's `--help` and ``main``, which calls the library with explicit keywords. The
shared parser (``--config``, both spellings, one-line errors) is :mod:`rho.commands.parser`."""
