"""`rho analyze selection`: which tokens SLM selects and how their loss behaves. Re-scores the
checkpoints of an SLM and a CLM run on the same windows; writes selection.json, selection.md and
the figures: selected vs unselected loss under SLM and CLM (Rho-1 Fig. 6a/c) and the perplexity
of the tokens selected at each SLM checkpoint under every checkpoint (Fig. 8). The statistics
themselves are :mod:`rho.analysis.selection`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rho.analysis import common, plots
from rho.analysis import selection as sel
from rho.errors import UserError
from rho.io.files import claim_output_dir, read_json, write_json_atomic, write_text_atomic
from rho.io.store import LossStore, TokenStore
from rho.scoring.windows import window_ids
from rho.selection.select import check_ratio
from rho.training.runs import OPTIONS_FILE, read_metrics, run_checkpoints, run_options

SELECTION_KIND = "rho.AnalyzeSelection"  # output_kind of its --out (rho.io.files)


@dataclass(frozen=True)
class _SlmOptions:
    """What the SLM run's rho_options.json says about its selection and its inputs."""

    ratio: float
    score: str
    scope: str
    tokens: str | None
    ref_losses: str | None
    seq_len: int | None


def _slm_options(slm_dir: Path, ratio: float | None) -> _SlmOptions:
    """The SLM run's selection (``ratio`` given overrides its ratio) and the stores it trained on;
    refuses a run that is not SLM."""
    options = run_options(slm_dir)  # rho.training.run_options.RunOptions
    selection = options.selection
    if selection.selection != "token":
        raise UserError(f"{slm_dir} is not an SLM run (its selection is {selection.selection!r})")
    ratio = selection.ratio if ratio is None else float(ratio)
    check_ratio(ratio, "--ratio")
    data = options.data
    return _SlmOptions(
        ratio,
        selection.score,
        selection.scope,
        data.tokens if data else None,
        data.ref_losses if data else None,
        options.seq_len,
    )


def _open_inputs(runs: list[Path], out: Path, slm: _SlmOptions, tokens_dir, losses_dir):
    """The TokenStore, the reference LossStore (default: those the SLM run trained on) and the
    window length, checked against each other; claims ``out``."""
    tokens_dir = tokens_dir or slm.tokens
    losses_dir = losses_dir or slm.ref_losses
    if not tokens_dir or not losses_dir:
        raise UserError(
            f"give --tokens and --losses: {runs[0]}/{OPTIONS_FILE} names no offline reference "
            "LossStore to default to"
        )
    tokens = TokenStore(tokens_dir)
    ref_store = LossStore(losses_dir)
    seq_len = int(slm.seq_len or ref_store.seq_len)
    ref_store.check_matches(tokens, seq_len)
    claim_output_dir(out, SELECTION_KIND, [*runs, tokens_dir, losses_dir])  # never a user's
    return tokens, ref_store, seq_len


