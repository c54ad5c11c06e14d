"""The experiment's analyses stage (``analyse``): token-loss dynamics over CLM's checkpoints, and
which tokens an SLM run selects against the corpus's ground truth (injected-noise mask,
document domains), from `rho analyze selection`'s result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from rho.analysis.dynamics_report import run_dynamics
from rho.analysis.html_report import run_html
from rho.analysis.selection_report import run_selection
from rho.experiment.records import Analyses, Data, DynamicsTable, SelectionRates, Trained
from rho.io.files import read_json
from rho.io.store import TokenStore
from rho.training.runs import run_checkpoints


class DynamicsFile(BaseModel):
    """What the analyses read of `rho analyze dynamics`'s dynamics.json."""

    model_config = ConfigDict(extra="ignore")
    checkpoints: list[str]
    threshold: float
    table: DynamicsTable
    all_tokens_mean_loss: list[float]


@dataclass
class SelectionSample:
    """Per checkpoint, which of the analysed tokens SLM selected, with their ground truth."""

    checkpoints: list[str]
    valid: np.ndarray  # tokens with a reference loss (not a window's first)
    selected: np.ndarray  # checkpoint × window × position
    noise: np.ndarray | None  # per token: injected noise
    domain: np.ndarray | None  # per token: its document's domain


def selection_sample(selection: dict, corpus, seq_len: int) -> SelectionSample:
    """The SLM checkpoints' selections on the analysed corpus windows, with each token's ground
    truth (noise mask, domain), from `rho analyze selection`'s result."""
    data, arrays = selection["data"], selection["arrays"]
    windows = np.asarray(data["windows"])
    positions = (windows[:, None] * seq_len + np.arange(seq_len)).reshape(-1)
    return SelectionSample(
        checkpoints=[f"step {s}" for s in data["fig8"]["steps"]],
        valid=arrays["valid"],
        selected=arrays["slm_selected"],
        noise=None if corpus.noise_mask is None else np.asarray(corpus.noise_mask)[positions],
        domain=None if corpus.doc_domains is None else corpus.token_domains()[positions],
    )


def selection_rates(sample: SelectionSample, domain_names: list[str]) -> SelectionRates:
    """Selection rate of noise vs clean tokens, precision/recall of 'selected = clean', and the
    selected fraction per domain, pooled over the checkpoints."""
    valid = np.broadcast_to(sample.valid, sample.selected.shape).reshape(-1)
    selected = sample.selected.reshape(-1)[valid]
    n = len(sample.checkpoints)
    out = SelectionRates(
        checkpoints=sample.checkpoints, tokens_per_checkpoint=int(valid.sum()) // max(1, n)
    )
    if sample.noise is not None:
        noise = np.tile(sample.noise, n)[valid]
        clean = ~noise
        out.noise_fraction = float(noise.mean())
        out.selection_rate_noise = float(selected[noise].mean())
        out.selection_rate_clean = float(selected[clean].mean())
        out.clean_precision = float(clean[selected].mean())
        out.clean_recall = float(selected[clean].mean())
    if sample.domain is not None:
        domain = np.tile(sample.domain, n)[valid]
        out.selected_fraction_by_domain = {
            name: float(selected[domain == i].mean())
            for i, name in enumerate(domain_names)
            if (domain == i).any()
        }
    return out


def dynamics(cfg, clm: Path, data: Data, directory: Path) -> Analyses:
    """Token-loss dynamics over CLM checkpoints (the paper's Figure 3 setting: ordinary
    continual pretraining) on the target test set."""
    checkpoints = [p for _, p in run_checkpoints(clm)]
    spaced = np.unique(np.linspace(0, len(checkpoints) - 1, cfg.dynamics_checkpoints).round())
    run_dynamics(
        [checkpoints[int(i)] for i in spaced],
        TokenStore(data.split(data.axes[0], "test")),
        directory / "dynamics",
        seq_len=cfg.seq_len,
        progress=False,
    )
    recorded = DynamicsFile.model_validate(read_json(directory / "dynamics" / "dynamics.json"))
    mean = recorded.all_tokens_mean_loss
    return Analyses(
        dynamics=recorded.table,
        dynamics_checkpoints=len(recorded.checkpoints),
        dynamics_threshold=recorded.threshold,
        dynamics_mean_loss=mean,
        dynamics_loss_fall=mean[0] - mean[-1] if mean else None,
    )


def analyse(
    cfg,
    clm: Trained,
    slm: Trained | None,
    slm_windows: str | None,
    slm_losses: str | None,
    data: Data,
    out: Path,
    directory: Path,
    first: int,
) -> Analyses:
    """CLM's token-loss dynamics; SLM's selection (Figures 6, 8) and the highlighted corpus
    (Figure 13) on the windows SLM trained on (``slm_windows``, with their reference losses
    ``slm_losses``). ``cfg`` is the analyses' view of the config."""
    result = dynamics(cfg, Path(clm.run), data, directory)
    if slm is not None:
        selection = run_selection(
            [Path(slm.run), Path(clm.run)], None, None, directory / "selection", windows=64
        )
        corpus = TokenStore(slm_windows)
        sample = selection_sample(selection, corpus, cfg.seq_len)
        result.selection = selection_rates(sample, corpus.domain_names)
        run_html(
            corpus.path,
            slm_losses,
            out / "selected.html",
            model=slm.run,
            ratio=cfg.ratio,
            passages=12,
            passage_tokens=160,
            overwrite=True,
            title=f"The tokens SLM (seed {first}) selects",
        )
    return result
