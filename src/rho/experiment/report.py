"""`rho experiment`'s report: report.md (for people), the plots, and a one-screen summary. Every
sentence is built from recorded facts: the config, what each run recorded (steps, warm-up,
tokens, windows read), the data stage's counts and results.json's ``summary``
(rho.experiment.facts); the only numbers not from results.json are the paper's, in ``PAPER``.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from rho.experiment.arms import ARMS
from rho.experiment.figures import plot_axes, plot_curves, plot_frontier
from rho.experiment.frontier_report import axes_lines, ladder_lines
from rho.experiment.records import (
    Analyses,
    ArmRun,
    Results,
    SelectionRates,
    Target,
)
from rho.experiment.report_setting import setting_lines, splits_lines
from rho.experiment.tables import (
    against_markdown,
    compute_markdown,
    decontam_markdown,
    dynamics_markdown,
    family_text,
    frontier_lines,
    loss_markdown,
    pairs_markdown,
    seconds,
    winners_markdown,
)
from rho.io.files import write_text_atomic

# The paper's figures quoted by the report (PAPER.md), the only numbers not in results.json.
PAPER = {
    "dynamics": "H→L 26%, L→L 51%, H→H 11%, L→H 12% (TinyLlama-1B on OpenWebMath, a 0.2-nat "
    "threshold on slope × span)",
    "scale": "The paper continually pretrains 1B and 7B models on 15B tokens and reports 5–10× "
    "fewer tokens to the baseline's accuracy.",
}


def write_report(results: Results, out: Path, title: str) -> str:
    """Write report.md and the plots into ``out``; print and return the summary."""
    axes, summary = results.data.axes, results.summary
    axis = summary.target_axis
    plot_curves(results.runs, out / "curves.png", axis=axis)
    plot_frontier(
        results.runs,
        results.overhead,
        summary.target.loss,
        out / "frontier.png",
        axis=axis,
        points=summary.frontier.points,
    )
    if len(axes) > 1:
        plot_axes(summary.losses, out / "axes.png", x=axis, y=next(a for a in axes if a != axis))
    text = "\n".join(report_lines(results, title))
    write_text_atomic(out / "report.md", text)
    text = summary_text(results, out)
    tqdm.write(text)
    return text


def report_lines(results: Results, title: str) -> list[str]:
    cfg, data, summary = results.config, results.data, results.summary
    share = data.mix.share if data.mix is not None else cfg.mix_share
    lines = [f"# {title}", "", *setting_lines(results), "## Arms", ""]
    lines += [f"- **{arm}**: {ARMS[arm].text(cfg, share)}" for arm in results.runs]
    lines += ["", *splits_lines(results)]
    lines += [
        "## Decontamination (before anything is trained)",
        "",
        f"Held-out documents sharing more than {cfg.decontam_threshold:.0%} of their word "
        "13-grams with the curated data, the corpus or the base data are dropped.",
        "",
        decontam_markdown(data.decontamination),
        "",
        *loss_lines(results),
        f"## Compute to reach clm's final validation {summary.target_axis} loss",
        "",
        target_sentence(summary.target, cfg.eval_windows == 0),
        "",
        compute_markdown(summary.compute, summary.read_per_trained),
        "",
        *frontier_lines(summary.frontier, summary.compute),
        *ladder_lines(summary.frontier, results.ladder),
        *axes_lines(summary),
        *analyses_lines(results.analyses),
        "## Why these numbers differ from the paper's",
        "",
        f"{PAPER['scale']} This run's models have {params(results.runs)} parameters, its corpus "
        f"{data.tokens['corpus']:,} tokens, on a CPU: a loss on held-out text is not the "
        "paper's few-shot accuracy. The ratios above are what this setting measured.",
        "",
        "## Time (seconds per stage)",
        "",
        time_line(results),
        "",
    ]
    return lines


def loss_lines(results: Results) -> list[str]:
    """Test losses, the winners, every arm against clm, the reference seeds, the plots."""
    axes, runs, summary = results.data.axes, results.runs, results.summary
    lines = [
        f"## Test loss on every axis (nats/token; {summary.target_axis} is the target)",
        "",
        loss_markdown(summary.losses, runs),
        "",
        winners_markdown(
            summary.winners, left_out=summary.tokens_left_out, compute=summary.compute
        ),
        "",
        f"### Every arm against {' and '.join(summary.against)}",
        "",
        against_markdown(summary.against),
        "",
        family_text(summary.tests),
        "",
        "The spread over seeds leaves out: " + "; ".join(summary.uncovered_variance) + ". "
        "A difference supported here can still change with any of them.",
        "",
    ]
    if summary.reference_pairs:
        lines += [
            "### Each arm's scoring reference",
            "",
            "The model that scored each arm seed's windows (results.json's `references`: its "
            "validation loss too); the reference's part in the spread shows across seeds.",
            "",
            pairs_markdown(summary.reference_pairs, axes),
            "",
        ]
    if len(axes) > 1:
        lines += ["![test loss on both axes](axes.png)", ""]
    curves = f"![validation {summary.target_axis} loss vs training tokens](curves.png)"
    return [*lines, curves, ""]


def params(runs: dict[str, list[ArmRun]]) -> str:
    counts = sorted({r.n_params for seeds in runs.values() for r in seeds})
    return " and ".join(f"{n:,}" for n in counts) or "unknown"


def target_sentence(target: Target, whole: bool) -> str:
    gap = target.curve_sample_gap
    side = "below" if gap < 0 else "above"
    where = (
        "the whole validation set too"
        if whole
        else f"a sample of {target.curve_windows} validation windows"
    )
    return (
        f"The target is {target.what}: {target.loss:.4f}. The curves are measured on "
        f"{where}; clm's ends at {target.curve_sample_end:.4f} (mean over seeds), "
        f"{abs(gap):.4f} {side} the target. An arm reaches the target where its curve first "
        "gets to it, clm included, so a clm seed that ends above the mean of its seeds does "
        "not reach it."
    )


def time_line(results: Results) -> str:
    stages = " · ".join(f"{k} {seconds(v)}" for k, v in results.seconds.items())
    clm = [r.seconds_train for r in results.runs["clm"]]
    if len(clm) < 2:
        return stages
    return (
        f"{stages}. Rounded to two significant figures: clm's {len(clm)} seeds, identical "
        f"compute, took {seconds(min(clm))} to {seconds(max(clm))} s of training on this "
        "machine."
    )


def analyses_lines(analyses: Analyses | None) -> list[str]:
    if analyses is None:
        return []
    lines = []
    if analyses.dynamics:
        mean = analyses.dynamics_mean_loss
        lines += [
            "## Token-loss dynamics (the paper's Figure 3 setting)",
            "",
            f"Each target-test token's loss across {analyses.dynamics_checkpoints} "
            "checkpoints of clm (ordinary continual pretraining, as the paper tracked), "
            f"classified by the paper's rule with its threshold of "
            f"{analyses.dynamics_threshold} nats on slope × span:",
            "",
            dynamics_markdown(analyses.dynamics),
            "",
            f"The paper found {PAPER['dynamics']}. The split here is not comparable with it: "
            f"the mean loss of these tokens falls from {mean[0]:.3f} to {mean[-1]:.3f} nats "
            f"across the checkpoints (by {analyses.dynamics_loss_fall:.3f}), and a fixed "
            "threshold in "
            "nats counts every token whose loss falls with that tide as H→L, where the paper "
            "tracked an already pretrained 1B model.",
            "",
        ]
    sel = analyses.selection or SelectionRates(checkpoints=[], tokens_per_checkpoint=0)
    if sel.selection_rate_noise is not None:
        lines += [
            "## Which tokens SLM selects",
            "",
            f"Selection rate of injected-noise tokens {sel.selection_rate_noise:.1%} vs clean "
            f"tokens {sel.selection_rate_clean:.1%} (precision of 'selected = clean' "
            f"{sel.clean_precision:.1%}); highlighted passages: [selected.html](selected.html).",
            "",
        ]
    if sel.selected_fraction_by_domain is not None:
        lines += ["| document domain | selected fraction |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in sel.selected_fraction_by_domain.items()]
        lines.append("")
    return lines


def summary_text(results: Results, out: Path) -> str:
    axes, losses = results.data.axes, results.summary.losses
    lines = ["=" * 72, f"test loss ({', '.join(axes)}), mean ± sample std over seeds:"]
    for arm, per_axis in losses.items():
        cells = "   ".join(
            f"{axis} {s.mean:.4f}" + (f" ± {s.std:.4f}" if s.n > 1 else " (1 seed)")
            for axis, s in per_axis.items()
        )
        lines.append(f"  {arm:<14} {cells}")
    for axis, rank in results.summary.winners.loss.items():
        if rank:
            lines.append(f"  best on {axis}: {rank.arm}")
    lines += [f"report: {out / 'report.md'}  (curves.png, axes.png, results.json)", "=" * 72]
    return "\n".join(lines)
