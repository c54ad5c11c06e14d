"""`rho demo`: the whole method end to end on the shipped demo corpus, composed from the stages.

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
The report compares, for each arm, the compute to reach CLM's final held-out loss: trained
tokens, training FLOPs (6·N per trained token + 2·N per candidate token), total FLOPs (plus,
for arms that use reference losses, the reference's training, 6·N_ref per token, and the
scoring of the corpus, 2·N_ref per corpus token) and measured wall time (training steps; total
adds the reference's training, the scoring and the pruning), each as a ratio to CLM.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rho.corpora import demo_path
from rho.errors import UserError

MARKER = ".rho-demo"  # marks a directory the demo made, so a rerun may replace it
ARMS = ("clm", "slm", "pruned-clm", "pruned-slm", "rholoss", "rholoss+token")
COST_KEYS = ("tokens", "flops_train", "flops_total", "seconds_train", "seconds_total")


def parse_arms(text: str) -> tuple[str, ...]:
    """``all`` or a comma list of ARMS, in ARMS order; clm and slm always run."""
    names = ARMS if text.strip() == "all" else [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise UserError(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)} or all")
    return tuple(a for a in ARMS if a in ("clm", "slm") or a in names)


@dataclass
class DemoConfig:
    """Sizes of one demo run; ``quick`` is the smoke-test scale."""

    preset: str = "1m"
    vocab: int = 2048
    seq_len: int = 256
    batch_size: int = 16
    ref_epochs: float = 4.0  # a reference stronger than the learner ends up (see README)
    train_tokens: int | None = None  # CLM/SLM budget; None = one pass over the corpus
    corpus_fraction: float = 1.0
    ratio: float = 0.6
    learning_rate: float = 3e-3
    evals: int = 12
    eval_windows: int = 96  # held-out windows per evaluation
    sample_windows: int = 64  # corpus windows re-scored per checkpoint for selection stats
    dynamics_checkpoints: int = 5  # SLM checkpoints scored on held-out for token-loss dynamics
    seed: int = 0
    arms: tuple[str, ...] = ("clm", "slm")  # see ARMS; clm and slm always run
    candidate_factor: int = 4  # RHO-LOSS arms: candidate windows per trained window
    prune_keep: float = 0.5  # pruned arms: fraction of the corpus windows kept
    analyze: bool = True  # selection, dynamics and highlighting analyses of the SLM run

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            preset="tiny",
            vocab=512,
            seq_len=128,
            ref_epochs=1.0,
            corpus_fraction=0.12,
            train_tokens=160_000,
            evals=5,
            eval_windows=32,
            sample_windows=32,
            dynamics_checkpoints=3,
        )


# --- Stages -----------------------------------------------------------------------------------


def _subset(split: str, out: Path, fraction: float, seed: int) -> Path:
    """The shipped split, or a seeded fraction of its documents (quick mode)."""
    src = demo_path(split)
    if fraction >= 1.0:
        return src
    rng = np.random.default_rng(seed)
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    keep = np.sort(rng.choice(len(lines), max(1, int(len(lines) * fraction)), replace=False))
    dst = out / f"{split}.jsonl"
    dst.write_text("".join(lines[i] for i in keep))
    return dst


def _training_args(out: Path, cfg: DemoConfig, steps: int, evals: int, **extra):
    from transformers import TrainingArguments

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
        **extra,
    )


def _train(name, out, cfg, tokens, steps, selection, eval_store, ref_losses=None, evals=None):
    """One training run through the real `rho train` code; held-out loss at step 0 too."""
    from torch.utils.data import Subset

    from rho.trainer import ModelDataArguments, build_trainer

    data = ModelDataArguments(
        tokens=str(tokens),
        preset=cfg.preset,
        ref_losses=str(ref_losses) if ref_losses else None,
        eval_tokens=str(eval_store),
        seq_len=cfg.seq_len,
    )
    args = _training_args(out, cfg, steps, evals or cfg.evals)
    trainer = build_trainer(data, selection, args)
    n_eval = min(cfg.eval_windows, len(trainer.eval_dataset))
    trainer.eval_dataset = Subset(trainer.eval_dataset, range(n_eval))
    print(f"\n== {name}: {steps} steps of {cfg.batch_size}x{cfg.seq_len} tokens ==")
    trainer.evaluate()
    trainer.train()
    trainer.save_model()
    return trainer


def _eval_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tokens seen, held-out loss) at each evaluation of a run, in order, deduplicated."""
    points = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval_loss" in row:
            points[row["tokens_seen"]] = row["eval_loss"]
    tokens = np.array(sorted(points), dtype=np.float64)
    return tokens, np.array([points[t] for t in tokens])


