"""`rho analyze dynamics`: score a validation TokenStore with each checkpoint, classify every
token's loss trajectory (H→L, L→L, H→H, L→H; Rho-1 Fig. 3) and write dynamics.json,
dynamics.md, categories.npy and the figures. The classification itself is
:mod:`rho.analysis.dynamics`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rho.analysis import common, plots
from rho.analysis import dynamics as dyn
from rho.analysis.html import decode_pieces
from rho.io.files import claim_output_dir, save_npy_atomic, write_json_atomic, write_text_atomic
from rho.scoring.score import score_store
from rho.training.runs import checkpoint_step

DYNAMICS_KIND = "rho.AnalyzeDynamics"  # output_kind of its --out (rho.io.files)
RULE = (
    "fit a least-squares line to each token's loss against x = checkpoint index "
    "normalised to [0, 1]; change = slope x span. change < -threshold: H→L; change > "
    "+threshold: L→H (exactly ±threshold is no change); otherwise L→L if the last loss "
    "<= mean, else H→H, where mean = mean loss over all scored tokens at the last "
    "checkpoint. Unscored tokens (window starts) are category -1."
)


def run_dynamics(
    checkpoints: list[Path],
    tokens,
    out: Path,
    *,
    seq_len: int = 256,
    threshold: float = 0.2,
    spread_kind: str = "std",
    examples: int = 4,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Score, classify, write the files; returns the numbers and the paths. ``out`` must be new
    or an earlier dynamics output (its loss stores are reused; ``overwrite`` re-scores them)."""
    claim_output_dir(out, DYNAMICS_KIND, [tokens.path, *checkpoints])  # never a user's directory
    scoring = {"batch_size": batch_size, "dtype": dtype, "device": device}
    losses = _losses(checkpoints, tokens, out, seq_len, overwrite, progress, scoring)
    traj = dyn.classify(losses, threshold)
    table = dyn.category_table(traj.categories)
    curves = dyn.category_curves(losses, traj.categories)
    spread = dyn.loss_spread(losses, spread_kind)
    moves = dyn.fluctuation(losses)
    chosen, panels = _fluctuating(tokens, losses, moves, spread, traj.categories, examples, seq_len)
    save_npy_atomic(out / "categories.npy", traj.categories)
    data = {
        "checkpoints": [str(c) for c in checkpoints],
        "steps": [checkpoint_step(c) for c in checkpoints],
        "seq_len": seq_len,
        "tokens": str(tokens.path),
        "n_tokens": tokens.n_tokens,
        "threshold": threshold,
        "mean": traj.mean,
        "rule": RULE,
        "categories": dyn.CATEGORIES,
        "table": table,
        "category_mean_loss": {name: curves[code] for code, name in enumerate(dyn.CATEGORIES)},
        "all_tokens_mean_loss": _mean_loss(losses, traj.categories),
        "spread": {"kind": spread_kind, **dyn.spread_summary(spread, traj.categories)},
        "fluctuating_examples": chosen,
    }
    x, xlabel, labels = _x_axis(checkpoints, data["steps"])
    markdown_table = dyn.table_markdown(table)
    by_category = {
        name: spread[traj.categories == code] for code, name in enumerate(dyn.CATEGORIES)
    }
    files = [
        out / "categories.npy",
        write_json_atomic(out / "dynamics.json", data, sort_keys=False),
        write_text_atomic(out / "dynamics.md", _markdown(data, labels, markdown_table)),
        plots.category_curves(x, xlabel, curves, table, out / "fig3a_categories.png", labels),
        plots.fluctuating_tokens(
            x, xlabel, panels, traj.mean, out / "fig3bc_fluctuating.png", labels
        ),
        plots.spread_histogram(by_category, spread_kind, out / "loss_spread.png"),
    ]
    return {"table": table, "mean": traj.mean, "markdown_table": markdown_table, "files": files}


def _losses(checkpoints, tokens, out: Path, seq_len: int, overwrite, progress, scoring: dict):
    """(checkpoints, tokens): each checkpoint's loss on every token, from its LossStore under
    ``out``/losses (reused when complete)."""
    rows = []
    for i, checkpoint in enumerate(checkpoints):
        store = score_store(
            str(checkpoint),
            tokens,
            out / "losses" / f"ckpt_{i:02d}",
            seq_len,
            overwrite=overwrite,
            progress=progress,
            **scoring,
        )
        rows.append(np.asarray(store.ref_loss, dtype=np.float32))
    return np.stack(rows)


