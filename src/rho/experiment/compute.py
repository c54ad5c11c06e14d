"""Compute accounting of the demo's runs, read from their run directories (``rho.runs``): the
held-out curves, the cost to reach a target loss, each arm's overhead before training, its
counters at the end of training, and the arms table (each cost as a ratio to CLM's).

Costs: training FLOPs are 6·N per trained token plus 2·N per candidate token (RHO-LOSS's
forward-only candidates) plus any online reference; the total adds, for arms that use reference
losses, the reference's training (6·N_ref per token) and the scoring of the corpus (2·N_ref per
corpus token). Wall time likewise (training steps; the total adds the reference's training, the
scoring and, for pruned arms, the pruning).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rho.models import count_parameters, load_model
from rho.runs import eval_records, last_record

COST_KEYS = ("tokens", "flops_train", "flops_total", "seconds_train", "seconds_total")
END_KEYS = ("flops_train", "flops_candidates", "flops_ref_online", "candidate_windows",
            "windows_trained", "train_seconds")  # fmt: skip


def eval_curve(run: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(tokens seen, held-out loss) at each evaluation of a run, in order, deduplicated."""
    records = eval_records(run)
    tokens = np.array([r["tokens_seen"] for r in records], dtype=np.float64)
    return tokens, np.array([r["eval_loss"] for r in records])


def tokens_to_reach(tokens: np.ndarray, losses: np.ndarray, target: float) -> float | None:
    """First point where a held-out curve reaches ``target``, linearly interpolated."""
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return float(tokens[0])
            t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
            return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))
    return None


def compute_curve(run: str | Path) -> dict:
    """At each evaluation of a run: trained tokens, training FLOPs (training + candidate
    forwards + online reference), training wall seconds and held-out loss (lists, in order)."""
    records = eval_records(run)
    flops = ("flops_train", "flops_candidates", "flops_ref_online")
    return {
        "tokens": [r["tokens_seen"] for r in records],
        "flops": [r[flops[0]] + r[flops[1]] + r[flops[2]] for r in records],
        "seconds": [r["train_seconds"] for r in records],
        "heldout_loss": [r["eval_loss"] for r in records],
    }


def run_end(run: str | Path) -> dict:
    """A run's cumulative counters at the end of its training."""
    row = last_record(run, "train_runtime")
    return {"tokens": row["tokens_seen"], **{k: row[k] for k in END_KEYS}}


def overheads(arms, runs: Path, corpus_tokens: int, timings: dict) -> dict:
    """(FLOPs, seconds) each arm spends before training: the reference's training and the scoring
    of the corpus for arms that use reference losses, and the pruning for pruned arms."""
    ref = last_record(runs / "reference")
    n_ref = count_parameters(load_model(runs / "reference"))
    flops = ref["flops_train"] + 2 * n_ref * corpus_tokens
    seconds = ref["train_seconds"] + timings["score"]
    prune = timings.get("prune", 0.0)
    return {
        arm: (0.0, 0.0)
        if arm == "clm"
        else (flops, seconds + (prune if arm.startswith("pruned") else 0.0))
        for arm in arms
    }


def _costs(curve: dict, extra: tuple[float, float], target: float, at: int | None) -> dict | None:
    """A compute curve's costs at point ``at``, or where it first reaches ``target`` (None when
    it never does); ``extra`` is the (FLOPs, seconds) overhead counted in the totals."""
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


def arms_table(curves: dict, overhead: dict) -> dict:
    """For each arm, the cost to reach CLM's final held-out loss (interpolated between
    evaluations) and its ratio to CLM's whole run. ``curves[arm]`` is a ``compute_curve``;
    ``overhead[arm]`` the (FLOPs, seconds) spent before training (reference, scoring,
    pruning), counted in the totals."""
    clm = curves["clm"]
    target = clm["heldout_loss"][-1]
    base = _costs(clm, overhead.get("clm", (0.0, 0.0)), target, at=-1)
    table = {}
    for arm, curve in curves.items():
        extra = overhead.get(arm, (0.0, 0.0))
        reach = base if arm == "clm" else _costs(curve, extra, target, at=None)
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
