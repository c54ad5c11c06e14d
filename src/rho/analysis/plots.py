"""Figures for `rho analyze` (matplotlib, Agg; no pyplot, so no global backend is touched).

Each function takes already-computed numbers, draws one figure with a title, labelled axes and
a legend, writes it as a PNG and returns the path. Labels may hold corpus text (tokens in
context, domain and checkpoint names): every figure is drawn with mathtext and TeX off, so a
``$``, ``_`` or ``\\frac`` is shown as written, never parsed (``plain_text``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rho.analysis.dynamics import CATEGORIES

CATEGORY_COLOURS = {"H→L": "#2a9d55", "L→L": "#3a6fc4", "H→H": "#d0402a", "L→H": "#e89a1c"}
RUN_COLOURS = {"SLM": "#d0402a", "CLM": "#3a6fc4"}
DPI = 120


def plain_text(draw):
    """Draw (and save) a figure with every text shown literally: no mathtext, no TeX."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        with rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return drawn


def _figure(width: float = 7.5, height: float = 4.5, cols: int = 1, rows: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _checkpoint_ticks(ax, x: list, labels: list[str] | None) -> None:
    if labels is not None and len(x) <= 12:
        ax.set_xticks(x)
        long = max(map(len, labels)) > 6
        ax.set_xticklabels(labels, rotation=20 if long else 0, ha="right" if long else "center")


@plain_text
def category_curves(
    x: list[float],
    xlabel: str,
    curves: np.ndarray,
    table: dict,
    path: str | Path,
    labels: list[str] | None = None,
) -> Path:
    """Figure 3a: mean loss of each trajectory category at each checkpoint."""
    fig, (ax,) = _figure(height=5.5)
    percent = {row["category"]: row for row in table["rows"]}
    for code, name in enumerate(CATEGORIES):
        if np.isfinite(curves[code]).any():
            row = percent[name]
            share = f"{row['percent']:.1f}% of tokens (paper 1B: {row['paper_1b_percent']:.0f}%)"
            ax.plot(
                x,
                curves[code],
                marker="o",
                color=CATEGORY_COLOURS[name],
                label=f"{name}: {share}",
            )
    _checkpoint_ticks(ax, x, labels)
    ax.set_title("Token loss by trajectory category across checkpoints (Rho-1 Fig. 3a)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean token loss (nats)")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return _save(fig, path)


@plain_text
def fluctuating_tokens(
    x: list[float],
    xlabel: str,
    panels: list[tuple[str, list[tuple[str, np.ndarray]]]],
    mean: float,
    path: str | Path,
    labels: list[str] | None = None,
) -> Path:
    """Figures 3b/c: the loss of a few strongly fluctuating tokens across checkpoints; one panel
    per category, one line per token (labelled with the token in its context)."""
    fig, axes = _figure(width=12, height=3.8 * len(panels) + 0.6, rows=len(panels))
    for ax, (name, lines) in zip(axes, panels, strict=True):
        for label, losses in lines:
            ax.plot(x, losses, marker="o", markersize=3, label=label)
        ax.axhline(
            mean, color="0.4", linestyle="--", linewidth=1, label=f"L/H split: mean loss {mean:.2f}"
        )
        _checkpoint_ticks(ax, x, labels)
        ax.set_title(f"Strongly fluctuating {name} tokens")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("token loss (nats)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Tokens whose loss goes up and down between checkpoints (Rho-1 Fig. 3b/c)")
    return _save(fig, path)


@plain_text
def spread_histogram(
    spread_by_category: dict[str, np.ndarray], kind: str, path: str | Path
) -> Path:
    """Distribution of per-token loss spread across checkpoints, per category."""
    fig, (ax,) = _figure()
    values = [v[np.isfinite(v)] for v in spread_by_category.values()]
    everything = np.concatenate(values) if values else np.zeros(0)
    if len(everything):
        top = float(np.percentile(everything, 99.5)) or 1.0
        bins = np.linspace(0.0, top, 50)
        ax.hist(everything, bins=bins, color="0.85", label=f"all tokens ({len(everything):,})")
        for name, v in spread_by_category.items():
            v = v[np.isfinite(v)]
            if len(v):
                ax.hist(
                    v,
                    bins=bins,
                    histtype="step",
                    linewidth=1.6,
                    color=CATEGORY_COLOURS.get(name),
                    label=f"{name} ({len(v):,}, median {np.median(v):.2f})",
                )
    what = "standard deviation" if kind == "std" else "max − min"
    ax.set_title(f"How much each token's loss moves across checkpoints ({what})")
    ax.set_xlabel(f"per-token loss {what} across checkpoints (nats)")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=9)
    return _save(fig, path)


