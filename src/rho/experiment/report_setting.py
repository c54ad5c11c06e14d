"""The setting part of `rho experiment`'s report (rho.experiment.report): what was raced, from
what start, on which schedule, with which references, draws and splits: every sentence from the
config and what the runs recorded."""

from __future__ import annotations

from rho.experiment.arms import ARMS
from rho.experiment.records import Results
from rho.experiment.tables import pm


def _names(arms: list[str]) -> str:
    return ", ".join(arms)


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
        if len({r.reference_seed for r in rows}) < 2:
            continue
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
    for arm, seeds in [*results.runs.items(), *results.ladder.items()]:
        for run in seeds:
            arms = groups.setdefault((run.steps, run.warmup_steps), [])
            name = arm if run.budget == 1.0 else f"{arm} at budget {run.budget:g}"
            arms += [name] if name not in arms else []
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
            lines.append(own_losses(results, source))
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
        lines.append(own_losses(results, source))
    return lines


def own_losses(results: Results, source: str) -> str:
    """The scoring references' own test loss, set beside clm's on the target."""
    own, axis = results.summary.scoring_references[source], results.summary.target.axis
    clm, text = results.summary.losses["clm"][axis], "Their own test loss: "
    text += ", ".join(f"{a} {pm(s, '.4f')}" for a, s in own.items())
    if axis in own:
        side = "weaker" if own[axis].mean > clm.mean else "stronger"
        text += f" (clm's on {axis}: {pm(clm, '.4f')}): {side} than clm on the target"
    return text + "."


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