def tokens_to_reach(tokens: np.ndarray, losses: np.ndarray, target: float) -> float | None:
    """First point where a held-out curve reaches ``target``, linearly interpolated."""
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return float(tokens[0])
            t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
            return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))
    return None


def compute_curve(run: Path) -> dict:
    """At each evaluation of a run: trained tokens, training FLOPs (training + candidate
    forwards + online reference), training wall seconds and held-out loss (lists, in order)."""
    points = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval_loss" in row:
            flops = row["flops_train"] + row["flops_candidates"] + row["flops_ref_online"]
            points[row["tokens_seen"]] = (flops, row["train_seconds"], row["eval_loss"])
    tokens = sorted(points)
    return {
        "tokens": tokens,
        "flops": [points[t][0] for t in tokens],
        "seconds": [points[t][1] for t in tokens],
        "heldout_loss": [points[t][2] for t in tokens],
    }


def last_log(run: Path, key: str = "flops_train") -> dict:
    """The run's last metrics record holding ``key``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if key in r][-1]


def arms_table(curves: dict, overhead: dict) -> dict:
    """For each arm, the cost to reach CLM's final held-out loss (interpolated between
    evaluations) and its ratio to CLM's whole run. ``curves[arm]`` is a ``compute_curve``;
    ``overhead[arm]`` the (FLOPs, seconds) spent before training (reference, scoring,
    pruning), counted in the totals."""
    clm = curves["clm"]
    target = clm["heldout_loss"][-1]

    def costs(curve: dict, extra: tuple[float, float], at: int | None = None) -> dict | None:
        """The curve's values at point ``at``, or where it first reaches the target."""
        losses = np.asarray(curve["heldout_loss"], dtype=np.float64)
        x = {}
        for key in ("tokens", "flops", "seconds"):
            xs = np.asarray(curve[key], dtype=np.float64)
            x[key] = float(xs[at]) if at is not None else tokens_to_reach(xs, losses, target)
        if x["tokens"] is None:
            return None
        return {
            "tokens": x["tokens"],
            "flops_train": x["flops"],
            "flops_total": x["flops"] + extra[0],
            "seconds_train": x["seconds"],
            "seconds_total": x["seconds"] + extra[1],
        }

    base = costs(clm, overhead.get("clm", (0.0, 0.0)), at=-1)
    table = {}
    for arm, curve in curves.items():
        extra = overhead.get(arm, (0.0, 0.0))
        reach = base if arm == "clm" else costs(curve, extra)
        ratio = None
        if reach is not None:
            ratio = {k: reach[k] / base[k] if base[k] else None for k in COST_KEYS}
        table[arm] = {
            "final_heldout_loss": float(curve["heldout_loss"][-1]),
            "overhead_flops": float(extra[0]),
            "overhead_seconds": float(extra[1]),
            "reach": reach,
            "ratio": ratio,
        }
    return table


def selection_sample(selection: dict, corpus, seq_len: int) -> dict:
    """The SLM checkpoints' selections on the analysed corpus windows, with each token's ground
    truth (noise mask, domain), from `rho analyze selection`'s result."""
    windows = np.asarray(selection["data"]["windows"])
    positions = (windows[:, None] * seq_len + np.arange(seq_len)).reshape(-1)
    steps = selection["data"]["fig8"]["steps"]
    return {
        "checkpoints": [f"step {s}" for s in steps],
        "valid": selection["arrays"]["valid"],
        "selected": selection["arrays"]["slm_selected"],
        "noise": None if corpus.noise_mask is None else np.asarray(corpus.noise_mask)[positions],
        "domain": None if corpus.doc_domains is None else corpus.token_domains()[positions],
    }


