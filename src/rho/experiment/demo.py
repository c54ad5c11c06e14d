"""`rho demo`'s stages: the whole method end to end on the shipped demo corpus.

tokenizer -> reference model (CLM on curated math) -> score the corpus -> CLM and SLM on the
corpus with the same token budget, initialisation and seed, held-out loss along the way ->
selection analysis -> report (report.md, curves.png, selected.html, results.json).

Arms (``--arms``, default ``clm,slm``; clm and slm always run): ``pruned-clm`` / ``pruned-slm``
train on the corpus pruned offline to its best ``prune_keep`` windows by mean reference loss
(``rho prune --unit window --by reference``); ``rholoss`` / ``rholoss+token`` select online
(``--selection sample`` / ``sample+token``, ``candidate_factor`` candidates per trained window,
offline reference losses). The budget is the same for every arm: the same optimizer steps of the
same batch from the same initialisation and seed, so the same trained tokens (pruned arms see
their half of the corpus about twice; RHO-LOSS arms draw ``candidate_factor`` × as many candidate
windows, i.e. that many passes of candidates over the corpus, and pay their forward passes).
The report compares, for each arm, the compute to reach CLM's final held-out loss (see
rho.experiment.compute for how each cost is counted).
"""

from __future__ import annotations

import gzip
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from transformers import TrainingArguments

from rho.corpora import demo_path
from rho.errors import UserError
from rho.experiment.analyses import analyse_slm
from rho.experiment.compute import (
    arms_table,
    compute_curve,
    eval_curve,
    overheads,
    run_end,
    tokens_to_reach,
)
from rho.experiment.config import DemoConfig, parse_arms
from rho.experiment.plots import plot_arms, plot_curves
from rho.experiment.report import report_markdown, summary
from rho.files import (
    check_replaceable,
    mark_output,
    output_kind,
    remove_path,
    write_json_atomic,
    write_text_atomic,
)
from rho.options import ModelDataArguments, SelectionArguments
from rho.prune import prune_store
from rho.score import score_store
from rho.store import LossStore, TokenStore
from rho.tokenize import tokenize_corpus
from rho.training import build_trainer

DEMO_KIND = "rho.Demo"  # output kind of a demo directory (rho.files.mark_output)
LEGACY_MARKER = ".rho-demo"  # what older versions of `rho demo` marked their directory with


def fresh_output(out: Path) -> None:
    """Make ``out`` an empty, marked demo directory. An existing ``out`` is replaced only when
    `rho demo` made it (its marker, or an older demo's ``.rho-demo``); any other is refused."""
    real_dir = out.is_dir() and not out.is_symlink()
    if real_dir and output_kind(out) is None and (out / LEGACY_MARKER).is_file():
        mark_output(out, DEMO_KIND)  # an older demo's directory: adopt it
    try:
        check_replaceable(out, DEMO_KIND)
    except UserError as err:
        if (out.exists() or out.is_symlink()) and output_kind(out) != DEMO_KIND:
            raise UserError(
                f"{out} exists and was not made by `rho demo`: choose another --out ({err})"
            ) from None
        raise
    remove_path(out)
    (out / "data").mkdir(parents=True)
    mark_output(out, DEMO_KIND)


def subset(split: str, out: Path, fraction: float, seed: int) -> Path:
    """The shipped split, or a seeded fraction of its documents (quick mode)."""
    src = demo_path(split)
    if fraction >= 1.0:
        return src
    rng = np.random.default_rng(seed)
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    keep = np.sort(rng.choice(len(lines), max(1, int(len(lines) * fraction)), replace=False))
    return write_text_atomic(out / f"{split}.jsonl", "".join(lines[i] for i in keep))