def _mean_loss(losses: np.ndarray, categories: np.ndarray):
    """The mean loss of all scored tokens at each checkpoint ([] when none is scored)."""
    scored = losses[:, categories >= 0]
    return np.nanmean(scored, axis=1) if scored.size else []


def _x_axis(checkpoints: list[Path], steps: list) -> tuple[list, str, list[str]]:
    """The figures' x values, axis label and tick labels: the training steps when every
    checkpoint has a distinct one, else the order given."""
    if all(s is not None for s in steps) and len(set(steps)) == len(steps):
        return steps, "training step of the checkpoint", [str(s) for s in steps]
    x = list(range(len(checkpoints)))
    return x, "checkpoint (in the order given)", [c.name for c in checkpoints]


def _fluctuating(tokens, losses, moves, spread, categories, examples: int, seq_len: int):
    """Figures 3b/c: the most fluctuating L→L and H→H tokens, with their text in context; returns
    the examples' records and the figure's panels."""
    tokenizer = tokens.tokenizer()
    chosen, panels = [], []
    for code in (dyn.L_TO_L, dyn.H_TO_H):
        name = dyn.CATEGORIES[code]
        lines = []
        picks = dyn.most_fluctuating(
            moves, categories, code, examples, min_gap=32, keys=tokens.tokens
        )
        for index in picks:
            before, token, after = _in_context(tokenizer, tokens, int(index), seq_len)
            chosen.append(
                {
                    "position": int(index),
                    "category": name,
                    "token": token,
                    "context": f"{before}⟦{token}⟧{after}",
                    "losses": losses[:, index],
                    "mean_step_change": float(moves[index]),
                    "spread": float(spread[index]),
                }
            )
            lines.append((common.token_label(before, token, after), losses[:, index]))
        panels.append((name, lines))
    return chosen, panels


def _in_context(tokenizer, tokens, index: int, seq_len: int) -> tuple[str, str, str]:
    """The text before the token at ``index`` (up to 12 tokens, within its window), the token,
    and up to 4 tokens after it."""
    window_start = index - index % seq_len
    lo, hi = max(window_start, index - 12), min(tokens.n_tokens, index + 5)
    pieces, _ = decode_pieces(tokenizer, tokens.tokens[lo:hi])
    # A character cut at the context's left edge decodes as U+FFFD: drop it.
    before = "".join(pieces[: index - lo]).lstrip("\ufffd")
    return before, pieces[index - lo], "".join(pieces[index - lo + 1 :])


def _markdown(data: dict, labels: list[str], markdown_table: str) -> str:
    """dynamics.md: the category table, the spread and the fluctuating tokens."""
    spread = data["spread"]["all"]
    md = [
        "# Token-loss dynamics",
        "",
        f"{len(data['checkpoints'])} checkpoints ({', '.join(labels)}), "
        f"{data['table']['scored']:,} scored tokens of `{data['tokens']}` (seq_len "
        f"{data['seq_len']}). Threshold ±{data['threshold']:g} on the fitted change; L→L/H→H "
        f"split at the mean loss at the last checkpoint, {data['mean']:.3f} nats.",
        "",
        markdown_table,
        "",
        "Paper: TinyLlama-1B (and 7B) continually pretrained on OpenWebMath, ~320k validation "
        "tokens, checkpoints every 1B tokens.",
        "",
        f"Loss spread ({data['spread']['kind']}) across checkpoints: median "
        f"{spread['median']:.3f}, p90 {spread['p90']:.3f} nats.",
        "",
        "## Strongly fluctuating tokens",
        "",
        "| category | position | token in context | losses across checkpoints |",
        "|---|---:|---|---|",
    ]
    for c in data["fluctuating_examples"]:
        context = common.show(c["context"]).replace("|", "\\|").replace("`", "'")
        trail = " → ".join(f"{v:.2f}" for v in c["losses"])
        md.append(f"| {c['category']} | {c['position']} | `{context}` | {trail} |")
    md += [
        "",
        "![mean loss per category](fig3a_categories.png)",
        "![fluctuating tokens](fig3bc_fluctuating.png)",
        "![loss spread](loss_spread.png)",
    ]
    return "\n".join(md) + "\n"
