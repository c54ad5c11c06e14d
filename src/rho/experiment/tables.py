"""Markdown tables and sentences of `rho experiment`'s report, from results.json's ``summary``
(rho.experiment.facts): test loss per axis (mean ± sample std over seeds), compute to a target
(on how many seeds each arm reached it), who wins, every arm against clm and clm-mix with its
test, the family those tests are adjusted in, and the reference-seed pairs."""

from __future__ import annotations

from rho.experiment.arms import ARMS
from rho.experiment.records import (
    ComputeRow,
    Decontamination,
    Difference,
    DynamicsTable,
    Family,
    Frontier,
    Rank,
    Spread,
    Totals,
    Winners,
)
from rho.experiment.stats import verdict


def seconds(x: float | None) -> str:
    """Seconds to two significant figures: a shared machine's timings vary by several per
    cent between identical runs, so a third digit would be noise."""
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    return f"{float(f'{x:.2g}'):g}" if abs(x) < 100 else f"{round(x, -len(str(int(x))) + 2):.0f}"


def _num(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def pm(s: Spread | None, spec: str = ".4g", unit: str = "") -> str:
    """Mean ± sample std of a spread (just the mean for one value; "—" for None: a cost not
    reached on every seed)."""
    if s is None:
        return "—"
    fmt = seconds if spec == "s" else (lambda x: format(x, spec))
    if s.n < 2:
        return f"{fmt(s.mean)}{unit}"
    return f"{fmt(s.mean)}{unit} ± {fmt(s.std)}"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def loss_markdown(loss_table: dict, runs: dict | None = None, split: str = "test") -> str:
    """One row per arm, one column per axis: "mean ± sample std (n seeds)" of the final loss
    (nats per token); with ``runs``, a column listing the seeds. A single seed is marked as
    having no spread."""
    axes: list[str] = []
    for row in loss_table.values():
        axes += [a for a in row if a not in axes]
    head = ["arm", *[f"{axis} {split} loss (mean ± sample std)" for axis in axes]]
    if runs is not None:
        head.append("seeds")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, row in loss_table.items():
        cells = [arm]
        for axis in axes:
            s = row.get(axis)
            if s is None:
                cells.append("n/a")
            elif s.n < 2:
                cells.append(f"{s.mean:.4f} (1 seed, spread unknown)")
            else:
                cells.append(f"{s.mean:.4f} ± {s.std:.4f} ({_seeds(s.n)})")
        if runs is not None:
            cells.append(", ".join(str(r.seed) for r in runs.get(arm, [])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _break_even(n: int | None, is_baseline: bool) -> str:
    return "—" if is_baseline else ("never" if n is None else str(n))


def _total_cells(total: Totals | None, spec: str, n_amortise: int, baseline: bool) -> list:
    """One-off total (with its ratio), the amortised ratios and the break-even of a cost."""
    if total is None:
        return ["n/a"] * (2 + n_amortise)
    return [
        pm(total.one_off, spec) + _ratio_text(total.ratio_one_off),
        *[pm(a.ratio, ".3g", "×") for a in total.amortised],
        _break_even(total.break_even, baseline),
    ]


def _ratio_text(s: Spread | None) -> str:
    return "" if s is None else f" ({pm(s, '.3g', '×')})"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _head(cells: list[str]) -> list[str]:
    return [_row(cells), "|" + "---|" * len(cells)]


FLOPS_COLUMNS = (
    "arm",
    "reached",
    "tokens trained to reach",
    "of",
    "training FLOPs to reach",
    "overhead FLOPs",
    "one-off total FLOPs",
)  # then the amortised ratios
SECONDS_COLUMNS = ("arm", "training seconds to reach", "overhead seconds", "one-off total seconds")


def compute_markdown(
    compute_table: dict[str, ComputeRow], read_per_trained: dict | None = None
) -> str:
    """Two tables, FLOPs and wall time: per arm the cost to reach the target (mean ± sample std
    over seeds, × the baseline's whole run), the one-off total with the arm's overhead, the
    total amortised over N runs (× the baseline) and the break-even N; and a paragraph saying
    how each number is counted. ``read_per_trained``: windows read per window trained."""
    if not compute_table:
        return "No runs."
    first = next(iter(compute_table.values()))
    base = first.baseline
    runs_n = [a.runs for a in first.flops_total.amortised] if first.flops_total else []
    amortised = [f"amortised over {n} (× {base})" for n in runs_n]
    lines = [
        f"Values are mean ± sample std over seeds; in brackets, the ratio to {base}'s whole run "
        "(below 1 is cheaper).",
        "",
        *_head([*FLOPS_COLUMNS, *amortised, "break-even runs"]),
    ]
    for arm, row in compute_table.items():
        cells = [
            arm,
            f"{row.reached} of {_seeds(row.seeds)}",
            pm(row.tokens) + _ratio_text(row.ratio.tokens),
            f"{ARMS[arm].data} tokens" if arm in ARMS else "",
            pm(row.flops_train, ".3g") + _ratio_text(row.ratio.flops_train),
            _num(row.overhead.flops, ".3g"),
        ]
        lines.append(_row(cells + _total_cells(row.flops_total, ".3g", len(runs_n), arm == base)))
    lines += ["", *_head([*SECONDS_COLUMNS, *amortised, "break-even runs"])]
    for arm, row in compute_table.items():
        cells = [
            arm,
            pm(row.seconds_train, "s") + _ratio_text(row.ratio.seconds_train),
            seconds(row.overhead.seconds),
        ]
        lines.append(_row(cells + _total_cells(row.seconds_total, "s", len(runs_n), arm == base)))
    return "\n".join(lines + _compute_notes(compute_table, read_per_trained or {}))


def _compute_notes(compute_table: dict[str, ComputeRow], read_per_trained: dict) -> list[str]:
    """How the compute tables count, the arms that read more than they train on, overheads."""
    overheads = [
        f"{arm}: {row.overhead.what}" for arm, row in compute_table.items() if row.overhead.what
    ]
    reads = [
        f"{arm} reads {r:.3g}× the windows it trains on (forward only; its FLOPs include "
        "them, its token column does not)"
        for arm, r in read_per_trained.items()
        if r > 1
    ]
    lines = [
        "",
        "Costs to reach are interpolated linearly between evaluations, per seed; an arm's costs "
        'are given only where every one of its seeds reaches the target ("—" where "reached" '
        "says fewer did: a mean over the seeds that got there would report the lucky ones). "
        "The one-off total adds the "
        "arm's overhead before training (spent once, reusable by later runs); amortised over N "
        "runs it adds overhead/N. Break-even: the smallest N from which on the amortised total "
        "is below the baseline's (never: the arm's training alone costs at least as much). "
        "Tokens are of different kinds: corpus, the mixed corpus, the pruned corpus, or the "
        "curated data.",
    ]
    if reads:
        lines += ["", "; ".join(reads) + "."]
    if overheads:
        lines += ["", "Overheads — " + "; ".join(overheads) + "."]
    return lines


def _lead(rank: Rank, spec: str, unit: str = "") -> str:
    """The bracket after a winner: its value vs the runner-up's, and whether the lead is
    supported by the spread over seeds (its test named)."""
    unit = f" {unit}" if unit else ""
    value = f"{pm(rank.value, spec)}{unit}"
    if rank.runner_up is None:
        return f"({value}; no other arm to compare)"
    d = rank.difference
    runner = f"{pm(rank.runner_up_value, spec)}{unit}"
    return (
        f"({value} vs {runner} for {rank.runner_up}, the runner-up; the difference, "
        f"{format(d.delta, spec)}, is {verdict(d)})"
    )


def winners_markdown(
    winners: Winners, focus: str = "slm", left_out=(), compute: dict | None = None
) -> str:
    """The winners as plain sentences, one per axis, naming the winner whichever arm it is; when
    it is not ``focus`` (the method under test), where ``focus`` placed. Values are mean ±
    sample std over seeds. ``compute``: the compute table, to say on how many seeds each arm
    reached the target where none reached it on every seed."""

    def placed(rank: Rank) -> str:
        if rank.arm == focus or focus not in rank.ranking:
            return ""
        return f" {focus} is not the winner: it places {rank.places[focus]} of {rank.ranked}."

    lines = []
    for axis, rank in winners.loss.items():
        if rank is not None:
            lead = _lead(rank, ".4f", "nats/token")
            lines.append(f"- On {axis} test loss, {rank.arm} wins {lead}." + placed(rank))
    base, target = winners.baseline, winners.target
    if base is None:
        return "\n".join(lines)
    reach = f"the target ({target:.4f})"
    skipped = f" ({', '.join(left_out)} left out: curated tokens, not corpus)" if left_out else ""
    for key, sentence, spec in (
        ("tokens", f"Fewest tokens trained to reach {reach}{skipped}", ".4g"),
        ("flops_one_off", "Least one-off total FLOPs (training to reach + overhead)", ".3g"),
        ("flops_amortised", "Least total FLOPs amortised over {runs} runs", ".3g"),
    ):
        rank = getattr(winners, key)
        if rank is None:
            lines.append(f"- {sentence.format(runs='N')}: {_none_reached(key, compute, left_out)}.")
            continue
        head = sentence.format(runs=rank.runs or "N")
        lines.append(f"- {head}: {rank.arm} {_lead(rank, spec)}." + placed(rank))
    return "\n".join(lines)


def _none_reached(key: str, compute: dict | None, left_out) -> str:
    """Why a compute rank is empty: no ranked arm reached the target on all its seeds, with
    each one's count when the compute table is given."""
    if not compute:
        return "no arm reached the target on every seed"
    ranked = [(a, r) for a, r in compute.items() if key != "tokens" or a not in left_out]
    counts = ", ".join(f"{a} {r.reached} of {r.seeds}" for a, r in ranked)
    return f"no arm reached the target on every seed (seeds that reached it: {counts})"


def against_markdown(against: dict[str, dict[str, dict[str, Difference]]]) -> str:
    """Each arm minus each baseline (clm, clm-mix) on every axis, with the test and its
    verdict."""
    lines = _head(["arm", "against", "axis", "difference (nats/token)", "verdict"])
    for base, per_arm in against.items():
        for arm, per_axis in per_arm.items():
            for axis, d in per_axis.items():
                lines.append(_row([arm, base, axis, f"{d.delta:+.4f}", verdict(d)]))
    return "\n".join(lines)


def family_text(family: Family) -> str:
    """Which tests are adjusted together, and what "supported" means."""
    if family.size == 0:
        return (
            "No difference in this report could be tested (an arm with a single seed, or no "
            "spread over seeds): none is called supported."
        )
    tests = "1 test" if family.size == 1 else f"{family.size} tests"
    return (
        f"Every claim of this report that a difference is supported rests on {family.method}-"
        f"adjusted p over its family of {tests}: {family.what}. Supported: "
        f"adjusted p < {family.alpha}. Each test's own p and its adjusted p are in "
        "results.json (`summary`), and the family's tests are named in `summary.tests`."
    )


def reached_text(row: ComputeRow) -> str:
    """How many of an arm's seeds reached the target, in words (never "every seed" unless
    all did)."""
    return f"reached on {row.reached} of {_seeds(row.seeds)}"


def pairs_markdown(pairs: dict, axes: list[str]) -> str:
    """Per arm and seed: the scoring reference that scored its windows (its stage), that
    reference's own test loss, the arm's, and the arm's minus clm's of the same data seed
    (data order cancels; the reference does not)."""
    head = [
        "arm",
        "seed",
        "scored by",
        *[f"reference's {a}" for a in axes],
        *[f"{a}" for a in axes],
        *[f"{a} minus clm" for a in axes],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, rows in pairs.items():
        for r in rows:
            diff = r.minus_clm or {}
            cells = [
                arm,
                str(r.seed),
                r.reference,
                *[_num(r.reference_test.get(a), ".4f") for a in axes],
                *[_num(r.test.get(a), ".4f") for a in axes],
                *[_num(diff.get(a), "+.4f") for a in axes],
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frontier_lines(frontier: Frontier, compute: dict[str, ComputeRow]) -> list[str]:
    """Whether each arm's one-off total beats clm's run and the curated mix's (``compute``:
    on how many seeds an arm reached the target, where not on all)."""
    lines = [
        "## The compute frontier",
        "",
        "![validation loss against one-off total FLOPs](frontier.png)",
        "",
        "| arm | one-off FLOPs to the target (× clm's run) | seeds below clm's run | "
        "against the curated mix |",
        "|---|---|---|---|",
    ]
    for arm, e in frontier.arms.items():
        ratio = e.ratio_one_off
        if ratio is None:
            lines.append(f"| {arm} | {reached_text(compute[arm])} | n/a | n/a |")
            continue
        below = f"{e.seeds_below_clm} of {_seeds(ratio.n)}"
        mix = e.against_mix
        versus = "—" if mix is None else f"{mix.delta:+.3g} FLOPs: {verdict(mix)}"
        lines.append(f"| {arm} | {pm(ratio, '.3g', '×')} | {below} | {versus} |")
    if frontier.best is not None:
        lines += [
            "",
            f"Least one-off FLOPs to the target: {frontier.best}, at "
            f"{frontier.best_ratio:.3g}× clm's run.",
        ]
    return [*lines, ""]


def decontam_markdown(decontam: dict[str, Decontamination]) -> str:
    lines = [
        "| held-out set | documents before → after | shared 13-grams before → after |",
        "|---|---|---|",
    ]
    for name, d in decontam.items():
        b, a = d.before, d.after
        lines.append(
            f"| {name} | {b.documents} → {a.documents} | "
            f"{b.shared_fraction:.2%} → {a.shared_fraction:.2%} |"
        )
    return "\n".join(lines)


def dynamics_markdown(table: DynamicsTable) -> str:
    """The split of this run's tokens (the paper's own split is quoted in words below, not set
    beside it as if like for like)."""
    lines = ["| category | tokens | share of scored tokens |", "|---|---:|---:|"]
    for row in table.rows:
        lines.append(f"| {row.category} | {row.count:,} | {row.percent:.1f}% |")
    lines.append(f"| all scored | {table.scored:,} | |")
    return "\n".join(lines)
