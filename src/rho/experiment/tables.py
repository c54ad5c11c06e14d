"""Markdown tables and sentences of `rho experiment`'s report, from rho.experiment.summary's
numbers: test loss per axis (mean ± std over seeds), compute to a target, and who wins."""

from __future__ import annotations


def _num(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def _pm(s: dict | None, spec: str = ".4g", unit: str = "") -> str:
    """Mean ± std of a spread (just the mean for one value; "not reached" for None)."""
    if s is None:
        return "not reached"
    if s["n"] < 2:
        return f"{format(s['mean'], spec)}{unit}"
    return f"{format(s['mean'], spec)}{unit} ± {format(s['std'], spec)}"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def loss_markdown(loss_table: dict, runs: dict | None = None, split: str = "test") -> str:
    """One row per arm, one column per axis: "mean ± std (n seeds)" of the final loss (nats per
    token); with ``runs``, a column listing the seeds. A single seed is marked as having no
    spread."""
    axes: list[str] = []
    for row in loss_table.values():
        axes += [a for a in row if a not in axes]
    head = ["arm", *[f"{axis} {split} loss" for axis in axes]]
    if runs is not None:
        head.append("seeds")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, row in loss_table.items():
        cells = [arm]
        for axis in axes:
            s = row.get(axis)
            if s is None:
                cells.append("n/a")
            elif s["n"] < 2:
                cells.append(f"{s['mean']:.4f} (1 seed, spread unknown)")
            else:
                cells.append(f"{s['mean']:.4f} ± {s['std']:.4f} ({_seeds(s['n'])})")
        if runs is not None:
            cells.append(", ".join(str(r.get("seed", "?")) for r in runs.get(arm, [])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _break_even(n: int | None, is_baseline: bool) -> str:
    return "—" if is_baseline else ("never" if n is None else str(n))


def _total_cells(total: dict | None, spec: str, ratio, n_amortise: int, baseline: bool) -> list:
    """One-off total (with its ratio), the amortised ratios and the break-even of a cost."""
    if total is None:
        return ["n/a"] * (2 + n_amortise)
    return [
        _pm(total["one_off"], spec) + ratio(total["ratio_one_off"]),
        *[_pm(a["ratio"], ".3g", "×") for a in total["amortised"]],
        _break_even(total["break_even"], baseline),
    ]


def compute_markdown(compute_table: dict) -> str:
    """Two tables, FLOPs and wall time: per arm the cost to reach the baseline's final validation
    loss (mean ± std over seeds, × the baseline's whole run), the one-off total with the arm's
    overhead, the total amortised over N runs (× the baseline) and the break-even N; and a
    paragraph saying how each number is counted."""
    if not compute_table:
        return "No runs."
    first = next(iter(compute_table.values()))
    base, target = first["baseline"], first["target"]
    runs_n = [a["runs"] for a in (first["flops_total"] or {"amortised": []})["amortised"]]

    def ratio(s):
        return "" if s is None else f" ({_pm(s, '.3g', '×')})"

    head = ["arm", "reached", "tokens to reach", "training FLOPs to reach", "overhead FLOPs",
            "one-off total FLOPs", *[f"amortised over {n} (× {base})" for n in runs_n],
            "break-even runs"]  # fmt: skip
    lines = [
        f"Cost to reach {base}'s final validation loss ({target:.4f}); in brackets, the ratio to "
        f"{base}'s whole run (below 1 is cheaper).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for arm, row in compute_table.items():
        t = row["flops_total"]
        cells = [
            arm,
            f"{row['reached']}/{row['seeds']}",
            _pm(row["tokens"]) + ratio(row["ratio"]["tokens"]),
            _pm(row["flops_train"], ".3g") + ratio(row["ratio"]["flops_train"]),
            _num(row["overhead"]["flops"], ".3g"),
        ]
        cells += _total_cells(t, ".3g", ratio, len(runs_n), arm == base)
        lines.append("| " + " | ".join(cells) + " |")

    head = ["arm", "training seconds to reach", "overhead seconds", "one-off total seconds",
            *[f"amortised over {n} (× {base})" for n in runs_n], "break-even runs"]  # fmt: skip
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, row in compute_table.items():
        t = row["seconds_total"]
        cells = [
            arm,
            _pm(row["seconds_train"], ".4g") + ratio(row["ratio"]["seconds_train"]),
            _num(row["overhead"]["seconds"], ".4g"),
        ]
        cells += _total_cells(t, ".4g", ratio, len(runs_n), arm == base)
        lines.append("| " + " | ".join(cells) + " |")

    overheads = [f"{arm}: {row['overhead']['what']}" for arm, row in compute_table.items()
                 if row["overhead"]["what"]]  # fmt: skip
    lines += [
        "",
        "Costs to reach are interpolated linearly between evaluations, per seed; an arm counts as "
        'reaching only if every seed does (otherwise "not reached"). '
        f"{base}'s own cost is its whole run. The one-off total adds the arm's overhead before "
        "training (spent once, reusable by later runs); amortised over N runs it adds overhead/N. "
        "Break-even: the smallest N from which on the amortised total is below the baseline's "
        "(never: the arm's training alone costs at least as much).",
    ]
    if overheads:
        lines += ["", "Overheads — " + "; ".join(overheads) + "."]
    return "\n".join(lines)


def _lead(rank: dict, spec: str, unit: str = "") -> str:
    """The bracket after a winner: its value vs the runner-up's, and whether the lead is
    supported by the spread over seeds."""
    unit = f" {unit}" if unit else ""
    value = f"{_pm(rank['value'], spec)}{unit}"
    if rank["runner_up"] is None:
        return f"({value}; no other arm to compare)"
    d = rank["difference"]
    if d["supported"] is None:
        verdict = "whether the difference is supported is unknown: an arm has a single seed"
    else:
        verdict = (
            f"the difference, {format(d['delta'], spec)} ± {format(2 * d['se'], spec)} (2 SE), "
            + ("is supported" if d["supported"] else "is not supported")
            + " by the spread over seeds"
        )
    runner = f"{_pm(rank['runner_up_value'], spec)}{unit}"
    return f"({value} vs {runner} for {rank['runner_up']}, the runner-up; {verdict})"


def winners_markdown(winners: dict, focus: str = "slm") -> str:
    """The winners as plain sentences, one per axis, naming the winner whichever arm it is; when
    it is not ``focus`` (the method under test), where ``focus`` placed."""

    def placed(rank: dict) -> str:
        if rank["arm"] == focus or focus not in rank["ranking"]:
            return ""
        place = rank["ranking"].index(focus) + 1
        return f" {focus} is not the winner: it places {place} of {len(rank['ranking'])}."

    lines = []
    for axis, rank in winners["loss"].items():
        if rank is not None:
            lead = _lead(rank, ".4f", "nats/token")
            lines.append(f"- On {axis} loss, {rank['arm']} wins {lead}." + placed(rank))
    base, target = winners.get("baseline"), winners.get("target")
    if base is None:
        return "\n".join(lines)
    reach = f"{base}'s final validation loss ({target:.4f})"
    for key, sentence, spec in (
        ("tokens", f"Fewest training tokens to reach {reach}", ".4g"),
        ("flops_one_off", "Least one-off total FLOPs (training to reach + overhead)", ".3g"),
        ("flops_amortised", "Least total FLOPs amortised over {runs} runs", ".3g"),
    ):
        rank = winners.get(key)
        if rank is None:
            lines.append(f"- {sentence.format(runs='N')}: no arm reached the target on every seed.")
            continue
        head = sentence.format(runs=rank.get("runs", "N"))
        lines.append(f"- {head}: {rank['arm']} {_lead(rank, spec)}." + placed(rank))
    return "\n".join(lines)
