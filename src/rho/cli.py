"""`rho <subcommand>`: dispatch only; each subcommand is a module of rho.commands (its options
dataclass, parsed by rho.commands.parser, and its main). Modules load lazily so `rho --help`
stays fast (torch is not imported).
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
from rho.io.disk import disk_error_message
from rho.io.files import one_line

SUBCOMMANDS = {  # each is rho.commands.<name> (its options, --help and main)
    "demo": "rho experiment on the shipped demo data",
    "experiment": "every arm, seeds, baselines on your data",
    "tokenize": "corpus files -> TokenStore (train or load a tokenizer)",
    "score": "reference model x TokenStore -> LossStore (resumable, torchrun)",
    "inspect": "one-screen summary of a TokenStore or LossStore",
    "train": "CLM / SLM training on transformers.Trainer",
    "prune": "offline pruning: drop whole documents or windows by loss",
    "eval": "held-out loss per domain, few-shot tasks, lm-eval bridge",
    "analyze": "token-loss dynamics, selection analyses, html",
    "sweep": "short SLM trainings at several ratios (Fig. 9)",
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: rho <subcommand> [options]   (rho <subcommand> --help for its options)", ""]
    lines += [f"  {name:<{width}}  {help_}" for name, help_ in SUBCOMMANDS.items()]
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


def _output_of(argv: list[str]) -> str | None:
    """The output a command names (``--out``/``--output_dir``), for an error that names none."""
    for flag in ("--out", "--output_dir", "--output-dir"):
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


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
    try:
        from rho.commands.parser import run

        return run(importlib.import_module(f"rho.commands.{name}").COMMAND, f"rho {name}", rest)
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
    except Exception as err:  # noqa: BLE001 (only a refused write is caught; the rest re-raised)
        message = disk_error_message(err, _output_of(rest))
        if message is None:
            raise  # a bug in rho: its traceback
        print(f"rho {name}: error: {message}", file=sys.stderr)
        return 2
