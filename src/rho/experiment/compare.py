"""`rho experiment --compare OTHER_RUN`: a finished run's test losses beside another run's, per
arm and axis, with their difference and whether it is inside the seed spread. It trains
nothing: both runs' results.json are read through the typed ``Results`` model.

Inside the seed spread means |difference of the means| ≤ the larger of the two runs' sample
standard deviations over seeds: two runs differing by no more than one seed differs from
another within a run. Beyond it, the difference is the settings', the environment's or the
code's (the settings that differ are listed); with a single seed on a side the spread is
unknown.
"""

from __future__ import annotations

from pathlib import Path

from rho.errors import UserError
from rho.experiment.records import Results, Spread
from rho.experiment.settings import FILE_FIELDS

INSIDE = (
    "inside the seed spread: |difference of the means| <= the larger of the two runs' sample "
    "std over seeds"
)


def results_of(run: str | Path) -> Results:
    """A finished run's results: RUN/results.json, or RUN itself when it is the file."""
    path = Path(run)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"{run}: no results.json there (not a finished rho experiment run)")
    return Results.read(path)


def inside(this: Spread, other: Spread) -> bool | None:
    """Whether two runs' means of one loss differ by no more than the larger sample std; None
    when either has a single seed (its spread is unknown)."""
    if this.n < 2 or other.n < 2:
        return None
    return abs(this.mean - other.mean) <= max(this.std, other.std)


def _cell(s: Spread | None) -> str:
    if s is None:
        return "—"
    spread = f" ± {s.std:.4f}" if s.n > 1 else ""
    return f"{s.mean:.4f}{spread} ({s.n})"


def compare_lines(this: Results, other: Results, names: tuple[str, str]) -> list[str]:
    """The comparison table (every arm and axis of either run), its tally and the settings
    that differ; ``names``: how the two runs are called."""
    rows = [("arm", "axis", names[0], names[1], "difference", "inside")]
    tally = {"yes": 0, "no": 0, "unknown": 0}
    a, b = this.summary.losses, other.summary.losses
    for arm in [*a, *(x for x in b if x not in a)]:
        axes = [*a.get(arm, {}), *(x for x in b.get(arm, {}) if x not in a.get(arm, {}))]
        for axis in axes:
            mine, theirs = a.get(arm, {}).get(axis), b.get(arm, {}).get(axis)
            if mine is None or theirs is None:
                rows.append((arm, axis, _cell(mine), _cell(theirs), "—", "—"))
                continue
            verdict = {True: "yes", False: "no", None: "unknown"}[inside(mine, theirs)]
            tally[verdict] += 1
            rows.append((arm, axis, _cell(mine), _cell(theirs),
                         f"{mine.mean - theirs.mean:+.4f}", verdict))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f"test loss (nats/token), {names[0]} vs {names[1]}: mean ± sample std over seeds (n)",
        INSIDE,
        "",
        *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows),
        "",
        f"{tally['yes']} inside the seed spread, {tally['no']} outside, {tally['unknown']} "
        "unknown (a single seed)",
    ]
    return lines + setting_lines(this, other)


def setting_lines(this: Results, other: Results) -> list[str]:
    """The settings two runs differ in (not --out; input files by their content, through the
    data stage's key, not by their paths)."""
    mine, theirs = this.config.as_dict(), other.config.as_dict()
    skipped = ("out", *FILE_FIELDS)
    differ = [k for k in mine if k not in skipped and mine[k] != theirs.get(k)]
    same_data = this.stages.get("data") == other.stages.get("data")
    return [
        "settings that differ: " + (", ".join(differ) or "none"),
        "input data: " + ("the same (the data stage's key)" if same_data else "different"),
    ]


def compare_runs(this_run: str | Path, other_run: str | Path) -> str:
    """Print and return the comparison of ``this_run`` with ``other_run`` (run directories or
    their results.json)."""
    this, other = results_of(this_run), results_of(other_run)
    text = "\n".join(compare_lines(this, other, (str(this_run), str(other_run))))
    print(text)
    return text
