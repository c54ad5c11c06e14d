"""The model-size ladder's report.md and figure (rho.experiment.ladder), formatted from its
``Ladder`` record only: the rule, each size's budgets, per axis each arm's test loss (and one-off
FLOPs ratio, on every axis) at every size, the ranking per size and the agreement of the
rankings between sizes; ``ladder.png``: each arm's loss minus CLM's against model size."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from tqdm.auto import tqdm

from rho.analysis.plots import plain_text
from rho.experiment.figures import DPI
from rho.experiment.records.ladder import Agreement, AxisLadder, Ladder
from rho.experiment.tables import pm
from rho.io.files import write_text_atomic

FIGURE = "ladder.png"
BASELINE = "clm"


def write_ladder_report(ladder: Ladder, out: Path, title: str) -> str:
    """report.md and ladder.png into ``out``; prints and returns the short answer."""
    plot_ladder(ladder, out / FIGURE)
    lines = [f"# {title}", "", *setting_lines(ladder)]
    for axis, table in ladder.axes.items():
        lines += axis_lines(ladder, axis, table)
    lines += ["## Definitions", "", DEFINITIONS, ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    answer = "\n".join(answer_lines(ladder))
    tqdm.write(answer)
    return answer


DEFINITIONS = (
    "At each size, a pair of arms is **tied** when the difference of their mean test losses "
    "is at most the pooled sample standard deviation of their seeds; otherwise it is ordered "
    "by the means. Two sizes **agree** on a pair when they decide it the same way: the same "
    "order, or a tie at both (a tie at one size only, or the opposite order, disagrees). "
    "Agreement is the share of the pairs of arms both sizes ran that agree. Kendall's tau is "
    "tau-b of the two sizes' mean losses (scipy.stats.kendalltau; 1: the same ranking, -1: "
    "reversed), with its p-value (exact for small samples, no ties). A one-off FLOPs ratio "
    "of 0.00× (an arm's charges aside) means the base itself, at the curves' first "
    "evaluation, is already at or below CLM's final loss on that axis."
)


def setting_lines(ladder: Ladder) -> list[str]:
    lines = [
        f"The whole race once per model size, each size a `rho experiment` run in its own "
        f"directory. Budgets by one rule: {ladder.rule.text}.",
        "",
        "| size | parameters (N) | base pretraining tokens | tokens per arm | reference tokens "
        "| run |",
        "|---|---|---|---|---|---|",
    ]
    for r in ladder.rungs:
        base = f"{r.base_tokens:,}" if r.base_tokens else "(a given model)"
        ref = f"{r.ref_tokens:,}" if r.ref_tokens else "the arms' budget"
        lines.append(f"| {r.base} | {r.n_params:,} | {base} | {r.train_tokens:,} | {ref} | "
                     f"[{r.run}]({r.run}/report.md) |")  # fmt: skip
    return [*lines, "", f"![each arm's test loss minus CLM's against model size]({FIGURE})", ""]


def axis_lines(ladder: Ladder, axis: str, table: AxisLadder, heading: str = "##") -> list[str]:
    """An axis's losses (and ratios), rankings and agreements, under a ``heading`` title."""
    sizes = list(table.losses)
    base_of = {r.name: r.base for r in ladder.rungs}
    target = " (in brackets: one-off FLOPs to reach CLM's loss here, ratio to CLM's run)" if any(
        table.ratios.values()) else ""  # fmt: skip
    lines = [f"{heading} {axis}{target}", "", "Test loss, mean ± sample std over seeds:", "",
             "| arm | " + " | ".join(base_of[s] for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]  # fmt: skip
    arms = list(dict.fromkeys(a for s in sizes for a in table.losses[s]))
    for arm in arms:
        cells = []
        for size in sizes:
            loss = table.losses[size].get(arm)
            cell = pm(loss, ".4f") if loss else "—"
            if arm in table.ratios.get(size, {}) and arm != BASELINE:  # CLM's own: 1 by definition
                ratio = table.ratios[size][arm]
                cell += f" ({ratio:.2f}×)" if ratio is not None else " (not reached)"
            cells.append(cell)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Ranking (lowest mean test loss first):", ""]
    lines += [f"- {base_of[s]}: {', '.join(table.rankings[s])}" for s in sizes]
    lines += ["", "| sizes | pairs | same order | opposite | tied at both | tied at one "
              "| agreement | Kendall's tau (p) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    shown = table.adjacent + [a for a in table.to_largest if a not in table.adjacent]
    lines += [agreement_row(a, base_of) for a in shown]
    return [*lines, ""]


def agreement_row(a: Agreement, base_of: dict[str, str]) -> str:
    share = "n/a" if a.agreement is None else f"{a.agreement:.0%}"
    tau = "n/a" if a.tau is None else f"{a.tau:+.2f} (p {a.tau_p:.2g})"
    return (f"| {base_of[a.smaller]} → {base_of[a.larger]} | {a.pairs} | {a.same_order} | "
            f"{a.opposite_order} | {a.tied_both} | {a.tied_one} | {share} | {tau} |")  # fmt: skip


def answer_lines(ladder: Ladder) -> list[str]:
    """Per axis: how well each smaller size's decisions predict the largest size's."""
    base_of = {r.name: r.base for r in ladder.rungs}
    lines = ["ladder: do the smaller sizes' decisions hold at the largest size?"]
    for axis, table in ladder.axes.items():
        parts = [
            f"{base_of[a.smaller]} {'n/a' if a.agreement is None else f'{a.agreement:.0%}'} "
            f"of {a.pairs} pairs, tau {'n/a' if a.tau is None else f'{a.tau:+.2f}'}"
            for a in table.to_largest
        ]
        largest = base_of[table.to_largest[-1].larger] if table.to_largest else "?"
        lines.append(f"  {axis} (vs {largest}): " + "; ".join(parts))
    return lines


@plain_text  # arm and axis names are the user's text
def plot_ladder(ladder: Ladder, path: Path) -> None:
    """One panel per axis: each arm's mean test loss minus CLM's against N (log x)."""
    n_of = {r.name: r.n_params for r in ladder.rungs}
    base_of = {r.name: r.base for r in ladder.rungs}
    fig = Figure(figsize=(5.5 * len(ladder.axes), 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, len(ladder.axes), squeeze=False)[0]
    for ax, (axis, table) in zip(panels, ladder.axes.items(), strict=True):
        sizes = [s for s in table.losses if BASELINE in table.losses[s]]
        arms = dict.fromkeys(a for s in sizes for a in table.losses[s] if a != BASELINE)
        for arm in arms:
            shown = [s for s in sizes if arm in table.losses[s]]
            gaps = [table.losses[s][arm].mean - table.losses[s][BASELINE].mean for s in shown]
            ax.plot([n_of[s] for s in shown], gaps, "-o", ms=4, label=arm)
        ax.axhline(0.0, color="0.3", lw=1, linestyle=":", label=f"{BASELINE} (0)")
        ax.set_xscale("log")
        ticks = [n_of[s] for s in sizes]  # the sizes themselves (log ticks would be mathtext)
        ax.set_xticks(ticks, labels=[f"{base_of[s]}\n{n_of[s]:,}" for s in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("model parameters (N)")
        ax.set_ylabel(f"{axis} test loss minus CLM's (nats/token)")
        ax.set_title(f"{axis}: below 0 beats CLM")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI)