def selection_rates(sample: dict, domain_names: list[str]) -> dict:
    """Selection rate of noise vs clean tokens, precision/recall of 'selected = clean', and the
    selected fraction per domain, pooled over the checkpoints."""
    valid = np.broadcast_to(sample["valid"], sample["selected"].shape).reshape(-1)
    selected = sample["selected"].reshape(-1)[valid]
    out: dict = {"checkpoints": sample["checkpoints"], "tokens_per_checkpoint": int(valid.sum())}
    out["tokens_per_checkpoint"] //= max(1, len(sample["checkpoints"]))
    if sample["noise"] is not None:
        noise = np.tile(sample["noise"], len(sample["checkpoints"]))[valid]
        clean = ~noise
        out["noise_fraction"] = float(noise.mean())
        out["selection_rate_noise"] = float(selected[noise].mean())
        out["selection_rate_clean"] = float(selected[clean].mean())
        out["clean_precision"] = float(clean[selected].mean())
        out["clean_recall"] = float(selected[clean].mean())
    if sample["domain"] is not None:
        domain = np.tile(sample["domain"], len(sample["checkpoints"]))[valid]
        out["selected_fraction_by_domain"] = {
            name: float(selected[domain == i].mean())
            for i, name in enumerate(domain_names)
            if (domain == i).any()
        }
    return out


# --- Report -----------------------------------------------------------------------------------


