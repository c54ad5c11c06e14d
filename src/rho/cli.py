"""`rho <subcommand>`: argument parsing only; each stage module owns its subcommand's options.

Each entry maps a subcommand to "module:function"; the function takes the remaining argv and
returns an exit code. Modules load lazily so `rho --help` stays fast (torch is not imported).
Errors a user can fix are one line on stderr and exit 2; a traceback means a bug in rho.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys

from rho import __version__
from rho.errors import UserError
from rho.files import one_line

SUBCOMMANDS = {
    "demo": ("rho.experiment.demo:demo_cli", "rho experiment on the shipped demo data"),
    "experiment": (
        "rho.experiment.demo:experiment_cli",
        "every arm, seeds, baselines on your data",
    ),
    "tokenize": ("rho.tokenize:cli", "corpus files -> TokenStore (train or load a tokenizer)"),
    "score": ("rho.score:cli", "reference model x TokenStore -> LossStore (resumable, torchrun)"),
    "inspect": ("rho.inspect_store:cli", "one-screen summary of a TokenStore or LossStore"),
    "train": ("rho.training:cli", "CLM / SLM training on transformers.Trainer"),
    "prune": ("rho.prune:cli", "offline pruning: drop whole documents or windows by loss"),
    "eval": ("rho.eval.cli:cli", "held-out loss per domain, few-shot tasks, lm-eval bridge"),
    "analyze": ("rho.analysis.cli:cli", "token-loss dynamics, selection analyses, html"),
    "sweep": ("rho.experiment.sweep:cli", "short SLM trainings at several ratios (Fig. 9)"),
}


def pick(args, *names: str) -> dict:
    """Some parsed options as keyword arguments (argparse dests named like the parameters)."""
    return {name: getattr(args, name) for name in names}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: rho <subcommand> [options]   (rho <subcommand> --help for its options)", ""]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def unsafe_pickle_message(err: pickle.UnpicklingError) -> str:
    """One line for a pickle that torch's weights_only loader refused. Only what the file asked
    for is named: torch's messages (they vary with the payload) also suggest loading it with
    weights_only=False or allowlisting its globals, which would run the file's code, so none of
    their text is repeated."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # no terminal colour codes
    found = re.search(r"GLOBAL\s+([\w.]+)", text)
    reason = f"it calls {found.group(1)}" if found else "it holds more than tensors"
    return f"refused to load unsafe pickled data (loading it could run code): {reason}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"rho {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"rho: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[name][0].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except UserError as err:
        print(f"rho {name}: error: {one_line(err, 1000)}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError as err:  # torch's weights_only loader refused a pickle
        print(f"rho {name}: error: {unsafe_pickle_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rho {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rho inspect ... | head -1`: the reader left; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