@plain_text
def selected_vs_unselected(
    series: dict[str, dict[str, tuple[list, list]]], ratio: float, path: str | Path
) -> Path:
    """Figure 6a/c: loss of the tokens SLM selects (left) and drops (right) along training.

    ``series[name]["selected" | "unselected"] = (steps, losses)``; names containing "training
    log" are drawn dashed.
    """
    fig, axes = _figure(width=12, height=4.5, cols=2)
    for ax, which, letter in zip(axes, ("selected", "unselected"), "ac", strict=True):
        for name, data in series.items():
            steps, losses = data.get(which, ([], []))
            if not steps:
                continue
            run = "SLM" if name.startswith("SLM") else "CLM"
            log = "training log" in name
            ax.plot(
                steps,
                losses,
                marker=None if log else "o",
                linestyle="--" if log else "-",
                linewidth=1 if log else 1.8,
                alpha=0.7 if log else 1.0,
                color=RUN_COLOURS[run],
                label=name,
            )
        verb = "selects" if which == "selected" else "drops"
        ax.set_title(f"({letter}) loss of the tokens SLM {verb} ({ratio:.0%} kept)")
        ax.set_xlabel("training step")
        ax.set_ylabel("mean token loss (nats)")
        ax.legend(fontsize=9)
    fig.suptitle("Selected vs unselected tokens under SLM and CLM training (Rho-1 Fig. 6a/c)")
    return _save(fig, path)


@plain_text
def selection_heatmap(matrix: np.ndarray, labels: list[str], path: str | Path) -> Path:
    """Figure 8 as a matrix: perplexity of the tokens each checkpoint selects (rows) under every
    checkpoint's model (columns)."""
    n = len(labels)
    fig, (ax,) = _figure(width=max(5.5, 1.0 * n + 3), height=max(4.2, 0.8 * n + 2))
    ax.grid(False)
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    finite = matrix[np.isfinite(matrix)]
    middle = float(np.mean([finite.min(), finite.max()])) if len(finite) else 0.0
    if n <= 12:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                value = matrix[i, j]
                if math.isfinite(value):
                    colour = "black" if value > middle else "white"
                    ax.text(
                        j, i, f"{value:.1f}", ha="center", va="center", color=colour, fontsize=9
                    )
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=30 if n > 6 else 0)
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels)
    ax.set_xlabel("evaluated with the model at step")
    ax.set_ylabel("tokens selected at step")
    ax.set_title("Perplexity of selected tokens (Rho-1 Fig. 8)")
    fig.colorbar(image, ax=ax, label="perplexity of the selected tokens")
    return _save(fig, path)


@plain_text
def selection_lines(
    matrix: np.ndarray, steps: list[int], labels: list[str], path: str | Path
) -> Path:
    """Figure 8 as lines: for the tokens selected at each checkpoint, their perplexity as
    training goes on."""
    fig, (ax,) = _figure()
    colours = [(0.15 + 0.7 * i / max(1, len(labels) - 1)) for i in range(len(labels))]
    for i, label in enumerate(labels):
        ax.plot(
            steps,
            matrix[i],
            marker="o",
            color=(colours[i], 0.25, 1 - colours[i]),
            label=f"selected at step {label}",
        )
    _checkpoint_ticks(ax, steps, labels)
    ax.set_title("Perplexity of the tokens selected at each checkpoint (Rho-1 Fig. 8)")
    ax.set_xlabel("evaluated with the model at step")
    ax.set_ylabel("perplexity of the selected tokens")
    ax.legend(fontsize=9)
    return _save(fig, path)


@plain_text
def sweep(
    ratios: list[float], losses: list[float], summary: dict, path: str | Path, title_note: str = ""
) -> Path:
    """Figure 9: held-out loss against the selection ratio."""
    fig, (ax,) = _figure()
    ax.plot(ratios, losses, marker="o", color=RUN_COLOURS["SLM"], label="SLM at this ratio")
    if summary.get("all_tokens_eval_loss") is not None:
        ax.axhline(
            summary["all_tokens_eval_loss"],
            color=RUN_COLOURS["CLM"],
            linestyle="--",
            linewidth=1,
            label="ratio 1.0 (all tokens: plain causal LM)",
        )
    if summary.get("best_ratio") is not None:
        ax.plot(
            [summary["best_ratio"]],
            [summary["best_eval_loss"]],
            marker="*",
            markersize=16,
            color="black",
            linestyle="none",
            label=f"best: ratio {summary['best_ratio']:g} ({summary['best_eval_loss']:.3f})",
        )
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.set_title("Held-out loss against selection ratio (Rho-1 Fig. 9)" + title_note)
    ax.set_xlabel("selection ratio (fraction of tokens kept in the loss)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.legend(fontsize=9)
    return _save(fig, path)
