"""What `rho experiment`'s settings (rho.experiment.settings) parse from their text: the
held-out sets, the input files (globs expanded) and the budget ladder."""

from __future__ import annotations

import glob
from pathlib import Path

from rho.errors import UserError


def heldout_sets(items: list[str]) -> dict[str, list[str]]:
    """NAME -> files, in the order given (the first is the target axis)."""
    sets: dict[str, list[str]] = {}
    for item in items:
        name, sep, files = item.partition("=")
        if not sep or not name or not files:
            raise UserError(f"--heldout {item!r}: write NAME=FILE[,FILE...]")
        if name in sets:
            raise UserError(f"--heldout {name!r} is given twice")
        sets[name] = [f for f in files.split(",") if f]
        if not sets[name]:
            raise UserError(f"--heldout {item!r} names no file: write NAME=FILE[,FILE...]")
    return sets


def expand(patterns: list[str]) -> list[str]:
    """Input files with globs expanded (sorted); every input must exist."""
    out = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"no input matches {pattern!r}")
        for match in matches:
            if not Path(match).exists():
                raise UserError(f"input {match} does not exist")
        out += matches
    return out


def budget_list(value: list[float] | str | None) -> list[float]:
    """--budgets as sorted, distinct fractions of the arms' budget in (0, 1], always with 1 (the
    arms' own runs): a list (the config) or comma-separated text (the flag)."""
    if value is None or value == "":
        return [1.0]
    if isinstance(value, str):
        try:
            value = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"--budgets {value!r}: write fractions such as 0.25,0.5,1") from None
    for fraction in value:
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"--budgets: {fraction:g} is not a fraction of the budget in (0, 1]")
    return sorted({float(f) for f in value} | {1.0})
