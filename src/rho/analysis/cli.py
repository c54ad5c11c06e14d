"""`rho analyze <command>`: dispatch only. Each command is its own module (``cli(argv)`` there);
they load lazily, by name, so `rho analyze --help` stays fast and the analyses never import the
trainer. `rho analyze sweep` is the old spelling of `rho sweep` (rho.experiment.sweep).
"""

from __future__ import annotations

import importlib
import sys

from rho.errors import UserError

COMMANDS = {
    "dynamics": (
        "rho.analysis.dynamics_report:cli",
        "token-loss trajectories across checkpoints: H→L, L→L, H→H, L→H (Fig. 3)",
    ),
    "selection": (
        "rho.analysis.selection_report:cli",
        "selected vs unselected loss under SLM and CLM; selection across checkpoints (Figs. 6, 8)",
    ),
    "sweep": (
        "rho.experiment.sweep:cli",
        "short SLM trainings at several ratios; held-out loss against ratio (Fig. 9)",
    ),
    "html": (
        "rho.analysis.html_report:cli",
        "an HTML page of passages with would-be-selected tokens highlighted (Fig. 13)",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rho analyze <command> [options]   (rho analyze <command> --help)", ""]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise UserError(f"unknown analysis {name!r}; choose one of {', '.join(COMMANDS)}")
    module, func = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), func)(rest)
