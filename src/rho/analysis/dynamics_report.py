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
from rho.files import claim_output_dir, save_npy_atomic, write_json_atomic, write_text_atomic
from rho.runs import checkpoint_step
from rho.score import score_store

DYNAMICS_KIND = "rho.AnalyzeDynamics"  # output_kind of its --out (rho.files)


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
    rows = []
    for i, checkpoint in enumerate(checkpoints):
        store = score_store(
            str(checkpoint),
            tokens,
            out / "losses" / f"ckpt_{i:02d}",
            seq_len,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            overwrite=overwrite,
            progress=progress,
        )
        rows.append(np.asarray(store.ref_loss, dtype=np.float32))
    losses = np.stack(rows)
    del rows

    traj = dyn.classify(losses, threshold)
    table = dyn.category_table(traj.categories)
    curves = dyn.category_curves(losses, traj.categories)
    spread = dyn.loss_spread(losses, spread_kind)
    moves = dyn.fluctuation(losses)
    steps = [checkpoint_step(c) for c in checkpoints]
    if all(s is not None for s in steps) and len(set(steps)) == len(steps):
        x, xlabel, labels = steps, "training step of the checkpoint", [str(s) for s in steps]
    else:
        x, xlabel = list(range(len(checkpoints))), "checkpoint (in the order given)"
        labels = [c.name for c in checkpoints]

    # Figures 3b/c: the most fluctuating L→L and H→H tokens, with their text in context.
    tokenizer = tokens.tokenizer()
    chosen = []
    panels = []
    for code in (dyn.L_TO_L, dyn.H_TO_H):
        name = dyn.CATEGORIES[code]
        lines = []
        picks = dyn.most_fluctuating(
            moves, traj.categories, code, examples, min_gap=32, keys=tokens.tokens
        )
        for index in picks:
            window_start = index - index % seq_len
            lo, hi = max(window_start, index - 12), min(tokens.n_tokens, index + 5)
            pieces, _ = decode_pieces(tokenizer, tokens.tokens[lo:hi])
            # A character cut at the context's left edge decodes as U+FFFD: drop it.
            before = "".join(pieces[: index - lo]).lstrip("\ufffd")
            token, after = pieces[index - lo], "".join(pieces[index - lo + 1 :])
            context = f"{before}⟦{token}⟧{after}"
            short = common.token_label(before, token, after)
            chosen.append(
                {
                    "position": int(index),
                    "category": name,
                    "token": token,
                    "context": context,
                    "losses": losses[:, index],
                    "mean_step_change": float(moves[index]),
                    "spread": float(spread[index]),
                }
            )
            lines.append((short, losses[:, index]))
        panels.append((name, lines))

    files = []
    files.append(out / "categories.npy")
    save_npy_atomic(files[-1], traj.categories)
    markdown_table = dyn.table_markdown(table)
    data = {
        "checkpoints": [str(c) for c in checkpoints],
        "steps": steps,
        "seq_len": seq_len,
        "tokens": str(tokens.path),
        "n_tokens": tokens.n_tokens,
        "threshold": threshold,
        "mean": traj.mean,
        "rule": (
            "fit a least-squares line to each token's loss against x = checkpoint index "
            "normalised to [0, 1]; change = slope x span. change < -threshold: H→L; change > "
            "+threshold: L→H (exactly ±threshold is no change); otherwise L→L if the last loss "
            "<= mean, else H→H, where mean = mean loss over all scored tokens at the last "
            "checkpoint. Unscored tokens (window starts) are category -1."
        ),
        "categories": dyn.CATEGORIES,
        "table": table,
        "category_mean_loss": {name: curves[code] for code, name in enumerate(dyn.CATEGORIES)},
        "all_tokens_mean_loss": np.nanmean(losses[:, traj.categories >= 0], axis=1)
        if table["scored"]
        else [],
        "spread": {"kind": spread_kind, **dyn.spread_summary(spread, traj.categories)},
        "fluctuating_examples": chosen,
    }
    files.append(write_json_atomic(out / "dynamics.json", data, sort_keys=False))
    md = [
        "# Token-loss dynamics",
        "",
        f"{len(checkpoints)} checkpoints ({', '.join(labels)}), {table['scored']:,} scored tokens "
        f"of `{tokens.path}` (seq_len {seq_len}). Threshold ±{threshold:g} on the fitted change; "
        f"L→L/H→H split at the mean loss at the last checkpoint, {traj.mean:.3f} nats.",
        "",
        markdown_table,
        "",
        "Paper: TinyLlama-1B (and 7B) continually pretrained on OpenWebMath, ~320k validation "
        "tokens, checkpoints every 1B tokens.",
        "",
        f"Loss spread ({spread_kind}) across checkpoints: median "
        f"{data['spread']['all']['median']:.3f}, p90 {data['spread']['all']['p90']:.3f} nats.",
        "",
        "## Strongly fluctuating tokens",
        "",
        "| category | position | token in context | losses across checkpoints |",
        "|---|---:|---|---|",
    ]
    for c in chosen:
        context = common.show(c["context"]).replace("|", "\\|").replace("`", "'")
        trail = " → ".join(f"{v:.2f}" for v in c["losses"])
        md.append(f"| {c['category']} | {c['position']} | `{context}` | {trail} |")
    md += [
        "",
        "![mean loss per category](fig3a_categories.png)",
        "![fluctuating tokens](fig3bc_fluctuating.png)",
        "![loss spread](loss_spread.png)",
    ]
    files.append(write_text_atomic(out / "dynamics.md", "\n".join(md) + "\n"))
    files.append(
        plots.category_curves(x, xlabel, curves, table, out / "fig3a_categories.png", labels)
    )
    files.append(
        plots.fluctuating_tokens(
            x, xlabel, panels, traj.mean, out / "fig3bc_fluctuating.png", labels
        )
    )
    by_category = {
        name: spread[traj.categories == code] for code, name in enumerate(dyn.CATEGORIES)
    }
    files.append(plots.spread_histogram(by_category, spread_kind, out / "loss_spread.png"))
    return {"table": table, "mean": traj.mean, "markdown_table": markdown_table, "files": files}
