"""The demo's analyses of its SLM run: which tokens it selects (rates against the corpus's
ground truth: noise mask and domains), the token-loss dynamics on held-out text, and the
highlighted passages (selected.html). The analyses themselves are `rho analyze`'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rho.analysis.dynamics_report import run_dynamics
from rho.analysis.html_report import run_html
from rho.analysis.selection_report import run_selection
from rho.experiment.config import DemoConfig
from rho.runs import run_checkpoints


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


def analyse_slm(cfg: DemoConfig, runs: Path, out: Path, corpus, ref_losses, heldout):
    """The SLM run's selection rates (against CLM), token-loss dynamics on held-out text and
    highlighted passages, under ``out/analysis`` and ``out/selected.html``; returns
    (selection rates, `rho analyze dynamics`'s result)."""
    analysis = out / "analysis"
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