def training_args(out: Path, cfg: DemoConfig, steps: int, evals: int) -> TrainingArguments:
    """The demo's schedule: cosine, warmup 5%, ``evals`` evaluations and checkpoints."""
    every = max(1, steps // max(1, evals))
    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=max(1, every // 2),
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )


def train(name, out, cfg, tokens, steps, selection, eval_store, ref_losses=None, evals=None):
    """One training run through the real `rho train` code; held-out loss at step 0 too."""
    data = ModelDataArguments(
        tokens=str(tokens),
        preset=cfg.preset,
        ref_losses=str(ref_losses) if ref_losses else None,
        eval_tokens=str(eval_store),
        seq_len=cfg.seq_len,
    )
    args = training_args(out, cfg, steps, evals or cfg.evals)
    trainer = build_trainer(data, selection, args)
    n_eval = min(cfg.eval_windows, len(trainer.eval_dataset))
    trainer.eval_dataset = Subset(trainer.eval_dataset, range(n_eval))
    print(f"\n== {name}: {steps} steps of {cfg.batch_size}x{cfg.seq_len} tokens ==")
    trainer.evaluate()
    trainer.train()
    trainer.save_model()
    return trainer


def arm_runs(cfg: DemoConfig, corpus_path, ref_losses_path, pruned: Path) -> dict:
    """Each arm's run: (title, training tokens, selection, reference losses or None)."""
    factor = cfg.candidate_factor
    none = SelectionArguments(selection="none")
    slm = SelectionArguments(selection="token", ratio=cfg.ratio, score="excess")
    return {
        "clm": ("CLM baseline on the corpus", corpus_path, none, None),
        "slm": ("SLM on the corpus", corpus_path, slm, ref_losses_path),
        "pruned-clm": ("pruned-clm: CLM on the pruned corpus", pruned / "tokens", none, None),
        "pruned-slm": ("pruned-slm: SLM on the pruned corpus", pruned / "tokens", slm,
                       pruned / "ref_losses"),
        "rholoss": (f"rholoss: RHO-LOSS online, best 1/{factor} of the candidate windows",
                    corpus_path, SelectionArguments(selection="sample", candidate_factor=factor),
                    ref_losses_path),
        "rholoss+token": (f"rholoss+token: RHO-LOSS (1/{factor} of the windows) + SLM inside them",
                          corpus_path, SelectionArguments(selection="sample+token",
                                                          ratio=cfg.ratio, candidate_factor=factor),
                          ref_losses_path),
    }  # fmt: skip


def demo(out: str | Path = "rho-demo", quick: bool = False, cfg: DemoConfig | None = None) -> dict:
    """Run the demo into ``out`` and return the results (also written to results.json)."""
    cfg = cfg or (DemoConfig.quick() if quick else DemoConfig())
    cfg = replace(cfg, arms=parse_arms(",".join(cfg.arms)))
    arms = cfg.arms
    out = Path(out)
    fresh_output(out)
    stores, runs = out / "stores", out / "runs"
    t0 = time.perf_counter()
    timings = {}

    def stage(name):
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    print(f"== rho demo ({'quick' if quick else 'full'}) into {out} ==")
    print("\n== [1/5] tokenizer and stores ==")
    corpus_file = subset("corpus", out / "data", cfg.corpus_fraction, cfg.seed)
    corpus = tokenize_corpus([str(corpus_file)], stores / "corpus", train_vocab=cfg.vocab)
    tok_dir = str(corpus.tokenizer_dir)
    curated_file = subset("curated", out / "data", cfg.corpus_fraction * 2, cfg.seed)
    curated = tokenize_corpus([str(curated_file)], stores / "curated", tokenizer=tok_dir)
    heldout = tokenize_corpus([str(demo_path("heldout"))], stores / "heldout", tokenizer=tok_dir)
    stage("tokenize")

    tokens_per_step = cfg.batch_size * cfg.seq_len
    ref_steps = max(1, int(cfg.ref_epochs * curated.n_tokens / tokens_per_step))
    train("[2/5] reference model on curated math", runs / "reference", cfg, curated.path,
          ref_steps, SelectionArguments(selection="none"), heldout.path, evals=3)  # fmt: skip
    stage("reference")

    print("\n== [3/5] score the corpus with the reference model ==")
    ref_losses = score_store(runs / "reference", corpus, stores / "corpus_ref_losses", cfg.seq_len)
    stage("score")

    pruned = stores / "pruned"
    if any(arm.startswith("pruned") for arm in arms):
        print(f"\n== [3/5] prune the corpus: keep the {cfg.prune_keep:.0%} of its windows with "
              "the lowest mean reference loss ==")  # fmt: skip
        prune_store(corpus, ref_losses, pruned, keep=cfg.prune_keep, unit="window",
                    by="reference", progress=False)  # fmt: skip
        stage("prune")

    budget = cfg.train_tokens or (corpus.n_tokens // cfg.seq_len) * cfg.seq_len
    steps = max(1, budget // tokens_per_step)
    planned = arm_runs(cfg, corpus.path, ref_losses.path, pruned)
    for arm in arms:
        title, tokens, selection, losses = planned[arm]
        train(f"[4/5] {title}", runs / arm, cfg, tokens, steps, selection, heldout.path,
              ref_losses=losses)  # fmt: skip
    stage("train")

    print("\n== [5/5] analysis and report ==")
    corpus, ref_losses = TokenStore(stores / "corpus"), LossStore(stores / "corpus_ref_losses")
    curves = {name: eval_curve(runs / name) for name in ("clm", "slm")}
    ref_curve = eval_curve(runs / "reference")
    clm_final, slm_final = float(curves["clm"][1][-1]), float(curves["slm"][1][-1])
    clm_tokens = float(curves["clm"][0][-1])
    slm_needed = tokens_to_reach(*curves["slm"], clm_final)
    plot_curves(
        {"CLM (all tokens)": curves["clm"], f"SLM (top {cfg.ratio:.0%} by excess)": curves["slm"]},
        float(ref_curve[1][-1]),
        out / "curves.png",
        "Held-out math loss: Selective Language Modeling vs plain training",
    )
    arm_curves = {arm: compute_curve(runs / arm) for arm in arms}
    arms_results = arms_table(arm_curves, overheads(arms, runs, corpus.n_tokens, timings))
    for arm in arms:
        arms_results[arm]["end"] = run_end(runs / arm)
    if len(arms) > 2:
        plot_arms(arm_curves, out / "arms.png")
    rates, dynamics = {}, {"table": None, "markdown_table": ""}
    if cfg.analyze:
        rates, dynamics = analyse_slm(cfg, runs, out, corpus, ref_losses, heldout)
    stage("analysis")

    results = {
        "mode": "quick" if quick else "full",
        "config": cfg.__dict__,
        "corpus_tokens": corpus.n_tokens,
        "curated_tokens": curated.n_tokens,
        "heldout_tokens": heldout.n_tokens,
        "reference_heldout_loss": float(ref_curve[1][-1]),
        "clm_final_heldout_loss": clm_final,
        "slm_final_heldout_loss": slm_final,
        "training_tokens": clm_tokens,
        "slm_tokens_to_clm_final": slm_needed,
        "speedup_tokens_to_clm_final": (clm_tokens / slm_needed) if slm_needed else None,
        "curves": {
            k: {"tokens": v[0].tolist(), "heldout_loss": v[1].tolist()} for k, v in curves.items()
        },
        "selection": rates,
        "dynamics": dynamics["table"],
        "arms": arms_results,
        "arm_curves": arm_curves,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    write_json_atomic(out / "results.json", results, sort_keys=False)
    report = report_markdown(results, quick, dynamics["markdown_table"])
    write_text_atomic(out / "report.md", report)
    print("\n" + summary(results, out))
    return results
