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
from rho.experiment.stats import verdict
from rho.experiment.tables import (
    against_markdown,
    compute_markdown,
    loss_markdown,
    pairs_markdown,
    pm,
    seconds,
    winners_markdown,
)
from rho.files import write_text_atomic

# The paper's figures quoted by the report (PAPER.md), the only numbers not in results.json.
PAPER = {
    "dynamics": "H→L 26%, L→L 51%, H→H 11%, L→H 12% (TinyLlama-1B on OpenWebMath, a 0.2-nat "
    "threshold on slope × span)",
    "scale": "The paper continually pretrains 1B and 7B models on 15B tokens and reports 5–10× "
    "fewer tokens to the baseline's accuracy.",
}


def _names(arms: list[str]) -> str:
    return ", ".join(arms)


def write_report(results: dict, out: Path, title: str) -> str:
    """Write report.md and the plots into ``out``; print and return the summary."""
    axes, summary = results["data"]["axes"], results["summary"]
    plot_curves(results["runs"], out / "curves.png", axis=axes[0])
    plot_frontier(results["runs"], results["overhead"], summary["target"]["loss"],
                  out / "frontier.png", axis=axes[0])  # fmt: skip
    if len(axes) > 1:
        plot_axes(summary["losses"], out / "axes.png", x=axes[0], y=axes[1])
    text = "\n".join(report_lines(results, title))
    write_text_atomic(out / "report.md", text)
    text = summary_text(results, out)
    tqdm.write(text)
    return text


def setting_lines(results: dict) -> list[str]:
    """The setting, from what the runs recorded."""
    cfg, data, runs = results["config"], results["data"], results["runs"]
    tokens = data["tokens"]
    if cfg["from_scratch"]:
        start = (
            f"every arm and the reference start from a fresh `{cfg['base']}` preset (from scratch)"
        )
    elif "base" in results:
        b = results["base"]
        start = (
            f"every arm continues from the base model `{cfg['base']}`, pretrained here on "
            f"{b['train_tokens']:,} tokens of --base_data ({b['steps']} steps, seed "
            f"{b['seed']})"
        )
    else:
        start = f"every arm continues from the given model `{cfg['base']}`"
    lines = [f"Setting: {start}."]
    overlap = data.get("base_overlap") or {}
    if overlap.get("base_documents"):
        lines.append(
            f"{overlap['documents']:,} of the base's {overlap['base_documents']:,} documents are "
            f"also in the corpus ({overlap['share_of_corpus_characters']:.1%} of the corpus's "
            "characters): the arms continue partly on text the base has already seen."
        )
    groups: dict[tuple, list[str]] = {}
    for arm, seeds in runs.items():
        for run in seeds:
            groups.setdefault((run["steps"], run["warmup_steps"]), [])
            if arm not in groups[(run["steps"], run["warmup_steps"])]:
                groups[(run["steps"], run["warmup_steps"])].append(arm)
    for (steps, warmup), arms in groups.items():
        lines.append(
            f"{_names(arms)}: {steps} optimizer steps of {cfg['batch_size']}×"
            f"{cfg['seq_len']} tokens, {warmup} of them warm-up, then a cosine decay "
            "(AdamW)."
        )
    lines += reference_lines(results)
    shared = [a for a in runs if ARMS[a].corpus_order]
    own = {a: "mix" if ARMS[a].data == "mix" else "corpus"
           for a in runs if not ARMS[a].corpus_order and a != "reference"}  # fmt: skip
    order = (
        f"For a given seed, {_names(shared)} train on the same drawn windows in the same order "
        "(their seeds pair)"
    )
    if own:
        order += "; " + "; ".join(
            f"{a} draws its own from the {kind} windows" for a, kind in own.items()
        )
    lines.append(order + f". Corpus: {tokens['corpus']:,} tokens.")
    lines += draw_lines(results)
    seeded = [a for a, seeds in runs.items() if len(seeds) > 1 and a != "reference"]
    single = [a for a, seeds in runs.items() if len(seeds) == 1 and a != "reference"]
    lines.append(
        f"Seeds {cfg['seeds']} for {_names(seeded) or 'no arm'}"
        + (f"; the first seed for {_names(single)}." if single else ".")
    )
    pairs = results["summary"]["reference_pairs"]
    for arm, rows in pairs.items():
        pairing = ", ".join(f"seed {r['seed']} with reference {r['reference_seed']}" for r in rows)
        lines.append(f"{arm} pairs {pairing}: its spread includes the reference's.")
    return [" ".join(lines), ""]


