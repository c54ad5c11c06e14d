"""Built-in few-shot tasks: a name -> a loader returning ``question`` / ``answer`` items in memory.

``rho eval --task NAME`` looks a name up here when it is not a path to a ``.jsonl`` file.
"""

from __future__ import annotations

import importlib

from rho.errors import UserError

BUILTIN_TASKS = {
    "champ": (
        "rho.tasks.champ:load",
        "CHAMP competition math problems with numeric answers (pip install champ-dataset)",
    ),
}


def load_builtin(name: str) -> list[dict]:
    """The items of a built-in task (each a dict with at least ``question`` and ``answer``)."""
    if name not in BUILTIN_TASKS:
        raise UserError(f"unknown built-in task {name!r}; choose one of {', '.join(BUILTIN_TASKS)}")
    module, func = BUILTIN_TASKS[name][0].split(":")
    return getattr(importlib.import_module(module), func)()