def plot_curves(curves: dict, ref_loss: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for (label, (tokens, losses)), style in zip(curves.items(), ("-o", "-s"), strict=False):
        ax.plot(tokens / 1e3, losses, style, label=label, markersize=4)
    if ref_loss is not None:
        ax.axhline(ref_loss, color="grey", ls=":", label="reference model (trained on curated)")
    ax.set_xlabel("training tokens seen (thousands)")
    ax.set_ylabel("held-out math loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def demo(out: str | Path = "rho-demo", quick: bool = False, cfg: DemoConfig | None = None) -> dict:
    """Run the demo into ``out`` and return the results (also written to results.json)."""
    from rho.score import score_store
    from rho.store import LossStore, TokenStore
    from rho.tokenize import tokenize_corpus
    from rho.trainer import SelectionArguments

    cfg = cfg or (DemoConfig.quick() if quick else DemoConfig())
    cfg = replace(cfg, arms=parse_arms(",".join(cfg.arms)))
    arms = cfg.arms
    out = Path(out)
    if out.exists():
        if not (out / MARKER).exists():
            raise UserError(f"{out} exists and was not made by `rho demo`: choose another --out")
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    (out / MARKER).write_text("made by rho demo; a rerun replaces this directory\n")
    stores, runs = out / "stores", out / "runs"
    t0 = time.perf_counter()
    timings = {}

    def stage(name):
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    print(f"== rho demo ({'quick' if quick else 'full'}) into {out} ==")
    print("\n== [1/5] tokenizer and stores ==")
    corpus_file = _subset("corpus", out / "data", cfg.corpus_fraction, cfg.seed)
    corpus = tokenize_corpus([str(corpus_file)], stores / "corpus", train_vocab=cfg.vocab)
    tok_dir = str(corpus.tokenizer_dir)
    curated_file = _subset("curated", out / "data", cfg.corpus_fraction * 2, cfg.seed)
    curated = tokenize_corpus([str(curated_file)], stores / "curated", tokenizer=tok_dir)
    heldout = tokenize_corpus([str(demo_path("heldout"))], stores / "heldout", tokenizer=tok_dir)
    stage("tokenize")

    tokens_per_step = cfg.batch_size * cfg.seq_len
    ref_steps = max(1, int(cfg.ref_epochs * curated.n_tokens / tokens_per_step))
    none = SelectionArguments(selection="none")
    _train("[2/5] reference model on curated math", runs / "reference", cfg, curated.path,
           ref_steps, none, heldout.path, evals=3)  # fmt: skip
    stage("reference")

    print("\n== [3/5] score the corpus with the reference model ==")
    ref_losses = score_store(runs / "reference", corpus, stores / "corpus_ref_losses", cfg.seq_len)
    stage("score")

    pruned = stores / "pruned"
    if any(arm.startswith("pruned") for arm in arms):
        from rho.prune import prune_store

        print(f"\n== [3/5] prune the corpus: keep the {cfg.prune_keep:.0%} of its windows with "
              "the lowest mean reference loss ==")  # fmt: skip
        prune_store(corpus, ref_losses, pruned, keep=cfg.prune_keep, unit="window",
                    by="reference", progress=False)  # fmt: skip
        stage("prune")

    budget = cfg.train_tokens or (corpus.n_tokens // cfg.seq_len) * cfg.seq_len
    steps = max(1, budget // tokens_per_step)
    slm_args = SelectionArguments(selection="token", ratio=cfg.ratio, score="excess")
    _train("[4/5] CLM baseline on the corpus", runs / "clm", cfg, corpus.path, steps, none,
           heldout.path)  # fmt: skip
    _train("[4/5] SLM on the corpus", runs / "slm", cfg, corpus.path, steps, slm_args,
           heldout.path, ref_losses=ref_losses.path)  # fmt: skip
    factor = cfg.candidate_factor
    extra_arms = {
        "pruned-clm": ("CLM on the pruned corpus", pruned / "tokens", none, None),
        "pruned-slm": ("SLM on the pruned corpus", pruned / "tokens", slm_args,
                       pruned / "ref_losses"),
        "rholoss": (f"RHO-LOSS online, best 1/{factor} of the candidate windows", corpus.path,
                    SelectionArguments(selection="sample", candidate_factor=factor),
                    ref_losses.path),
        "rholoss+token": (f"RHO-LOSS (1/{factor} of the windows) + SLM inside them", corpus.path,
                          SelectionArguments(selection="sample+token", ratio=cfg.ratio,
                                             candidate_factor=factor),
                          ref_losses.path),
    }  # fmt: skip
    for arm in arms[2:]:
        title, tokens, selection_args, losses = extra_arms[arm]
        _train(f"[4/5] {arm}: {title}", runs / arm, cfg, tokens, steps, selection_args,
               heldout.path, ref_losses=losses)  # fmt: skip
    stage("train")

    print("\n== [5/5] analysis and report ==")
    corpus, ref_losses = TokenStore(stores / "corpus"), LossStore(stores / "corpus_ref_losses")
    curves = {name: _eval_curve(runs / name) for name in ("clm", "slm")}
    ref_curve = _eval_curve(runs / "reference")
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
    arms_results = arms_table(arm_curves, _overheads(arms, runs, corpus, timings))
    for arm in arms:
        arms_results[arm]["end"] = _run_end(runs / arm)
    if len(arms) > 2:
        plot_arms(arm_curves, out / "arms.png")
    rates, dynamics = {}, {"table": None, "markdown_table": ""}
    if cfg.analyze:
        rates, dynamics = _analyses(cfg, runs, out / "analysis", corpus, ref_losses, heldout, out)
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
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(results, quick, dynamics["markdown_table"]))
    print("\n" + summary(results, out))
    return results


def _analyses(cfg, runs: Path, analysis: Path, corpus, ref_losses, heldout, out: Path):
    """The SLM run's selection, token-loss dynamics and highlighted passages."""
    from rho.analysis.cli import run_checkpoints, run_dynamics, run_html, run_selection

    selection = run_selection(
        [runs / "slm", runs / "clm"], None, None, analysis / "selection",
        windows=cfg.sample_windows,
    )  # fmt: skip
    rates = selection_rates(selection_sample(selection, corpus, cfg.seq_len), corpus.domain_names)
    checkpoints = [p for _, p in run_checkpoints(runs / "slm")]
    spaced = np.unique(np.linspace(0, len(checkpoints) - 1, cfg.dynamics_checkpoints).round())
    dynamics = run_dynamics(
        [checkpoints[int(i)] for i in spaced], heldout, analysis / "dynamics",
        seq_len=cfg.seq_len, progress=False,
    )  # fmt: skip
    run_html(
        corpus.path, ref_losses.path, out / "selected.html", model=str(runs / "slm"),
        ratio=cfg.ratio, score="excess", passages=12, passage_tokens=160,
        title="rho demo: the tokens SLM selects",
    )  # fmt: skip
    return rates, dynamics


def _overheads(arms, runs: Path, corpus, timings: dict) -> dict:
    """(FLOPs, seconds) each arm spends before training: the reference's training and the scoring
    of the corpus for arms that use reference losses, and the pruning for pruned arms."""
    from rho.models import count_parameters, load_model

    ref = last_log(runs / "reference")
    n_ref = count_parameters(load_model(runs / "reference"))
    flops = ref["flops_train"] + 2 * n_ref * corpus.n_tokens
    seconds = ref["train_seconds"] + timings["score"]
    prune = timings.get("prune", 0.0)
    return {
        arm: (0.0, 0.0)
        if arm == "clm"
        else (flops, seconds + (prune if arm.startswith("pruned") else 0.0))
        for arm in arms
    }


def _run_end(run: Path) -> dict:
    """A run's cumulative counters at the end of its training."""
    row = last_log(run, "train_runtime")
    keys = ("flops_train", "flops_candidates", "flops_ref_online", "candidate_windows",
            "windows_trained", "train_seconds")  # fmt: skip
    return {"tokens": row["tokens_seen"], **{k: row[k] for k in keys}}


def plot_arms(curves: dict, path: Path) -> None:
    """Held-out loss of every arm against trained tokens and against training FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    for arm, c in curves.items():
        left.plot(np.asarray(c["tokens"]) / 1e3, c["heldout_loss"], "-o", ms=3, label=arm)
        right.plot(np.asarray(c["flops"]) / 1e12, c["heldout_loss"], "-o", ms=3, label=arm)
    left.set_xlabel("training tokens (thousands)")
    right.set_xlabel("training FLOPs, candidate forwards included (TFLOP)")
    left.set_ylabel("held-out math loss (nats/token)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend()
    fig.suptitle("Held-out loss by arm (reference training and scoring not included)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _ratio(x) -> str:
    return "not reached" if x is None else f"{x:.2f}"


def arms_markdown(r: dict) -> str:
    """The arms table: final loss and, to reach CLM's final loss, each cost as a ratio to CLM."""
    arms = r["arms"]
    lines = [
        "| arm | final held-out loss | training tokens | training FLOPs | total FLOPs "
        "| wall time (training) | wall time (total) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, a in arms.items():
        ratio = a["ratio"] or {}
        cells = [_ratio(ratio.get(k)) for k in COST_KEYS]
        lines.append(f"| {arm} | {a['final_heldout_loss']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def arms_explained(r: dict) -> list[str]:
    clm = r["arms"]["clm"]["reach"]
    cfg = r["config"]
    return [
        "Each cost is measured up to the point where the arm's held-out loss first reaches CLM's "
        "final loss (interpolated between evaluations) and divided by CLM's cost for its whole "
        f"run ({clm['tokens']:,.0f} tokens, {clm['flops_train']:.3g} FLOPs, "
        f"{clm['seconds_train']:.1f} s): below 1 is cheaper than CLM. Every arm ran the same "
        f"optimizer steps of {cfg['batch_size']}x{cfg['seq_len']} tokens from the same "
        "initialisation and seed, so the same trained tokens. Training FLOPs: 6·N per trained "
        f"token, plus 2·N per candidate token for RHO-LOSS (forward-only, {cfg['candidate_factor']}"
        " candidates per trained window). Total FLOPs add, for arms that use reference losses "
        "(all but CLM), the reference model's training (6·N_ref per token) and the scoring of "
        "the corpus (2·N_ref per token); wall time likewise (plus the pruning for pruned arms). "
        f"Pruned arms train on the {cfg['prune_keep']:.0%} of the corpus windows with the "
        "lowest mean reference loss, repeated to fill the budget.",
    ]


def _fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def report_markdown(r: dict, quick: bool, dynamics_table: str = "") -> str:
    sel = r["selection"]
    cmd = "rho demo --quick" if quick else "rho demo"
    speed = r["speedup_tokens_to_clm_final"]
    lines = [
        "# rho demo: Selective Language Modeling vs plain training",
        "",
        f"Reproduce: `{cmd}` (seed {r['config']['seed']}, preset `{r['config']['preset']}`, "
        f"ratio {r['config']['ratio']}).",
        "",
        "## Held-out math loss (nats/token)",
        "",
        "| run | final held-out loss |",
        "|---|---|",
        f"| CLM (all tokens) | {r['clm_final_heldout_loss']:.4f} |",
        f"| SLM (top {r['config']['ratio']:.0%} by excess loss) "
        f"| {r['slm_final_heldout_loss']:.4f} |",
        f"| reference model (trained on curated math) | {r['reference_heldout_loss']:.4f} |",
        "",
        f"Both runs saw {r['training_tokens']:,.0f} training tokens from the same initialisation "
        "and data order. ",
        (
            f"SLM reached CLM's final held-out loss after {r['slm_tokens_to_clm_final']:,.0f} "
            f"tokens: **{speed:.2f}x** fewer tokens than CLM."
            if speed
            else "SLM did not reach CLM's final held-out loss within the budget."
        ),
        "",
        "![held-out loss curves](curves.png)",
        "",
        "## Compute to reach CLM's final held-out loss (ratio to CLM)",
        "",
        arms_markdown(r),
        "",
        *arms_explained(r),
        "",
    ]
    if len(r["arms"]) > 2:
        lines += ["![held-out loss by arm](arms.png)", ""]
    if sel:
        lines += [
            "## Which tokens SLM selects",
            "",
            f"Measured by re-scoring {r['config']['sample_windows']} corpus windows with each SLM "
            f"checkpoint ({len(sel['checkpoints'])}) and selecting as training does.",
            "",
        ]
    if "selection_rate_noise" in sel:
        lines += [
            "| | value |",
            "|---|---|",
            f"| share of noise tokens in the sample | {sel['noise_fraction']:.1%} |",
            f"| selection rate of noise tokens | {sel['selection_rate_noise']:.1%} |",
            f"| selection rate of clean tokens | {sel['selection_rate_clean']:.1%} |",
            f"| precision of 'selected = clean' | {sel['clean_precision']:.1%} |",
            f"| recall of clean tokens | {sel['clean_recall']:.1%} |",
            "",
        ]
    if "selected_fraction_by_domain" in sel:
        lines += ["| document domain | selected fraction |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in sel["selected_fraction_by_domain"].items()]
        lines.append("")
    if sel:
        lines += _analysis_markdown(dynamics_table)
    lines += [
        "## Time (seconds)",
        "",
        " · ".join(f"{k} {v}" for k, v in r["seconds"].items()),
        "",
        "## Commands behind it",
        "",
        "```bash",
        "rho tokenize corpus.jsonl.gz --out stores/corpus --train-tokenizer "
        f"{r['config']['vocab']}",
        "rho tokenize curated.jsonl.gz --out stores/curated --tokenizer stores/corpus/tokenizer",
        "rho tokenize heldout.jsonl.gz --out stores/heldout --tokenizer stores/corpus/tokenizer",
        f"rho train --selection none --tokens stores/curated --preset {r['config']['preset']} "
        "--output_dir runs/reference ...",
        "rho score --model runs/reference --tokens stores/corpus --out stores/corpus_ref_losses "
        f"--seq-len {r['config']['seq_len']}",
        "rho train --selection none --tokens stores/corpus --eval_tokens stores/heldout "
        "--output_dir runs/clm ...",
        f"rho train --selection token --ratio {r['config']['ratio']} --tokens stores/corpus "
        "--ref_losses stores/corpus_ref_losses --output_dir runs/slm ...",
        *_arm_commands(r),
        "```",
        "",
    ]
    return "\n".join(lines)


def _arm_commands(r: dict) -> list[str]:
    cfg, arms, lines = r["config"], r["arms"], []
    if "pruned-clm" in arms or "pruned-slm" in arms:
        lines.append(
            "rho prune --tokens stores/corpus --losses stores/corpus_ref_losses --unit window "
            f"--by reference --keep {cfg['prune_keep']} --out stores/pruned"
        )
    if "pruned-clm" in arms:
        lines.append("rho train --selection none --tokens stores/pruned/tokens ... "
                     "--output_dir runs/pruned-clm")  # fmt: skip
    if "pruned-slm" in arms:
        lines.append(f"rho train --selection token --ratio {cfg['ratio']} --tokens "
                     "stores/pruned/tokens --ref_losses stores/pruned/ref_losses ... "
                     "--output_dir runs/pruned-slm")  # fmt: skip
    online = {"rholoss": "sample", "rholoss+token": f"sample+token --ratio {cfg['ratio']}"}
    for arm, selection in online.items():
        if arm in arms:
            lines.append(
                f"rho train --selection {selection} --candidate_factor {cfg['candidate_factor']} "
                f"--tokens stores/corpus --ref_losses stores/corpus_ref_losses ... "
                f"--output_dir runs/{arm}"
            )
    return lines


def _analysis_markdown(dynamics_table: str) -> list[str]:
    return [
        "Passages with the selected tokens highlighted: [selected.html](selected.html).",
        "Loss of the selected and dropped tokens under SLM and CLM, and the perplexity of each "
        "checkpoint's selection at every checkpoint (the paper's Figures 6 and 8): "
        "[analysis/selection/selection.md](analysis/selection/selection.md).",
        "",
        "![selected vs unselected](analysis/selection/fig6_selected_unselected.png)",
        "",
        "## Token-loss dynamics on held-out text (the paper's Figure 3)",
        "",
        "Each held-out token's loss across SLM checkpoints, classified by the paper's rule "
        "([analysis/dynamics/dynamics.md](analysis/dynamics/dynamics.md)):",
        "",
        dynamics_table,
        "",
        "![loss per category](analysis/dynamics/fig3a_categories.png)",
        "",
    ]


def summary(r: dict, out: Path) -> str:
    sel = r["selection"]
    speed = r["speedup_tokens_to_clm_final"]
    lines = [
        "=" * 72,
        f"rho demo ({r['mode']}): {r['training_tokens']:,.0f} training tokens per run, "
        f"{sum(r['seconds'].values()):.0f}s",
        f"  held-out math loss   CLM {r['clm_final_heldout_loss']:.4f}   "
        f"SLM {r['slm_final_heldout_loss']:.4f}   reference {r['reference_heldout_loss']:.4f}",
        f"  SLM reached CLM's final loss with {_fmt(speed, '.2f')}x fewer tokens",
    ]
    if "selection_rate_noise" in sel:
        lines.append(
            f"  selection rate: noise tokens {sel['selection_rate_noise']:.1%}, "
            f"clean tokens {sel['selection_rate_clean']:.1%}"
        )
    if len(r["arms"]) > 2:
        lines += ["  to reach CLM's final loss, as a ratio to CLM (below 1 = cheaper):"]
        lines += ["  " + line for line in arms_markdown(r).splitlines()]
    lines += [f"  report: {out / 'report.md'}  (curves.png, selected.html, results.json)", "=" * 72]
    return "\n".join(lines)


def demo_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho demo", description="Selective Language Modeling end to end on the demo corpus."
    )
    parser.add_argument("--out", default="rho-demo", help="output directory (replaced on rerun)")
    parser.add_argument("--quick", action="store_true", help="smoke-test scale (about a minute)")
    parser.add_argument("--preset", help="model preset (default: 1m; quick: tiny)")
    parser.add_argument("--ratio", type=float, help="SLM selection ratio (default 0.6)")
    parser.add_argument("--seed", type=int, help="seed (default 0)")
    parser.add_argument(
        "--arms",
        default="clm,slm",
        help=f"comma list of {', '.join(ARMS)}, or all (clm and slm always run; default clm,slm)",
    )
    parser.add_argument(
        "--candidate-factor", type=int, help="RHO-LOSS arms: candidates per trained window (4)"
    )
    args = parser.parse_args(argv)
    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    for key in ("preset", "ratio", "seed", "candidate_factor"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.candidate_factor is not None and args.candidate_factor < 1:
        raise UserError("--candidate-factor must be >= 1")
    cfg.arms = parse_arms(args.arms)
    demo(args.out, args.quick, cfg)
    return 0
