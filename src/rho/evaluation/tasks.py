"""Built-in few-shot tasks: a name -> a loader returning ``question`` / ``answer`` items in memory.

``rho eval --task NAME`` looks a name up here when it is not a path to a ``.jsonl`` file. To add
a task, write a module with a ``load() -> list[dict]`` next to champ.py and register it below.
"""

from __future__ import annotations

from collections.abc import Callable

from rho.errors import UserError
from rho.evaluation import champ

# name: (loader, one-line description)
BUILTIN_TASKS: dict[str, tuple[Callable[[], list[dict]], str]] = {
    "champ": (
        champ.load,
        "CHAMP competition math problems with numeric answers (pip install champ-dataset)",
    ),
}


def load_builtin(name: str) -> list[dict]:
    """The items of a built-in task (each a dict with at least ``question`` and ``answer``)."""
    if name not in BUILTIN_TASKS:
        raise UserError(f"unknown built-in task {name!r}; choose one of {', '.join(BUILTIN_TASKS)}")
    return BUILTIN_TASKS[name][0]()
