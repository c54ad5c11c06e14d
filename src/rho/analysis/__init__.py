"""The paper's analyses, reproducible on any run: pure computations and their commands.

- :mod:`rho.analysis.dynamics`: token-loss trajectories across checkpoints (H→L, L→L, H→H, L→H;
  Figure 3), loss spread, strongly fluctuating tokens.
- :mod:`rho.analysis.selection`: which tokens SLM selects, their loss under SLM and CLM
  (Figure 6), the perplexity of tokens selected at each checkpoint evaluated at every checkpoint
  (Figure 8), selection overlap.
- :mod:`rho.analysis.html`: a self-contained HTML page highlighting would-be-selected tokens.
- :mod:`rho.analysis.plots`: matplotlib figures (Agg backend).
- :mod:`rho.analysis.dynamics_report`, :mod:`rho.analysis.selection_report`,
  :mod:`rho.analysis.html_report`: one command each (load, call the pure analyses, write the
  files), sharing :mod:`rho.analysis.common`; their options are :mod:`rho.commands.analyze`
  (``rho analyze dynamics | selection | html``).

The first three are pure (arrays in, arrays or dicts out, no I/O) and tested on hand-made inputs.
"""
