"""The experiment's analyses stage (``analyse``): token-loss dynamics over CLM's checkpoints, and
which tokens an SLM run selects against the corpus's ground truth (injected-noise mask,
document domains), from `rho analyze selection`'s result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rho.analysis.dynamics_report import run_dynamics
from rho.analysis.html_report import run_html
from rho.analysis.selection_report import run_selection
from rho.files import read_json
from rho.runs import run_checkpoints
from rho.store import TokenStore


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


def analyse(
    cfg, results: dict, data: dict, out: Path, directory: Path, first: int, slm_data: dict | None
) -> dict:
    """Token-loss dynamics over CLM checkpoints (the paper's Figure 3 setting: ordinary
    continual pretraining) on the target test set; SLM's selection (Figures 6, 8) and the
    highlighted corpus (Figure 13) on the windows SLM trained on (``slm_data``: their store
    and reference losses). ``cfg`` is the analyses' view of the config."""
    stores, axes = data["stores"], data["axes"]
    clm = Path(results[f"clm-seed{first}"]["run"])
    checkpoints = [p for _, p in run_checkpoints(clm)]
    spaced = np.unique(np.linspace(0, len(checkpoints) - 1, cfg.dynamics_checkpoints).round())
    dynamics = run_dynamics(
        [checkpoints[int(i)] for i in spaced],
        TokenStore(stores[f"{axes[0]}-test"]),
        directory / "dynamics",
        seq_len=cfg.seq_len,
        progress=False,
    )
    recorded = read_json(directory / "dynamics" / "dynamics.json")
    result = {
        "dynamics": dynamics["table"],
        "dynamics_checkpoints": len(recorded["checkpoints"]),
        "dynamics_threshold": recorded["threshold"],
        "dynamics_mean_loss": [float(m) for m in recorded["all_tokens_mean_loss"]],
    }
    if result["dynamics_mean_loss"]:
        result["dynamics_loss_fall"] = (
            result["dynamics_mean_loss"][0] - result["dynamics_mean_loss"][-1]
        )
    if slm_data is not None:
        slm_stage = results[f"slm-seed{first}"]
        slm = Path(slm_stage["run"])
        selection = run_selection([slm, clm], None, None, directory / "selection", windows=64)
        corpus = TokenStore(slm_data["tokens"])
        sample = selection_sample(selection, corpus, cfg.seq_len)
        result["selection"] = selection_rates(sample, corpus.domain_names)
        run_html(
            corpus.path,
            slm_data["losses"],
            out / "selected.html",
            model=str(slm),
            ratio=cfg.ratio,
            passages=12,
            passage_tokens=160,
            overwrite=True,
            title=f"The tokens SLM (seed {first}) selects",
        )
    return result
