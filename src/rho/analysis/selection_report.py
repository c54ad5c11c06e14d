"""`rho analyze selection`: which tokens SLM selects and how their loss behaves. Re-scores the
checkpoints of an SLM and a CLM run on the same windows; writes selection.json, selection.md and
the figures: selected vs unselected loss under SLM and CLM (Rho-1 Fig. 6a/c) and the perplexity
of the tokens selected at each SLM checkpoint under every checkpoint (Fig. 8). The statistics
themselves are :mod:`rho.analysis.selection`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rho.analysis import common, plots
from rho.analysis import selection as sel
from rho.errors import UserError
from rho.files import claim_output_dir, read_json, write_json_atomic, write_text_atomic
from rho.runs import OPTIONS_FILE, read_metrics, run_checkpoints, run_options
from rho.select import check_ratio
from rho.store import LossStore, TokenStore
from rho.windows import window_ids

SELECTION_KIND = "rho.AnalyzeSelection"  # output_kind of its --out (rho.files)


def run_selection(
    runs: list[Path],
    tokens_dir: str | Path | None,
    losses_dir: str | Path | None,
    out: Path,
    *,
    windows: int = 64,
    ratio: float | None = None,
    select_batch: int | None = None,
    select_with: str = "slm",
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
) -> dict:
    """Re-score both runs' checkpoints on the same windows, select as the SLM run did, write the
    files; returns the summary line, the paths, the data and the selection arrays."""
    slm_dir, clm_dir = runs
    options = run_options(slm_dir)  # rho.run_options.RunOptions
    selection = options.selection
    if selection.selection != "token":
        raise UserError(f"{slm_dir} is not an SLM run (its selection is {selection.selection!r})")
    ratio = selection.ratio if ratio is None else float(ratio)
    check_ratio(ratio, "--ratio")
    score, scope = selection.score, selection.scope
    tokens_dir = tokens_dir or (options.data and options.data.tokens)
    losses_dir = losses_dir or (options.data and options.data.ref_losses)
    if not tokens_dir or not losses_dir:
        raise UserError(
            f"give --tokens and --losses: {slm_dir}/{OPTIONS_FILE} names no offline reference "
            "LossStore to default to"
        )
    tokens = TokenStore(tokens_dir)
    ref_store = LossStore(losses_dir)
    seq_len = options.seq_len or ref_store.seq_len
    ref_store.check_matches(tokens, seq_len)
    claim_output_dir(out, SELECTION_KIND, [*runs, tokens_dir, losses_dir])  # never a user's

    slm_ckpts, clm_ckpts = run_checkpoints(slm_dir), run_checkpoints(clm_dir)
    if select_batch is None:
        state = slm_ckpts[-1][1] / "trainer_state.json"
        select_batch = int(read_json(state).get("train_batch_size", 8)) if state.exists() else 8
    common.check_positive("--select-batch", select_batch)
    device = common.device_from(device)
    indices = common.full_window_indices(tokens.n_tokens, seq_len, windows)
    ids = window_ids(tokens.tokens, seq_len, indices)
    ref = np.stack([ref_store.window(int(i)) for i in indices])
    t0 = time.perf_counter()
    slm_loss = common.losses_per_checkpoint(
        [p for _, p in slm_ckpts], ids, tokens.vocab_size, batch_size, dtype, device
    )
    clm_loss = common.losses_per_checkpoint(
        [p for _, p in clm_ckpts], ids, tokens.vocab_size, batch_size, dtype, device
    )
    seconds = time.perf_counter() - t0
    valid = sel.valid_positions(ref, *slm_loss, *clm_loss)

    def choose(learner: np.ndarray) -> np.ndarray:
        return sel.select(sel.scores_for(score, learner, ref), valid, ratio, scope, select_batch)

    slm_steps, clm_steps = [s for s, _ in slm_ckpts], [s for s, _ in clm_ckpts]
    slm_selected = np.stack([choose(loss) for loss in slm_loss])
    paired = sel.pair_by_step(clm_steps, slm_steps)
    fig6 = {"SLM": [], "CLM": []}
    for i, step in enumerate(slm_steps):
        row = sel.split_loss(slm_loss[i], slm_selected[i], valid)
        fig6["SLM"].append({"step": step, "checkpoint": str(slm_ckpts[i][1]), **row})
    for j, step in enumerate(clm_steps):
        mask = slm_selected[paired[j]] if select_with == "slm" else choose(clm_loss[j])
        row = sel.split_loss(clm_loss[j], mask, valid)
        entry = {"step": step, "checkpoint": str(clm_ckpts[j][1]), **row}
        if select_with == "slm":
            entry["selected_by_slm_step"] = slm_steps[paired[j]]
        fig6["CLM"].append(entry)

    log = read_metrics(slm_dir)
    log_sel, log_unsel = (
        sel.metric_series(log, "loss_selected"),
        sel.metric_series(log, "loss_unselected"),
    )
    series = {
        "SLM (re-scored)": {
            "selected": (slm_steps, [r["loss_selected"] for r in fig6["SLM"]]),
            "unselected": (slm_steps, [r["loss_unselected"] for r in fig6["SLM"]]),
        },
        "CLM (re-scored)": {
            "selected": (clm_steps, [r["loss_selected"] for r in fig6["CLM"]]),
            "unselected": (clm_steps, [r["loss_unselected"] for r in fig6["CLM"]]),
        },
        "SLM training log (its own batches)": {"selected": log_sel, "unselected": log_unsel},
    }
    perplexity = sel.perplexity_matrix(slm_loss, slm_selected)
    overlap = sel.overlap_matrix(slm_selected)
    clm_perplexity = sel.perplexity_matrix(clm_loss, slm_selected)
    labels = [str(s) for s in slm_steps]

    how = (
        "CLM measured on the tokens the SLM checkpoint nearest in step selects"
        if select_with == "slm"
        else "CLM measured on the tokens SLM's rule selects with the CLM model as learner"
    )
    data = {
        "runs": {"slm": str(slm_dir), "clm": str(clm_dir)},
        "tokens": str(tokens.path),
        "ref_losses": str(ref_store.path),
        "seq_len": seq_len,
        "windows": indices,
        "n_valid_tokens": int(valid.sum()),
        "ratio": ratio,
        "score": score,
        "scope": scope,
        "select_batch": select_batch if scope == "batch" else 1,
        "select_with": select_with,
        "select_with_meaning": how,
        "fig6": fig6,
        "slm_training_log": {
            "step": log_sel[0],
            "loss_selected": log_sel[1],
            "unselected_step": log_unsel[0],
            "loss_unselected": log_unsel[1],
        },
        "fig8": {
            "meaning": "perplexity[s][e]: exp(mean loss) of the tokens selected at SLM "
            "checkpoint s (rows), evaluated with SLM checkpoint e's model (columns)",
            "steps": slm_steps,
            "perplexity": perplexity,
            "overlap_jaccard": overlap,
            "clm_steps": clm_steps,
            "perplexity_under_clm": clm_perplexity,
        },
    }
    files = [write_json_atomic(out / "selection.json", data, sort_keys=False)]
    files.append(plots.selected_vs_unselected(series, ratio, out / "fig6_selected_unselected.png"))
    files.append(plots.selection_heatmap(perplexity, labels, out / "fig8_perplexity_matrix.png"))
    files.append(
        plots.selection_lines(perplexity, slm_steps, labels, out / "fig8_perplexity_lines.png")
    )
    md = [
        "# Selected vs unselected tokens",
        "",
        f"SLM run `{slm_dir}` (ratio {ratio:g}, score {score}, scope {scope}), CLM run "
        f"`{clm_dir}`; {len(indices)} windows of {seq_len} tokens from `{tokens.path}` "
        f"({int(valid.sum()):,} scored tokens). {how}.",
        "",
        "## Loss of the tokens SLM selects and drops (Fig. 6a/c)",
        "",
        "| run | step | selected | unselected | all |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in ("SLM", "CLM"):
        for r in fig6[run]:
            md.append(
                f"| {run} | {r['step']} | {r['loss_selected']:.3f} | {r['loss_unselected']:.3f} "
                f"| {r['loss_all']:.3f} |"
            )
    md += [
        "",
        "![selected vs unselected](fig6_selected_unselected.png)",
        "",
        "## Perplexity of the tokens selected at each SLM checkpoint (Fig. 8)",
        "",
        "Rows: the checkpoint that selects; columns: the checkpoint that evaluates.",
        "",
        "| selected at \\ evaluated at | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for label, row in zip(labels, perplexity, strict=True):
        md.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    md += [
        "",
        "![perplexity matrix](fig8_perplexity_matrix.png)",
        "![perplexity lines](fig8_perplexity_lines.png)",
        "",
    ]
    files.insert(1, write_text_atomic(out / "selection.md", "\n".join(md)))
    last_slm, last_clm = fig6["SLM"][-1], fig6["CLM"][-1]
    summary = (
        f"scored {len(slm_ckpts)} SLM + {len(clm_ckpts)} CLM checkpoints on {len(indices)} "
        f"windows in {seconds:.1f}s; at the last step selected/unselected loss is "
        f"SLM {last_slm['loss_selected']:.3f}/{last_slm['loss_unselected']:.3f}, "
        f"CLM {last_clm['loss_selected']:.3f}/{last_clm['loss_unselected']:.3f}"
    )
    arrays = {"slm_selected": slm_selected, "valid": valid}  # for callers (the demo's rates)
    return {"summary": summary, "files": files, "data": data, "arrays": arrays}