def _batch_of(slm_ckpts: list, select_batch: int | None) -> int:
    """The windows ranked together: ``select_batch``, else the SLM run's train batch size."""
    if select_batch is None:
        state = slm_ckpts[-1][1] / "trainer_state.json"
        select_batch = int(read_json(state).get("train_batch_size", 8)) if state.exists() else 8
    common.check_positive("--select-batch", select_batch)
    return select_batch


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
    slm = _slm_options(slm_dir, ratio)
    tokens, ref_store, seq_len = _open_inputs(runs, out, slm, tokens_dir, losses_dir)
    slm_ckpts, clm_ckpts = run_checkpoints(slm_dir), run_checkpoints(clm_dir)
    select_batch = _batch_of(slm_ckpts, select_batch)
    device = common.device_from(device)
    indices = common.full_window_indices(tokens.n_tokens, seq_len, windows)
    ids = window_ids(tokens.tokens, seq_len, indices)
    ref = np.stack([ref_store.window(int(i)) for i in indices])
    t0 = time.perf_counter()
    scoring = (ids, tokens.vocab_size, batch_size, dtype, device)
    slm_loss = common.losses_per_checkpoint([p for _, p in slm_ckpts], *scoring)
    clm_loss = common.losses_per_checkpoint([p for _, p in clm_ckpts], *scoring)
    seconds = time.perf_counter() - t0
    valid = sel.valid_positions(ref, *slm_loss, *clm_loss)

    def choose(learner: np.ndarray) -> np.ndarray:
        scores = sel.scores_for(slm.score, learner, ref)
        return sel.select(scores, valid, slm.ratio, slm.scope, select_batch)

    slm_selected = np.stack([choose(loss) for loss in slm_loss])
    rescore = None if select_with == "slm" else choose
    fig6 = _fig6_rows(slm_ckpts, clm_ckpts, slm_loss, clm_loss, slm_selected, valid, rescore)
    data = {
        "runs": {"slm": str(slm_dir), "clm": str(clm_dir)},
        "tokens": str(tokens.path),
        "ref_losses": str(ref_store.path),
        "seq_len": seq_len,
        "windows": indices,
        "n_valid_tokens": int(valid.sum()),
        "ratio": slm.ratio,
        "score": slm.score,
        "scope": slm.scope,
        "select_batch": select_batch if slm.scope == "batch" else 1,
        "select_with": select_with,
        "select_with_meaning": _how_clm_is_measured(select_with),
        "fig6": fig6,
        "slm_training_log": _training_log(slm_dir),
        "fig8": _fig8(slm_loss, clm_loss, slm_selected, fig6),
    }
    files = _write_files(out, data)
    arrays = {"slm_selected": slm_selected, "valid": valid}  # for callers (the demo's rates)
    return {"summary": _summary_line(data, seconds), "files": files, "data": data, "arrays": arrays}


def _how_clm_is_measured(select_with: str) -> str:
    """What the CLM rows of Fig. 6 measure (`--select-with`)."""
    if select_with == "slm":
        return "CLM measured on the tokens the SLM checkpoint nearest in step selects"
    return "CLM measured on the tokens SLM's rule selects with the CLM model as learner"


def _fig6_rows(slm_ckpts, clm_ckpts, slm_loss, clm_loss, slm_selected, valid, choose) -> dict:
    """Selected and unselected loss at each checkpoint of both runs (Fig. 6a/c). A CLM
    checkpoint is measured on the tokens of the SLM checkpoint nearest in step, or, given
    ``choose``, on those SLM's rule selects with the CLM model as learner."""
    slm_steps, clm_steps = [s for s, _ in slm_ckpts], [s for s, _ in clm_ckpts]
    paired = sel.pair_by_step(clm_steps, slm_steps)
    fig6 = {"SLM": [], "CLM": []}
    for i, (step, path) in enumerate(slm_ckpts):
        row = sel.split_loss(slm_loss[i], slm_selected[i], valid)
        fig6["SLM"].append({"step": step, "checkpoint": str(path), **row})
    for j, (step, path) in enumerate(clm_ckpts):
        mask = slm_selected[paired[j]] if choose is None else choose(clm_loss[j])
        entry = {"step": step, "checkpoint": str(path), **sel.split_loss(clm_loss[j], mask, valid)}
        if choose is None:
            entry["selected_by_slm_step"] = slm_steps[paired[j]]
        fig6["CLM"].append(entry)
    return fig6


def _training_log(slm_dir: Path) -> dict:
    """The selected and unselected loss the SLM run logged on its own batches."""
    log = read_metrics(slm_dir)
    log_sel = sel.metric_series(log, "loss_selected")
    log_unsel = sel.metric_series(log, "loss_unselected")
    return {
        "step": log_sel[0],
        "loss_selected": log_sel[1],
        "unselected_step": log_unsel[0],
        "loss_unselected": log_unsel[1],
    }