def reference_lines(results: dict) -> list[str]:
    """Which references score the corpus, from what start, on how much curated data."""
    cfg, refs, lines = results["config"], results.get("references", {}), []
    if "proxy" in results:
        p = results["proxy"]
        lines.append(
            f"The proxy arms' references start from a smaller proxy, `{cfg['reference_base']}` "
            f"({p['n_params']:,} parameters), pretrained here like the base ({p['train_tokens']:,}"
            f" tokens, {p['steps']} steps); its pretraining is charged to the arms that read "
            "their scores."
        )
    for source in ("base", "proxy", "self"):
        mine = {n: r for n, r in refs.items() if r["source"] == source}
        if not mine:
            continue
        one, seeds = next(iter(mine.values())), [r["seed"] for r in mine.values()]
        trained = f"for {one['steps']} steps ({one['train_tokens']:,} tokens), seeds {seeds}"
        if source == "self":
            lines.append(
                f"The self-references (no curated data) are the base trained on a seeded "
                f"{cfg['self_reference']:.0%} of the corpus's windows, one pass, {trained}; "
                "those windows stay in the corpus, where the arms may draw them too. They "
                "score the drawn windows' loss and next-token entropy."
            )
            continue
        start = "the base" if source == "base" else "the proxy"
        shared = (
            source == "base"
            and "reference" in results["runs"]
            and all(n.startswith("reference-") for n in mine)
        )
        lines.append(
            f"The {'proxy ' if source == 'proxy' else ''}scoring references are {start} "
            f"fine-tuned on the curated data ({results['data']['tokens']['curated']:,} tokens) "
            f"{trained}" + ("; the reference arm's runs are these references." if shared else ".")
        )
    return lines


def draw_lines(results: dict) -> list[str]:
    """What each arm seed drew, and so what was scored or embedded (nothing else is)."""
    draws = results.get("draws", {})
    if not draws:
        return []
    sizes = sorted({(d["pool"], d["windows"], d["of"], d["source"]) for d in draws.values()})
    parts = [f"{pool:.3g}× the budget ({windows:,} of the {of:,} whole {source} windows)"
             for pool, windows, of, source in sizes]  # fmt: skip
    scored = {a: o["tokens_scored"] for a, o in results["overhead"].items() if "tokens_scored" in o}
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


def splits_lines(results: dict) -> list[str]:
    cfg, target = results["config"], results["summary"]["target"]
    windows = target["curve_windows"]
    sample = (
        "the whole validation set"
        if cfg["eval_windows"] == 0
        else f"a fixed sample of {windows} windows spread evenly over the {target['axis']} "
        "validation set (the same for every run)"
    )
    return [
        "## Splits: what was used for what",
        "",
        f"Each held-out set is split by a hash of each document into validation "
        f"({cfg['validation_fraction']:.0%}) and test. Validation: the curves ({sample}, at "
        f"every evaluation) and the target of the compute table, {target['what']}. Test: the "
        "final losses below, computed once per run on the whole set. Nothing in this run chose "
        "a setting: they are the config's (results.json, `config`), "
        + (
            f"chosen before it: {cfg['choices']}"
            if cfg.get("choices")
            else "not tuned on the test sets or on the validation sets by this run."
        ),  # fmt: skip
        "",
    ]


