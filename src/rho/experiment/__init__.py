"""`rho demo`, and the experiments that train models: the demo's stages, arms, compute
accounting and report, and the ratio sweep."""