def _fig8(slm_loss, clm_loss, slm_selected, fig6: dict) -> dict:
    """The perplexity of the tokens selected at each SLM checkpoint under every checkpoint."""
    return {
        "meaning": "perplexity[s][e]: exp(mean loss) of the tokens selected at SLM "
        "checkpoint s (rows), evaluated with SLM checkpoint e's model (columns)",
        "steps": [r["step"] for r in fig6["SLM"]],
        "perplexity": sel.perplexity_matrix(slm_loss, slm_selected),
        "overlap_jaccard": sel.overlap_matrix(slm_selected),
        "clm_steps": [r["step"] for r in fig6["CLM"]],
        "perplexity_under_clm": sel.perplexity_matrix(clm_loss, slm_selected),
    }


def _write_files(out: Path, data: dict) -> list[Path]:
    """selection.json, selection.md and the figures; returns their paths."""
    fig6, matrix, log = data["fig6"], data["fig8"], data["slm_training_log"]
    steps, labels = matrix["steps"], [str(s) for s in matrix["steps"]]
    series = {
        f"{run} (re-scored)": {
            kind: ([r["step"] for r in fig6[run]], [r[f"loss_{kind}"] for r in fig6[run]])
            for kind in ("selected", "unselected")
        }
        for run in ("SLM", "CLM")
    }
    series["SLM training log (its own batches)"] = {
        "selected": (log["step"], log["loss_selected"]),
        "unselected": (log["unselected_step"], log["loss_unselected"]),
    }
    perplexity = matrix["perplexity"]
    return [
        write_json_atomic(out / "selection.json", data, sort_keys=False),
        write_text_atomic(out / "selection.md", _markdown(data)),
        plots.selected_vs_unselected(series, data["ratio"], out / "fig6_selected_unselected.png"),
        plots.selection_heatmap(perplexity, labels, out / "fig8_perplexity_matrix.png"),
        plots.selection_lines(perplexity, steps, labels, out / "fig8_perplexity_lines.png"),
    ]


def _markdown(data: dict) -> str:
    """selection.md: the Fig. 6 table and the Fig. 8 matrix."""
    labels = [str(s) for s in data["fig8"]["steps"]]
    md = [
        "# Selected vs unselected tokens",
        "",
        f"SLM run `{data['runs']['slm']}` (ratio {data['ratio']:g}, score {data['score']}, "
        f"scope {data['scope']}), CLM run `{data['runs']['clm']}`; {len(data['windows'])} "
        f"windows of {data['seq_len']} tokens from `{data['tokens']}` "
        f"({data['n_valid_tokens']:,} scored tokens). {data['select_with_meaning']}.",
        "",
        "## Loss of the tokens SLM selects and drops (Fig. 6a/c)",
        "",
        "| run | step | selected | unselected | all |",
        "|---|---:|---:|---:|---:|",
    ]
    md += [
        f"| {run} | {r['step']} | {r['loss_selected']:.3f} | {r['loss_unselected']:.3f} "
        f"| {r['loss_all']:.3f} |"
        for run in ("SLM", "CLM")
        for r in data["fig6"][run]
    ]
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
    for label, row in zip(labels, data["fig8"]["perplexity"], strict=True):
        md.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    md += [
        "",
        "![perplexity matrix](fig8_perplexity_matrix.png)",
        "![perplexity lines](fig8_perplexity_lines.png)",
        "",
    ]
    return "\n".join(md)


def _summary_line(data: dict, seconds: float) -> str:
    """The line the command prints."""
    slm, clm = data["fig6"]["SLM"], data["fig6"]["CLM"]
    return (
        f"scored {len(slm)} SLM + {len(clm)} CLM checkpoints on {len(data['windows'])} "
        f"windows in {seconds:.1f}s; at the last step selected/unselected loss is "
        f"SLM {slm[-1]['loss_selected']:.3f}/{slm[-1]['loss_unselected']:.3f}, "
        f"CLM {clm[-1]['loss_selected']:.3f}/{clm[-1]['loss_unselected']:.3f}"
    )
