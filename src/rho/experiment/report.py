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
from rho.experiment.records import (
    Analyses,
    ArmRun,
    Results,
    SelectionRates,
    Target,
)
from rho.experiment.tables import (
    against_markdown,
    compute_markdown,
    decontam_markdown,
    dynamics_markdown,
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


def _names(arms: list[str]) -> str:
    return ", ".join(arms)


def write_report(results: Results, out: Path, title: str) -> str:
    """Write report.md and the plots into ``out``; print and return the summary."""
    axes, summary = results.data.axes, results.summary
    plot_curves(results.runs, out / "curves.png", axis=axes[0])
    plot_frontier(
        results.runs, results.overhead, summary.target.loss, out / "frontier.png", axis=axes[0]
    )
    if len(axes) > 1:
        plot_axes(summary.losses, out / "axes.png", x=axes[0], y=axes[1])
    text = "\n".join(report_lines(results, title))
    write_text_atomic(out / "report.md", text)
    text = summary_text(results, out)
    tqdm.write(text)
    return text


def setting_lines(results: Results) -> list[str]:
    """The setting, from what the runs recorded."""
    cfg, runs = results.config, results.runs
    lines = [*start_lines(results), *schedule_lines(results), *reference_lines(results)]
    shared = [a for a in runs if ARMS[a].corpus_order]
    own = {
        a: "mix" if ARMS[a].data == "mix" else "corpus"
        for a in runs
        if not ARMS[a].corpus_order and a != "reference"
    }
    order = (
        f"For a given seed, {_names(shared)} train on the same drawn windows in the same order "
        "(their seeds pair)"
    )
    if own:
        order += "; " + "; ".join(
            f"{a} draws its own from the {kind} windows" for a, kind in own.items()
        )
    lines.append(order + f". Corpus: {results.data.tokens['corpus']:,} tokens.")
    lines += draw_lines(results)
    seeded = [a for a, seeds in runs.items() if len(seeds) > 1 and a != "reference"]
    single = [a for a, seeds in runs.items() if len(seeds) == 1 and a != "reference"]
    lines.append(
        f"Seeds {cfg.seeds} for {_names(seeded) or 'no arm'}"
        + (f"; the first seed for {_names(single)}." if single else ".")
    )
    for arm, rows in results.summary.reference_pairs.items():
        pairing = ", ".join(f"seed {r.seed} with reference {r.reference_seed}" for r in rows)
        lines.append(f"{arm} pairs {pairing}: its spread includes the reference's.")
    return [" ".join(lines), ""]


def start_lines(results: Results) -> list[str]:
    """Where every arm starts: a fresh preset, a base pretrained here, or a given model; and
    how much of the base's text the corpus repeats."""
    cfg, b = results.config, results.base
    if cfg.from_scratch:
        start = f"every arm and the reference start from a fresh `{cfg.base}` preset (from scratch)"
    elif b is not None:
        start = (
            f"every arm continues from the base model `{cfg.base}`, pretrained here on "
            f"{b.train_tokens:,} tokens of --base_data ({b.steps} steps, seed {b.seed})"
        )
    else:
        start = f"every arm continues from the given model `{cfg.base}`"
    lines = [f"Setting: {start}."]
    overlap = results.data.base_overlap
    if overlap.base_documents:
        lines.append(
            f"{overlap.documents:,} of the base's {overlap.base_documents:,} documents are "
            f"also in the corpus ({overlap.share_of_corpus_characters:.1%} of the corpus's "
            "characters): the arms continue partly on text the base has already seen."
        )
    return lines


def schedule_lines(results: Results) -> list[str]:
    """The arms grouped by their schedule (optimizer steps and warm-up)."""
    cfg, groups = results.config, {}
    for arm, seeds in results.runs.items():
        for run in seeds:
            arms = groups.setdefault((run.steps, run.warmup_steps), [])
            arms += [arm] if arm not in arms else []
    return [
        f"{_names(arms)}: {steps} optimizer steps of {cfg.batch_size}×{cfg.seq_len} tokens, "
        f"{warmup} of them warm-up, then a cosine decay (AdamW)."
        for (steps, warmup), arms in groups.items()
    ]


def reference_lines(results: Results) -> list[str]:
    """Which references score the corpus, from what start, on how much curated data."""
    cfg, refs, lines, p = results.config, results.references, [], results.proxy
    if p is not None:
        lines.append(
            f"The proxy arms' references start from a smaller proxy, `{cfg.reference_base}` "
            f"({p.n_params:,} parameters), pretrained here like the base ({p.train_tokens:,}"
            f" tokens, {p.steps} steps); its pretraining is charged to the arms that read "
            "their scores."
        )
    for source in ("base", "proxy", "self"):
        mine = {n: r for n, r in refs.items() if r.source == source}
        if not mine:
            continue
        one, seeds = next(iter(mine.values())), [r.seed for r in mine.values()]
        trained = f"for {one.steps} steps ({one.train_tokens:,} tokens), seeds {seeds}"
        if source == "self":
            lines.append(
                f"The self-references (no curated data) are the base trained on a seeded "
                f"{cfg.self_reference:.0%} of the corpus's windows, one pass, {trained}; "
                "those windows stay in the corpus, where the arms may draw them too. They "
                "score the drawn windows' loss and next-token entropy."
            )
            continue
        start = "the base" if source == "base" else "the proxy"
        shared = (
            source == "base"
            and "reference" in results.runs
            and all(n.startswith("reference-") for n in mine)
        )
        lines.append(
            f"The {'proxy ' if source == 'proxy' else ''}scoring references are {start} "
            f"fine-tuned on the curated data ({results.data.tokens['curated']:,} tokens) "
            f"{trained}" + ("; the reference arm's runs are these references." if shared else ".")
        )
    return lines


def draw_lines(results: Results) -> list[str]:
    """What each arm seed drew, and so what was scored or embedded (nothing else is)."""
    draws = results.draws
    if not draws:
        return []
    sizes = sorted({(d.pool, d.windows, d.of, d.source) for d in draws.values()})
    parts = [
        f"{pool:.3g}× the budget ({windows:,} of the {of:,} whole {source} windows)"
        for pool, windows, of, source in sizes
    ]
    scored = {
        a: o.tokens_scored for a, o in results.overhead.items() if o.tokens_scored is not None
    }
    text = (
        "Each arm seed trains on windows drawn for it by its seed: "
        + "; ".join(parts)
        + ". Only drawn windows are scored or embedded, so each arm is charged for what it "
        "reads, not for the whole corpus"
    )
    if scored:
        text += (
            " (tokens scored per seed: "
            + ", ".join(f"{a} {t:,.0f}" for a, t in scored.items())
            + ")"
        )
    return [text + "."]


def splits_lines(results: Results) -> list[str]:
    cfg, target = results.config, results.summary.target
    windows = target.curve_windows
    sample = (
        "the whole validation set"
        if cfg.eval_windows == 0
        else f"a fixed sample of {windows} windows spread evenly over the {target.axis} "
        "validation set (the same for every run)"
    )
    pick = (
        f" {cfg.pick_share:.0%} of the validation documents are a pick share, "
        + ("which this picking run reads as its validation set." if cfg.pick else
           "set aside to pick settings on: read by nothing here.")
        if cfg.pick_share
        else ""
    )  # fmt: skip
    return [
        "## Splits: what was used for what",
        "",
        f"Each held-out set is split by a hash of each document into validation "
        f"({cfg.validation_fraction:.0%}) and test.{pick} Validation: the curves ({sample}, at "
        f"every evaluation) and the target of the compute table, {target.what}. Test: the "
        "final losses below, computed once per run on the whole set. Nothing in this run chose "
        "a setting: they are the config's (results.json, `config`), "
        + (
            f"chosen before it: {cfg.choices}"
            if cfg.choices
            else "not tuned on the test sets or on the validation sets by this run."
        ),
        "",
    ]


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
        f"## Compute to reach clm's final validation {data.axes[0]} loss",
        "",
        target_sentence(summary.target, cfg.eval_windows == 0),
        "",
        compute_markdown(summary.compute, summary.read_per_trained),
        "",
        *frontier_lines(summary.frontier),
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
        f"## Test loss on every axis (nats/token; {axes[0]} is the target)",
        "",
        loss_markdown(summary.losses, runs),
        "",
        winners_markdown(summary.winners, left_out=summary.tokens_left_out),
        "",
        "### Every arm against clm",
        "",
        against_markdown(summary.against_baseline),
        "",
        "The spread over seeds leaves out: " + "; ".join(summary.uncovered_variance) + ". "
        "A difference supported here can still change with any of them.",
        "",
    ]
    if summary.reference_pairs:
        lines += [
            "### Sensitivity to the reference's seed",
            "",
            pairs_markdown(summary.reference_pairs, axes),
            "",
        ]
    if len(axes) > 1:
        lines += ["![test loss on both axes](axes.png)", ""]
    return [*lines, f"![validation {axes[0]} loss vs training tokens](curves.png)", ""]


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