def report_lines(results: dict, title: str) -> list[str]:
    cfg, data, summary = results["config"], results["data"], results["summary"]
    axes, runs = data["axes"], results["runs"]
    share = data["mix"]["share"] if "mix" in data else cfg["mix_share"]
    lines = [f"# {title}", "", *setting_lines(results), "## Arms", ""]
    lines += [f"- **{arm}**: {ARMS[arm].text(cfg, share)}" for arm in runs]
    lines += ["", *splits_lines(results)]
    lines += [
        "## Decontamination (before anything is trained)",
        "",
        f"Held-out documents sharing more than {cfg['decontam_threshold']:.0%} of their word "
        "13-grams with the curated data, the corpus or the base data are dropped.",
        "",
        decontam_markdown(data["decontamination"]),
        "",
        f"## Test loss on every axis (nats/token; {axes[0]} is the target)",
        "",
        loss_markdown(summary["losses"], runs),
        "",
        winners_markdown(summary["winners"], left_out=summary["tokens_left_out"]),
        "",
        "### Every arm against clm",
        "",
        against_markdown(summary["against_baseline"]),
        "",
        "The spread over seeds leaves out: " + "; ".join(summary["uncovered_variance"]) + ". "
        "A difference supported here can still change with any of them.",
        "",
    ]
    if summary["reference_pairs"]:
        lines += [
            "### Sensitivity to the reference's seed",
            "",
            pairs_markdown(summary["reference_pairs"], axes),
            "",
        ]
    if len(axes) > 1:
        lines += ["![test loss on both axes](axes.png)", ""]
    lines += [
        f"![validation {axes[0]} loss vs training tokens](curves.png)",
        "",
        f"## Compute to reach clm's final validation {axes[0]} loss",
        "",
        target_sentence(summary["target"], cfg["eval_windows"] == 0),
        "",
        compute_markdown(summary["compute"], summary["read_per_trained"]),
        "",
    ]
    lines += frontier_lines(summary["frontier"])
    lines += analyses_lines(results.get("analyses") or {})
    lines += [
        "## Why these numbers differ from the paper's",
        "",
        f"{PAPER['scale']} This run's models have {params(runs)} parameters, its corpus "
        f"{data['tokens']['corpus']:,} tokens, on a CPU: a loss on held-out text is not the "
        "paper's few-shot accuracy. The ratios above are what this setting measured.",
        "",
        "## Time (seconds per stage)",
        "",
        time_line(results),
        "",
    ]
    return lines


def params(runs: dict) -> str:
    counts = sorted({r["n_params"] for seeds in runs.values() for r in seeds if "n_params" in r})
    return " and ".join(f"{n:,}" for n in counts) or "unknown"


def frontier_lines(frontier: dict) -> list[str]:
    """Whether each arm's one-off total beats clm's run and the curated mix's."""
    lines = [
        "## The compute frontier",
        "",
        "![validation loss against one-off total FLOPs](frontier.png)",
        "",
        "| arm | one-off FLOPs to the target (× clm's run) | below clm's run on every seed | "
        "against the curated mix |",
        "|---|---|---|---|",
    ]
    for arm, e in frontier["arms"].items():
        ratio = e["ratio_one_off"]
        if ratio is None:
            lines.append(f"| {arm} | not reached on every seed | n/a | n/a |")
            continue
        below = "yes" if e["below_clm"] else "no"
        mix = e["against_mix"]
        versus = "—" if mix is None else f"{mix['delta']:+.3g} FLOPs: {verdict(mix)}"
        lines.append(f"| {arm} | {pm(ratio, '.3g', '×')} | {below} | {versus} |")
    if frontier["best"] is not None:
        lines += ["", f"Least one-off FLOPs to the target: {frontier['best']}, at "
                  f"{frontier['best_ratio']:.3g}× clm's run."]  # fmt: skip
    return [*lines, ""]


def target_sentence(target: dict, whole: bool) -> str:
    gap = target["curve_sample_gap"]
    side = "below" if gap < 0 else "above"
    where = (
        "the whole validation set too"
        if whole
        else f"a sample of {target['curve_windows']} validation windows"
    )
    return (
        f"The target is {target['what']}: {target['loss']:.4f}. The curves are measured on "
        f"{where}; clm's ends at {target['curve_sample_end']:.4f} (mean over seeds), "
        f"{abs(gap):.4f} {side} the target. An arm reaches the target where its curve first "
        "gets to it, clm included, so a clm seed that ends above the mean of its seeds does "
        "not reach it."
    )


