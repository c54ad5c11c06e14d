"""`rho experiment`: the honest race on any data, as resumable stages (rho.experiment.stages).

data (decontaminate, split, tokenize) -> base (a preset pretrained on --base_data, cached by
hash across run directories; or a given model) -> reference (the base fine-tuned on curated)
-> score (the corpus's reference losses) -> [prune] -> every arm × seed from the base, the same
data order (per seed), schedule and budget -> dynamics (CLM checkpoints) and selection
analyses (SLM) -> report (rho.experiment.report).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from rho.analysis.dynamics_report import run_dynamics
from rho.analysis.html_report import run_html
from rho.analysis.selection_report import run_selection
from rho.experiment.analyses import selection_rates, selection_sample
from rho.experiment.prepare import inputs_key, prepare
from rho.experiment.report import write_report
from rho.experiment.settings import ExperimentConfig
from rho.experiment.stages import Stages, stage_key
from rho.experiment.training_run import train_run
from rho.files import check_replaceable, mark_output, output_lock, write_json_atomic
from rho.models import PRESETS
from rho.options import SelectionArguments
from rho.prune import prune_store
from rho.runs import run_checkpoints
from rho.score import score_store
from rho.store import TokenStore

EXPERIMENT_KIND = "rho.Experiment"
CACHE_ENV = "RHO_CACHE"  # where pretrained bases are cached (default ~/.cache/rho)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "rho"))


def arm_selection(arm: str, cfg: ExperimentConfig) -> SelectionArguments:
    factor, ratio = cfg.candidate_factor, cfg.ratio
    return {
        "clm": SelectionArguments(selection="none"),
        "clm-mix": SelectionArguments(selection="none"),
        "pruned-clm": SelectionArguments(selection="none"),
        "slm": SelectionArguments(selection="token", ratio=ratio),
        "pruned-slm": SelectionArguments(selection="token", ratio=ratio),
        "slm-random": SelectionArguments(selection="token", ratio=ratio, score="random"),
        "rholoss": SelectionArguments(selection="sample", candidate_factor=factor),
        "rholoss+token": SelectionArguments(
            selection="sample+token", ratio=ratio, candidate_factor=factor
        ),
    }[arm]


def run_experiment(cfg: ExperimentConfig, title: str = "rho experiment") -> dict:
    """Run (or resume) every stage into ``cfg.out``; returns the results (results.json)."""
    cfg.check_inputs()
    out = Path(cfg.out)
    check_replaceable(out, EXPERIMENT_KIND)  # a new directory, or an experiment's to resume
    hf_logging.set_verbosity_error()  # no tokenizer/config warnings on the console
    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, EXPERIMENT_KIND)
    with output_lock(out):
        return _run(cfg, out, title)


def _run(cfg: ExperimentConfig, out: Path, title: str) -> dict:
    stages = Stages(out)
    arms = cfg.arm_list
    tqdm.write(f"== {title} into {out}: arms {', '.join(arms)}; seeds {cfg.seeds} ==")
    data_key = stage_key(**inputs_key(cfg))
    data = stages.run("data", data_key, lambda d: prepare(cfg, d), "data")
    stores, axes = data["stores"], data["axes"]
    corpus = TokenStore(stores["corpus"])
    per_step = cfg.batch_size * cfg.seq_len
    steps = max(1, (cfg.train_tokens or corpus.n_tokens) // per_step)
    common = {"stores": stores, "axes": axes}

    def train(name, key_parts, title_, **kw):
        key = stage_key(data=data_key, cfg=schedule_key(cfg), **key_parts)
        return stages.run(
            name, key, lambda d: train_run(d, cfg, label=title_, **common, **kw), title_
        )

    # The base every run starts from.
    init, base_key = cfg.base, cfg.base
    if cfg.base in PRESETS and not cfg.from_scratch:
        base_tokens = cfg.base_tokens or TokenStore(stores["base"]).n_tokens
        base_key = stage_key(
            data=data_key, base=cfg.base, tokens=base_tokens, cfg=schedule_key(cfg)
        )
        cached = Stages(cache_dir(), stages.log)
        base = cached.run(
            f"base-{base_key}",
            base_key,
            lambda d: train_run(
                d,
                cfg,
                label="base",
                init=cfg.base,
                tokens=stores["base"],
                selection=SelectionArguments(selection="none"),
                steps=max(1, base_tokens // per_step),
                seed=0,
                lr=cfg.base_learning_rate,
                **common,
            ),
            "base (pretrained, cached)",
        )
        stages.seconds["base"] = cached.seconds[f"base-{base_key}"]
        init = base["run"]

    ref_steps = max(1, int(cfg.ref_epochs * TokenStore(stores["curated"]).n_tokens / per_step))
    reference = train(
        "reference",
        {"base": base_key, "steps": ref_steps},
        "reference",
        init=init,
        tokens=stores["curated"],
        steps=ref_steps,
        seed=cfg.seeds[0],
        selection=SelectionArguments(selection="none"),
        lr=cfg.learning_rate,
    )

    score_key = stage_key(reference=stages.keys["reference"])
    scored = stages.run(
        "score",
        score_key,
        lambda d: {
            "losses": str(
                score_store(
                    reference["run"], corpus, d / "ref_losses", cfg.seq_len, progress=False
                ).path
            )
        },
        "score the corpus",
    )
    pruned = None
    if {"pruned-clm", "pruned-slm"} & set(arms):
        pruned = stages.run(
            "prune",
            stage_key(score=score_key, keep=cfg.prune_keep),
            lambda d: prune_windows(cfg, corpus, scored["losses"], d),
            "prune",
        )

    runs: dict[str, list[dict]] = {}
    for arm in arms:
        seeds = cfg.seeds_of(arm)
        if arm == "reference":
            runs[arm] = [{**reference, "seed": cfg.seeds[0]}]
            continue
        tokens = {"clm-mix": stores["mix"], "pruned-clm": None, "pruned-slm": None}.get(
            arm, stores["corpus"]
        )
        losses = scored["losses"]
        if arm.startswith("pruned"):
            tokens, losses = pruned["tokens"], pruned["losses"]
        runs[arm] = []
        for seed in seeds:
            name = f"{arm}-seed{seed}"
            save = seed == cfg.seeds[0] and arm in ("clm", "slm")  # checkpoints for analyses
            result = train(
                name,
                {
                    "arm": arm,
                    "seed": seed,
                    "base": base_key,
                    "steps": steps,
                    "score": score_key,
                    "save": save,
                },
                name,
                init=init,
                tokens=tokens,
                selection=arm_selection(arm, cfg),
                steps=steps,
                seed=seed,
                lr=cfg.learning_rate,
                ref_losses=losses,
                save_checkpoints=save,
            )
            runs[arm].append({**result, "seed": seed})

    analyses = {}
    if cfg.analyze:
        first = cfg.seeds[0]
        key = stage_key(
            clm=stages.keys[f"clm-seed{first}"], slm=stages.keys.get(f"slm-seed{first}")
        )
        analyses = stages.run(
            "analyses", key, lambda d: analyse(cfg, runs, stores, axes, scored, out, d), "analyses"
        )
    overhead = overheads(cfg, arms, reference, stages, corpus.n_tokens)
    results = {
        "config": cfg.as_dict(),
        "data": {k: data[k] for k in ("axes", "decontamination", "mix", "tokens")},
        "steps": steps,
        "runs": runs,
        "overhead": overhead,
        "analyses": analyses,
        "seconds": {k: round(v, 1) for k, v in stages.seconds.items()},
    }
    write_json_atomic(out / "results.json", results, sort_keys=False)
    write_report(results, out, title)
    return results


def schedule_key(cfg: ExperimentConfig) -> dict:
    """The settings every training run depends on."""
    names = (
        "seq_len",
        "batch_size",
        "learning_rate",
        "base_learning_rate",
        "evals",
        "eval_windows",
        "ratio",
        "candidate_factor",
        "prune_keep",
    )
    # "sample": how validation windows are chosen (a code change there must redo the runs)
    return {"sample": "spread", **{k: getattr(cfg, k) for k in names}}


def prune_windows(cfg, corpus: TokenStore, losses: str, directory: Path) -> dict:
    prune_store(
        corpus,
        losses,
        directory / "pruned",
        keep=cfg.prune_keep,
        unit="window",
        by="reference",
        progress=False,
    )
    return {
        "tokens": str(directory / "pruned" / "tokens"),
        "losses": str(directory / "pruned" / "ref_losses"),
    }


def overheads(cfg, arms, reference: dict, stages: Stages, corpus_tokens: int) -> dict:
    """One-off costs before an arm's training that later runs can reuse: the reference's
    training and the scoring of the corpus (2·N_ref per token) for arms that use reference
    losses; the pruning for pruned arms. The base is shared by every arm and left out."""
    flops = reference["flops_train"] + 2 * reference["n_params"] * corpus_tokens
    seconds = reference["seconds_train"] + stages.seconds.get("score", 0.0)
    out = {}
    for arm in arms:
        if arm in ("slm", "pruned-slm", "rholoss", "rholoss+token", "pruned-clm"):
            extra = stages.seconds.get("prune", 0.0) if arm.startswith("pruned") else 0.0
            out[arm] = {
                "flops": flops,
                "seconds": seconds + extra,
                "what": "reference training + scoring the corpus" + (" + pruning" if extra else ""),
            }
    return out


def analyse(cfg, runs, stores, axes, scored, out: Path, directory: Path) -> dict:
    """Token-loss dynamics over CLM checkpoints (the paper's Figure 3 setting: ordinary
    continual pretraining) on the target test set; SLM's selection (Figures 6, 8) and the
    highlighted corpus (Figure 13)."""
    first = cfg.seeds[0]
    clm = Path(runs["clm"][0]["run"])
    checkpoints = [p for _, p in run_checkpoints(clm)]
    spaced = np.unique(np.linspace(0, len(checkpoints) - 1, cfg.dynamics_checkpoints).round())
    dynamics = run_dynamics(
        [checkpoints[int(i)] for i in spaced],
        TokenStore(stores[f"{axes[0]}-test"]),
        directory / "dynamics",
        seq_len=cfg.seq_len,
        progress=False,
    )
    result = {"dynamics": dynamics["table"], "dynamics_markdown": dynamics["markdown_table"]}
    if "slm" in runs:
        slm = Path(runs["slm"][0]["run"])
        selection = run_selection([slm, clm], None, None, directory / "selection", windows=64)
        corpus = TokenStore(stores["corpus"])
        sample = selection_sample(selection, corpus, cfg.seq_len)
        result["selection"] = selection_rates(sample, corpus.domain_names)
        run_html(
            corpus.path,
            scored["losses"],
            out / "selected.html",
            model=str(slm),
            ratio=cfg.ratio,
            passages=12,
            passage_tokens=160,
            overwrite=True,
            title=f"The tokens SLM (seed {first}) selects",
        )
    return result
