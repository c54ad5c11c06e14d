"""The demo's figures (matplotlib, Agg; no pyplot, so no global backend is touched): held-out
loss of CLM and SLM against tokens (curves.png), and of every arm against tokens and training
FLOPs (arms.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120


def _figure(width: float, height: float, cols: int = 1, **kwargs):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols, **kwargs)


def plot_curves(curves: dict, ref_loss: float | None, path: Path, title: str) -> None:
    """Held-out loss against training tokens; ``curves[label]`` is (tokens, losses)."""
    fig, ax = _figure(7, 4.5)
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


def plot_arms(curves: dict, path: Path) -> None:
    """Held-out loss of every arm against trained tokens and against training FLOPs."""
    fig, (left, right) = _figure(11, 4.2, cols=2, sharey=True)
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