def time_line(results: dict) -> str:
    stages = " · ".join(f"{k} {seconds(v)}" for k, v in results["seconds"].items())
    clm = [r["seconds_train"] for r in results["runs"]["clm"]]
    if len(clm) < 2:
        return stages
    return (
        f"{stages}. Rounded to two significant figures: clm's {len(clm)} seeds, identical "
        f"compute, took {seconds(min(clm))} to {seconds(max(clm))} s of training on this "
        "machine."
    )


def decontam_markdown(decontam: dict) -> str:
    lines = [
        "| held-out set | documents before → after | shared 13-grams before → after |",
        "|---|---|---|",
    ]
    for name, d in decontam.items():
        b, a = d["before"], d["after"]
        lines.append(
            f"| {name} | {b['documents']} → {a['documents']} | "
            f"{b['shared_fraction']:.2%} → {a['shared_fraction']:.2%} |"
        )
    return "\n".join(lines)


def dynamics_markdown(table: dict) -> str:
    """The split of this run's tokens (the paper's own split is quoted in words below, not set
    beside it as if like for like)."""
    lines = ["| category | tokens | share of scored tokens |", "|---|---:|---:|"]
    for row in table["rows"]:
        lines.append(f"| {row['category']} | {row['count']:,} | {row['percent']:.1f}% |")
    lines.append(f"| all scored | {table['scored']:,} | |")
    return "\n".join(lines)


def analyses_lines(analyses: dict) -> list[str]:
    lines = []
    if analyses.get("dynamics"):
        mean = analyses["dynamics_mean_loss"]
        lines += [
            "## Token-loss dynamics (the paper's Figure 3 setting)",
            "",
            f"Each target-test token's loss across {analyses['dynamics_checkpoints']} "
            "checkpoints of clm (ordinary continual pretraining, as the paper tracked), "
            f"classified by the paper's rule with its threshold of "
            f"{analyses['dynamics_threshold']} nats on slope × span:",
            "",
            dynamics_markdown(analyses["dynamics"]),
            "",
            f"The paper found {PAPER['dynamics']}. The split here is not comparable with it: "
            f"the mean loss of these tokens falls from {mean[0]:.3f} to {mean[-1]:.3f} nats "
            f"across the checkpoints (by {analyses['dynamics_loss_fall']:.3f}), and a fixed "
            "threshold in "
            "nats counts every token whose loss falls with that tide as H→L, where the paper "
            "tracked an already pretrained 1B model.",
            "",
        ]
    sel = analyses.get("selection") or {}
    if "selection_rate_noise" in sel:
        lines += [
            "## Which tokens SLM selects",
            "",
            f"Selection rate of injected-noise tokens {sel['selection_rate_noise']:.1%} vs clean "
            f"tokens {sel['selection_rate_clean']:.1%} (precision of 'selected = clean' "
            f"{sel['clean_precision']:.1%}); highlighted passages: [selected.html](selected.html).",
            "",
        ]
    if "selected_fraction_by_domain" in sel:
        lines += ["| document domain | selected fraction |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in sel["selected_fraction_by_domain"].items()]
        lines.append("")
    return lines


def summary_text(results: dict, out: Path) -> str:
    axes, losses = results["data"]["axes"], results["summary"]["losses"]
    lines = ["=" * 72, f"test loss ({', '.join(axes)}), mean ± sample std over seeds:"]
    for arm, per_axis in losses.items():
        cells = "   ".join(
            f"{axis} {s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["n"] > 1 else " (1 seed)")
            for axis, s in per_axis.items()
        )
        lines.append(f"  {arm:<14} {cells}")
    for axis, rank in (results["summary"]["winners"].get("loss") or {}).items():
        if rank:
            lines.append(f"  best on {axis}: {rank['arm']}")
    lines += [f"report: {out / 'report.md'}  (curves.png, axes.png, results.json)", "=" * 72]
    return "\n".join(lines)
