"""Figures of a multi-arm, multi-seed experiment (matplotlib through ``Figure`` and the Agg
canvas, never pyplot, so no global backend is touched; PNG at 120 dpi): every arm on two
held-out axes at once (``plot_axes``) and the validation curves with their spread over seeds
(``plot_curves``). Inputs are ``rho.experiment.summary``'s ``loss_table`` and ``runs`` (arm ->
rho.experiment.records.ArmRun per seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rho.analysis.plots import plain_text
from rho.experiment.records import ArmRun

DPI = 120


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # 20 distinct colours (tab20's dark shades, then its light ones): `--arms all` draws 15
    # lines, and the default 10-colour cycle would give two arms one colour.
    tab20 = colormaps["tab20"].colors
    ax.set_prop_cycle(color=[*tab20[0::2], *tab20[1::2]])
    return fig, ax


@plain_text  # arm and axis names are the user's text: shown literally
def plot_axes(loss_table: dict, path: str | Path, x: str = "target", y: str = "general") -> None:
    """One point per arm at (its mean ``x`` test loss, its mean ``y`` test loss), with ± one
    standard deviation over seeds as error bars, labelled with the arm; lower-left is better.
    Arms missing either axis are left out."""
    fig, ax = _figure(6.5, 5)
    for arm, row in loss_table.items():
        if x not in row or y not in row:
            continue
        sx, sy = row[x], row[y]
        ax.errorbar(
            sx.mean,
            sy.mean,
            xerr=sx.std,
            yerr=sy.std,
            fmt="o",
            capsize=3,
            label=f"{arm} (n={min(sx.n, sy.n)})",
        )
        ax.annotate(arm, (sx.mean, sy.mean), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel(f"{x} test loss (nats/token)")
    ax.set_ylabel(f"{y} test loss (nats/token)")
    ax.set_title("Test loss by arm, mean ± sample std over seeds (lower-left is better)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _mean_band(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Mean, min and max over seeds of curves on possibly different token grids: each is
    interpolated onto the union of their points within the range they all cover."""
    if len(curves) == 1 or all(np.array_equal(curves[0][0], t) for t, _ in curves):
        tokens = curves[0][0]
        stack = np.stack([loss for _, loss in curves])
    else:
        lo = max(t[0] for t, _ in curves)
        hi = min(t[-1] for t, _ in curves)
        tokens = np.unique(np.concatenate([t for t, _ in curves]))
        tokens = tokens[(tokens >= lo) & (tokens <= hi)]
        stack = np.stack([np.interp(tokens, t, loss) for t, loss in curves])
    return tokens, stack.mean(axis=0), stack.min(axis=0), stack.max(axis=0)


def _curves(seeds: list[ArmRun], axis: str, column: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each seed's (``column``: tokens or FLOPs, validation loss on ``axis``), where it has them."""
    return [
        (
            np.asarray(getattr(run.curve, column), dtype=np.float64),
            np.asarray(run.curve.losses[axis], dtype=np.float64),
        )
        for run in seeds
        if axis in run.curve.losses and getattr(run.curve, column)
    ]


@plain_text
def plot_curves(runs: dict, path: str | Path, axis: str = "target") -> None:
    """Validation loss on ``axis`` against training tokens: per arm the mean over seeds as a
    line and the min–max over seeds as a band."""
    fig, ax = _figure(7.5, 4.5)
    for arm, seeds in runs.items():
        curves = _curves(seeds, axis, "tokens")
        if not curves:
            continue
        tokens, mean, low, high = _mean_band(curves)
        (line,) = ax.plot(tokens, mean, "-o", ms=3, label=f"{arm} ({_seeds(len(curves))})")
        if len(curves) > 1:
            ax.fill_between(tokens, low, high, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"{axis} validation loss (nats/token)")
    ax.set_title(f"{axis} validation loss: mean over seeds, band = min–max")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


@plain_text
def plot_frontier(
    runs: dict,
    overhead: dict,
    target: float,
    path: str | Path,
    axis: str = "target",
    points: dict | None = None,
) -> None:
    """The compute frontier: validation loss on ``axis`` against one-off total FLOPs (the arm's
    overhead, then its training), per arm the mean over seeds as a line and min–max as a band;
    the target as a dashed line. clm and clm-mix are the lines to beat. A laddered arm's
    fully annealed runs (``points``: arm -> rho.experiment.records.LadderPoint by budget) are
    squares joined by a line, ± one sample std of their final loss."""
    fig, ax = _figure(7.5, 4.8)
    colours: dict[str, str] = {}
    for arm, seeds in runs.items():
        extra = overhead[arm].flops if arm in overhead else 0.0
        curves = [(x + extra, loss) for x, loss in _curves(seeds, axis, "flops")]
        if not curves:
            continue
        flops, mean, low, high = _mean_band(curves)
        style = "-" if arm in ("clm", "clm-mix") else "--"
        width = 2.2 if arm in ("clm", "clm-mix") else 1.2
        (line,) = ax.plot(
            flops, mean, style, lw=width, marker="o", ms=2.5, label=f"{arm} ({_seeds(len(curves))})"
        )
        colours[arm] = line.get_color()
        if len(curves) > 1:
            ax.fill_between(flops, low, high, color=line.get_color(), alpha=0.15, lw=0)
    for arm, ladder in (points or {}).items():
        if len(ladder) > 1:
            ax.errorbar(
                [p.flops.mean for p in ladder],
                [p.loss.mean for p in ladder],
                yerr=[p.loss.std for p in ladder],
                fmt="s-",
                ms=5,
                capsize=3,
                color=colours.get(arm),
                label=f"{arm} annealed at budgets {', '.join(f'{p.budget:g}' for p in ladder)}",
            )
    ax.axhline(target, color="0.3", linestyle=":", lw=1, label=f"target {target:.4f}")
    ax.set_xlabel("one-off total FLOPs (overhead + training)")
    ax.set_ylabel(f"{axis} validation loss (nats/token)")
    ax.set_title("Compute frontier: lower-left is better; clm and clm-mix are the lines to beat")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
