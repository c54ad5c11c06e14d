"""Which tokens an SLM run selects, against the corpus's ground truth (injected-noise mask,
document domains), from `rho analyze selection`'s result."""

from __future__ import annotations

import numpy as np


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
