"""`rho analyze dynamics | selection | sweep | html`: load, call the pure analyses, draw, report.

Each command writes JSON (for machines), Markdown (for people) and PNG plots (or one HTML page)
under ``--out`` and ends by printing where they are and a short summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from rho.errors import UserError

COMMANDS = {
    "dynamics": "token-loss trajectories across checkpoints: H→L, L→L, H→H, L→H (Fig. 3)",
    "selection": "selected vs unselected loss under SLM and CLM; selection across checkpoints "
    "(Figs. 6, 8)",
    "sweep": "short SLM trainings at several ratios; held-out loss against ratio (Fig. 9)",
    "html": "an HTML page of passages with would-be-selected tokens highlighted (Fig. 13)",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rho analyze <command> [options]   (rho analyze <command> --help)", ""]
    lines += [f"  {name:<{width}}  {help_}" for name, help_ in COMMANDS.items()]
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    commands = {"dynamics": dynamics_cli, "selection": selection_cli, "sweep": sweep_cli}
    commands["html"] = html_cli
    if name not in commands:
        raise UserError(f"unknown analysis {name!r}; choose one of {', '.join(COMMANDS)}")
    return commands[name](rest)


# --- Shared helpers --------------------------------------------------------------------------


def _jsonable(value):
    """NaN and inf become null (strict JSON); numpy scalars and arrays become Python values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text(path: Path, text: str) -> Path:
    """Write atomically (temporary file, then rename), readable like any file the user makes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_npy(path: Path, array: np.ndarray) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: Path, data: dict) -> Path:
    """Strict JSON (NaN as null), keys in the order given, non-ASCII kept (H→L)."""
    text = json.dumps(_jsonable(data), indent=2, ensure_ascii=False, allow_nan=False)
    return write_text(path, text + "\n")


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def read_metrics(run_dir: Path) -> list[dict]:
    """The training log (metrics.jsonl) of a run; unreadable lines are skipped."""
    file = Path(run_dir) / "metrics.jsonl"
    records = []
    if file.exists():
        for line in file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of a run's checkpoint-N directories in step order, plus the final model in the
    run directory itself when it is newer than the last checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    found = sorted(
        (checkpoint_step(p), p)
        for p in run_dir.iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and (p / "config.json").exists()
    )
    if (run_dir / "config.json").exists():
        steps = [int(r["step"]) for r in read_metrics(run_dir) if "step" in r]
        final = max(steps) if steps else (found[-1][0] + 1 if found else 0)
        if not found or final > found[-1][0]:
            found.append((final, run_dir))
    if not found:
        raise UserError(f"{run_dir} holds no model: no checkpoint-N/ and no config.json")
    return found


def run_options(run_dir: Path) -> dict:
    """rho_options.json of a run (the run directory's, else its newest checkpoint's)."""
    from rho.store import read_json

    candidates = [Path(run_dir) / "rho_options.json"]
    candidates += [p / "rho_options.json" for _, p in reversed(run_checkpoints(run_dir))]
    for file in candidates:
        if file.exists():
            return read_json(file)
    raise UserError(f"{run_dir} has no rho_options.json (not a `rho train` run?)")


def full_window_indices(n_tokens: int, seq_len: int, limit: int | None = None) -> np.ndarray:
    """Indices of full windows, evenly spread over the store when more than ``limit``."""
    full = n_tokens // seq_len
    if full == 0:
        raise UserError(
            f"the store holds {n_tokens} tokens, fewer than one window of {seq_len}: "
            "use a smaller --seq-len or a larger store"
        )
    if limit is None or limit >= full:
        return np.arange(full)
    return np.unique(np.linspace(0, full - 1, max(1, limit)).round().astype(np.int64))


def domains_at(tokens, positions: np.ndarray) -> list[str] | None:
    """The domain name of the document holding each token position (None: no domains)."""
    if tokens.doc_domains is None:
        return None
    docs = np.searchsorted(tokens.doc_offsets, np.asarray(positions), side="right") - 1
    names = tokens.domain_names
    return [names[int(code)] for code in np.asarray(tokens.doc_domains)[docs]]


def load_windows(tokens, seq_len: int, indices: np.ndarray) -> np.ndarray:
    return np.stack([tokens.window(int(i), seq_len) for i in indices])


def load_checked_model(path: Path, vocab_size: int, dtype: str, device):
    from rho.models import check_vocab, load_model

    if not Path(path).exists():
        raise UserError(f"model {path} does not exist")
    model = load_model(path, dtype)
    check_vocab(model, vocab_size, f"the model {path}")
    return model.to(device).eval()


def score_windows(model, ids: np.ndarray, batch_size: int, device) -> np.ndarray:
    """(W, L) token ids -> (W, L) float32 losses under the alignment rule (NaN at position 0)."""
    import torch

    from rho.score import window_losses

    out = np.empty(ids.shape, dtype=np.float32)
    for start in range(0, len(ids), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(ids[start : start + batch_size]))
        out[start : start + batch_size] = window_losses(model, batch.to(device)).float().cpu()
    return out


def losses_per_checkpoint(
    paths: list[Path], ids: np.ndarray, vocab_size: int, batch_size: int, dtype: str, device
) -> np.ndarray:
    """(C, W, L): every checkpoint's losses on the same windows."""
    result = []
    for path in paths:
        model = load_checked_model(path, vocab_size, dtype, device)
        result.append(score_windows(model, ids, batch_size, device))
        del model
        gc.collect()
    return np.stack(result)


def _device(name: str | None):
    import torch

    from rho.score import default_device

    return torch.device(name) if name else default_device()


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best)")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"{name} must be positive, got {value}")


def _show(text: str, collapse: bool = False) -> str:
    """Text made visible on one line: newline ⏎, tab ⇥; ``collapse`` squeezes runs of spaces
    and drops the replacement character of a partial UTF-8 sequence cut at the context's edge."""
    text = text.replace("\n", "⏎").replace("\t", "⇥")
    if collapse:
        text = re.sub(r" {2,}", " ", text.replace("\ufffd", ""))
    return text


def _token_label(before: str, token: str, after: str) -> str:
    """A plot label: the token (spaces as ␣) and a short context around it."""
    shown = _show(token).replace(" ", "␣") or "∅"
    context = _show(before, True)[-16:] + "⟦" + shown + "⟧" + _show(after, True)[:8]
    return f"{shown!s}   in  “{context.strip()}”"


def _print_files(files: list[Path]) -> None:
    for file in files:
        print(f"  {file}")


# --- rho analyze dynamics ------------------------------------------------------------------------


def dynamics_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho analyze dynamics",
        description="Score a validation TokenStore with each checkpoint and classify every "
        "token's loss trajectory (H→L, L→L, H→H, L→H) by the Rho-1 rule.",
    )
    parser.add_argument("--checkpoints", nargs="+", required=True, help="model dirs, in order")
    parser.add_argument("--tokens", required=True, help="validation TokenStore")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seq-len", type=int, default=256, help="window length in tokens")
    parser.add_argument(
        "--threshold", type=float, default=0.2, help="|change| over the span that counts as H→L/L→H"
    )
    parser.add_argument("--spread", default="std", choices=["std", "range"], help="spread measure")
    parser.add_argument("--examples", type=int, default=4, help="fluctuating tokens per category")
    parser.add_argument("--overwrite", action="store_true", help="re-score existing loss stores")
    _add_model_options(parser)
    args = parser.parse_args(argv)
    from rho.store import TokenStore

    if len(args.checkpoints) < 2:
        raise UserError("--checkpoints needs at least 2 models to follow losses across")
    if not args.threshold >= 0:
        raise UserError(f"--threshold must be >= 0, got {args.threshold}")
    _positive("--batch-size", args.batch_size)
    checkpoints = [Path(c) for c in args.checkpoints]
    for c in checkpoints:
        if not c.is_dir():
            raise UserError(f"checkpoint {c} is not a directory")
    tokens = TokenStore(args.tokens)
    result = run_dynamics(
        checkpoints,
        tokens,
        Path(args.out),
        seq_len=args.seq_len,
        threshold=args.threshold,
        spread_kind=args.spread,
        examples=args.examples,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"rho analyze dynamics: {len(checkpoints)} checkpoints x {tokens.n_tokens:,} tokens")
    print(result["markdown_table"])
    print(f"(L→L/H→H split at mean loss {result['mean']:.3f}; threshold ±{args.threshold})")
    print("files:")
    _print_files(result["files"])
    return 0


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
    """Score, classify, write the files; returns the numbers and the paths."""
    from rho.analysis import dynamics as dyn
    from rho.analysis import plots
    from rho.analysis.html import decode_pieces
    from rho.score import score_store

    out.mkdir(parents=True, exist_ok=True)
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
            short = _token_label(before, token, after)
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
    save_npy(files[-1], traj.categories)
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
    files.append(write_json(out / "dynamics.json", data))
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
        context = _show(c["context"]).replace("|", "\\|").replace("`", "'")
        trail = " → ".join(f"{v:.2f}" for v in c["losses"])
        md.append(f"| {c['category']} | {c['position']} | `{context}` | {trail} |")
    md += [
        "",
        "![mean loss per category](fig3a_categories.png)",
        "![fluctuating tokens](fig3bc_fluctuating.png)",
        "![loss spread](loss_spread.png)",
    ]
    files.append(write_text(out / "dynamics.md", "\n".join(md) + "\n"))
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


# --- rho analyze selection -----------------------------------------------------------------------


def selection_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho analyze selection",
        description="Loss of the tokens SLM selects vs drops under SLM and CLM training "
        "(Fig. 6a/c), and the perplexity of the tokens selected at each SLM checkpoint under "
        "every checkpoint (Fig. 8).",
    )
    parser.add_argument(
        "--runs",
        nargs=2,
        required=True,
        metavar=("SLM_DIR", "CLM_DIR"),
        help="two `rho train` runs",
    )
    parser.add_argument(
        "--tokens", default=None, help="TokenStore of the windows (default: the SLM run's data)"
    )
    parser.add_argument(
        "--losses", default=None, help="reference LossStore of --tokens (default: the SLM run's)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--windows", type=int, default=64, help="windows analysed (evenly spread)")
    parser.add_argument(
        "--ratio", type=float, default=None, help="kept fraction (default: the SLM run's)"
    )
    parser.add_argument(
        "--select-batch",
        type=int,
        default=None,
        help="windows ranked together under scope batch (default: the SLM run's train batch)",
    )
    parser.add_argument(
        "--select-with",
        default="slm",
        choices=["slm", "self"],
        help="slm: CLM is measured on the tokens the SLM checkpoint of the same step selects; "
        "self: on the tokens SLM's rule would select with the CLM model as learner",
    )
    _add_model_options(parser)
    args = parser.parse_args(argv)
    _positive("--windows", args.windows)
    _positive("--batch-size", args.batch_size)
    result = run_selection(
        [Path(r) for r in args.runs],
        args.tokens,
        args.losses,
        Path(args.out),
        windows=args.windows,
        ratio=args.ratio,
        select_batch=args.select_batch,
        select_with=args.select_with,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
    )
    print(f"rho analyze selection: {result['summary']}")
    print("files:")
    _print_files(result["files"])
    return 0


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
    from rho.analysis import plots
    from rho.analysis import selection as sel
    from rho.store import LossStore, TokenStore, read_json

    slm_dir, clm_dir = runs
    options = run_options(slm_dir)
    selection = options.get("selection", {})
    if selection.get("selection") != "token":
        raise UserError(
            f"{slm_dir} is not an SLM run (its selection is {selection.get('selection')!r})"
        )
    ratio = float(selection.get("ratio", 0.6) if ratio is None else ratio)
    if not 0 < ratio <= 1:
        raise UserError(f"--ratio must be in (0, 1], got {ratio}")
    score = selection.get("score", "excess")
    scope = selection.get("scope", "batch")
    trained_on = options.get("data") or {}
    tokens_dir = tokens_dir or trained_on.get("tokens")
    losses_dir = losses_dir or trained_on.get("ref_losses")
    if not tokens_dir or not losses_dir:
        raise UserError(
            f"give --tokens and --losses: {slm_dir}/rho_options.json names no offline reference "
            "LossStore to default to"
        )
    tokens = TokenStore(tokens_dir)
    ref_store = LossStore(losses_dir)
    seq_len = int(options.get("seq_len") or ref_store.seq_len)
    ref_store.check_matches(tokens, seq_len)

    slm_ckpts, clm_ckpts = run_checkpoints(slm_dir), run_checkpoints(clm_dir)
    if select_batch is None:
        state = slm_ckpts[-1][1] / "trainer_state.json"
        select_batch = int(read_json(state).get("train_batch_size", 8)) if state.exists() else 8
    _positive("--select-batch", select_batch)
    device = _device(device)
    indices = full_window_indices(tokens.n_tokens, seq_len, windows)
    ids = load_windows(tokens, seq_len, indices)
    ref = np.stack([ref_store.window(int(i)) for i in indices])
    t0 = time.perf_counter()
    slm_loss = losses_per_checkpoint(
        [p for _, p in slm_ckpts], ids, tokens.vocab_size, batch_size, dtype, device
    )
    clm_loss = losses_per_checkpoint(
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

    out.mkdir(parents=True, exist_ok=True)
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
    files = [write_json(out / "selection.json", data)]
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
    files.insert(1, write_text(out / "selection.md", "\n".join(md)))
    last_slm, last_clm = fig6["SLM"][-1], fig6["CLM"][-1]
    summary = (
        f"scored {len(slm_ckpts)} SLM + {len(clm_ckpts)} CLM checkpoints on {len(indices)} "
        f"windows in {seconds:.1f}s; at the last step selected/unselected loss is "
        f"SLM {last_slm['loss_selected']:.3f}/{last_slm['loss_unselected']:.3f}, "
        f"CLM {last_clm['loss_selected']:.3f}/{last_clm['loss_unselected']:.3f}"
    )
    arrays = {"slm_selected": slm_selected, "valid": valid}  # for callers (the demo's rates)
    return {"summary": summary, "files": files, "data": data, "arrays": arrays}


# --- rho analyze sweep ---------------------------------------------------------------------------

RESERVED = ("--output_dir", "--output-dir", "--max_steps", "--max-steps", "--seed")


def sweep_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho analyze sweep",
        allow_abbrev=False,  # unknown options go to TrainingArguments, never to a prefix match
        description="Short SLM trainings at several selection ratios on the same data, seed and "
        "budget; held-out loss against ratio (Fig. 9). Other options are passed to "
        "transformers.TrainingArguments (e.g. --learning_rate 1e-3 --use_cpu).",
    )
    parser.add_argument("--ratios", type=float, nargs="+", required=True, help="kept fractions")
    parser.add_argument("--tokens", required=True, help="training TokenStore")
    parser.add_argument("--ref-losses", required=True, help="LossStore of the training tokens")
    parser.add_argument("--eval-tokens", required=True, help="held-out TokenStore")
    parser.add_argument("--out", required=True, help="output directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", default=None, help="model preset (default: tiny)")
    group.add_argument("--model", default=None, help="model dir to continue from")
    parser.add_argument("--max-steps", type=int, required=True, help="optimizer steps per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    parser.add_argument(
        "--score", default="excess", choices=["excess", "learner", "reference", "random"]
    )
    parser.add_argument("--seq-len", type=int, default=None, help="(default: the LossStore's)")
    parser.add_argument("--overwrite", action="store_true", help="rerun ratios already done")
    args, rest = parser.parse_known_args(argv)
    for flag in rest:
        if flag.split("=")[0] in RESERVED:
            raise UserError(
                f"{flag.split('=')[0]} is set by the sweep: use --out, --max-steps, --seed"
            )
    _positive("--max-steps", args.max_steps)
    for r in args.ratios:
        if not 0 < r <= 1:
            raise UserError(f"--ratios must be in (0, 1], got {r}")
    result = run_sweep(
        args.ratios,
        tokens=args.tokens,
        ref_losses=args.ref_losses,
        eval_tokens=args.eval_tokens,
        out=Path(args.out),
        preset=args.preset if args.model else (args.preset or "tiny"),
        model=args.model,
        max_steps=args.max_steps,
        seed=args.seed,
        score=args.score,
        seq_len=args.seq_len,
        training_argv=rest,
        overwrite=args.overwrite,
    )
    print("rho analyze sweep:")
    print(result["markdown_table"])
    best = result["summary"]["best_ratio"]
    if best is not None:
        print(f"best ratio {best:g} (held-out loss {result['summary']['best_eval_loss']:.4f})")
    print("files:")
    _print_files(result["files"])
    return 0


def _training_arguments(argv: list[str]):
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser(TrainingArguments)
    parser.prog = "rho analyze sweep (TrainingArguments)"
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # e.g. "Some specified arguments are not used ..."
        raise UserError(f"bad training option: {' '.join(str(err).split())}") from None
    return args


def run_sweep(
    ratios: list[float],
    *,
    tokens: str,
    ref_losses: str,
    eval_tokens: str,
    out: Path,
    preset: str | None = "tiny",
    model: str | None = None,
    max_steps: int,
    seed: int = 0,
    score: str = "excess",
    seq_len: int | None = None,
    training_argv: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    from rho.analysis import plots
    from rho.analysis import selection as sel
    from rho.store import read_json
    from rho.trainer import ModelDataArguments, SelectionArguments, train

    ratios = sorted(set(float(r) for r in ratios))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for ratio in ratios:
        run_dir = out / "runs" / f"ratio-{ratio:g}"
        result_file = run_dir / "sweep_result.json"
        if result_file.exists() and not overwrite:
            results.append(read_json(result_file))
            if progress:
                print(f"ratio {ratio:g}: reusing {result_file}")
            continue
        if run_dir.exists():  # an unfinished or replaced run: start it afresh
            shutil.rmtree(run_dir)
        defaults = ["--report_to", "none", "--save_strategy", "no"]
        defaults += ["--logging_steps", str(max(1, max_steps // 20))]
        forced = ["--output_dir", str(run_dir), "--max_steps", str(max_steps), "--seed", str(seed)]
        args = _training_arguments([*defaults, *(training_argv or []), *forced])
        data = ModelDataArguments(
            tokens=str(tokens),
            model=model,
            preset=None if model else preset,
            ref_losses=str(ref_losses),
            eval_tokens=str(eval_tokens),
            seq_len=seq_len,
        )
        if progress:
            print(f"ratio {ratio:g}: training {max_steps} steps into {run_dir}")
        t0 = time.perf_counter()
        trainer = train(data, SelectionArguments(selection="token", ratio=ratio, score=score), args)
        history = trainer.state.log_history
        evals = [h["eval_loss"] for h in history if "eval_loss" in h]
        trains = [h["loss"] for h in history if "loss" in h]
        result = {
            "ratio": ratio,
            "eval_loss": evals[-1] if evals else float("nan"),
            "final_train_loss": trains[-1] if trains else float("nan"),
            "max_steps": max_steps,
            "seed": seed,
            "seconds": time.perf_counter() - t0,
            "tokens_seen": int(trainer.state.num_input_tokens_seen),
            "run_dir": str(run_dir),
        }
        del trainer
        gc.collect()
        write_json(result_file, result)
        results.append(result)
        if progress:
            print(f"ratio {ratio:g}: held-out loss {result['eval_loss']:.4f}")

    losses = [float("nan") if r["eval_loss"] is None else r["eval_loss"] for r in results]
    summary = sel.sweep_summary(ratios, losses)
    data = {
        "ratios": ratios,
        "eval_loss": losses,
        "summary": summary,
        "runs": results,
        "settings": {
            "tokens": str(tokens),
            "ref_losses": str(ref_losses),
            "eval_tokens": str(eval_tokens),
            "preset": None if model else preset,
            "model": model,
            "max_steps": max_steps,
            "seed": seed,
            "score": score,
            "training_args": list(training_argv or []),
        },
    }
    files = [write_json(out / "sweep.json", data)]
    lines = ["| ratio | held-out loss | vs ratio 1.0 |", "|---:|---:|---:|"]
    for row in summary["rows"]:
        gap = row.get("vs_all_tokens")
        gap_text = "" if gap is None or not math.isfinite(gap) else f"{gap:+.4f}"
        mark = " (best)" if row["ratio"] == summary["best_ratio"] else ""
        lines.append(f"| {row['ratio']:g}{mark} | {row['eval_loss']:.4f} | {gap_text} |")
    table = "\n".join(lines)
    md = [
        "# Selection-ratio sweep",
        "",
        f"SLM (score {score}) at each ratio, {max_steps} steps, seed {seed}, "
        f"{'model ' + str(model) if model else 'preset ' + str(preset)}; held-out loss on "
        f"`{eval_tokens}`. Paper (Fig. 9): ~60% best for 1B on math.",
        "",
        table,
        "",
        "![sweep](fig9_sweep.png)",
        "",
    ]
    files.append(write_text(out / "sweep.md", "\n".join(md)))
    note = f" — {max_steps} steps, seed {seed}"
    files.append(plots.sweep(ratios, losses, summary, out / "fig9_sweep.png", note))
    return {"summary": summary, "markdown_table": table, "files": files, "data": data}


# --- rho analyze html ----------------------------------------------------------------------------


def html_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho analyze html",
        description="A self-contained HTML page of passages with the tokens SLM would select "
        "highlighted by their score.",
    )
    parser.add_argument("--tokens", required=True, help="TokenStore")
    parser.add_argument("--losses", required=True, help="reference LossStore of --tokens")
    parser.add_argument("--model", default=None, help="learner checkpoint (for excess loss)")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--ratio", type=float, default=0.6, help="kept fraction")
    parser.add_argument(
        "--score", default="excess", choices=["excess", "learner", "reference"], help="ranking"
    )
    parser.add_argument("--passages", type=int, default=12, help="passages (windows) shown")
    parser.add_argument("--passage-tokens", type=int, default=200, help="tokens shown per passage")
    parser.add_argument("--seq-len", type=int, default=None, help="(default: the LossStore's)")
    parser.add_argument("--title", default=None, help="page title")
    _add_model_options(parser)
    args = parser.parse_args(argv)
    if not 0 < args.ratio <= 1:
        raise UserError(f"--ratio must be in (0, 1], got {args.ratio}")
    _positive("--passages", args.passages)
    _positive("--passage-tokens", args.passage_tokens)
    _positive("--batch-size", args.batch_size)
    result = run_html(
        args.tokens,
        args.losses,
        Path(args.out),
        model=args.model,
        ratio=args.ratio,
        score=args.score,
        passages=args.passages,
        passage_tokens=args.passage_tokens,
        seq_len=args.seq_len,
        title=args.title,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
    )
    print(f"rho analyze html: {result['summary']}")
    print("files:")
    _print_files(result["files"])
    return 0


def run_html(
    tokens_dir,
    losses_dir,
    out: Path,
    *,
    model: str | None = None,
    ratio: float = 0.6,
    score: str = "excess",
    passages: int = 12,
    passage_tokens: int = 200,
    seq_len: int | None = None,
    title: str | None = None,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
) -> dict:
    from rho.analysis import html as page
    from rho.analysis import selection as sel
    from rho.store import LossStore, TokenStore

    tokens = TokenStore(tokens_dir)
    ref_store = LossStore(losses_dir)
    seq_len = seq_len or ref_store.seq_len
    ref_store.check_matches(tokens, seq_len)
    notes = []
    if model is None and score != "reference":
        notes.append(
            f"No --model given, so no learner losses: tokens are coloured by their reference "
            f"loss and the lowest-reference-loss tokens are selected (score 'reference'), not by "
            f"{score} loss. Give --model CKPT to see the excess loss SLM ranks by."
        )
        score = "reference"

    n_full = tokens.n_tokens // seq_len
    if n_full:
        window_domains = domains_at(tokens, np.arange(n_full) * seq_len)
        indices = page.pick_windows(n_full, passages, window_domains)
        ids = load_windows(tokens, seq_len, np.asarray(indices))
    else:  # a store shorter than one window: show what there is
        indices = [0]
        ids = np.asarray(tokens.tokens[:], dtype=np.int64)[None]
    length = ids.shape[1]
    ref = np.stack([ref_store.window(int(i))[:length] for i in indices])
    learner = None
    if model is not None:
        net = load_checked_model(Path(model), tokens.vocab_size, dtype, _device(device))
        learner = score_windows(net, ids, batch_size, net.device)
        del net
    valid = sel.valid_positions(ref, *([learner] if learner is not None else []))
    shown = {"excess": None, "learner": learner, "reference": ref}
    if learner is not None:
        shown["excess"] = learner - ref
    values = shown[score]
    scores = sel.scores_for(score, learner if learner is not None else ref, ref)
    selected = sel.select(scores, valid, ratio, "batch")

    noise = None
    if tokens.noise_mask is not None:
        noise = np.stack(
            [np.asarray(tokens.noise_mask[i * seq_len : i * seq_len + length]) for i in indices]
        )
    show = min(passage_tokens, length)
    passage_domains = None
    if tokens.doc_domains is not None:
        passage_domains = []
        for i in indices:  # the domains of the documents the shown tokens belong to
            first, last = i * seq_len, min(i * seq_len + show, tokens.n_tokens) - 1
            d_first, d_last = np.searchsorted(tokens.doc_offsets, [first, last], "right") - 1
            starts = np.maximum(tokens.doc_offsets[d_first : d_last + 1], first)
            passage_domains.append(", ".join(dict.fromkeys(domains_at(tokens, starts))))
    tokenizer = tokens.tokenizer()
    passages_ = page.passages_from_arrays(
        tokenizer,
        ids.reshape(-1),
        np.where(valid, values, np.nan).reshape(-1),
        selected.reshape(-1),
        None if noise is None else noise.reshape(-1),
        [k * length for k in range(len(indices))],
        show,
        passage_domains,
    )
    notes.append(
        f"Selection: the top {ratio:.0%} of scored tokens by {score} score, ranked across all "
        f"{len(indices)} windows ({length} tokens each) together, like one training batch; "
        f"each passage shows the first {show} tokens of its window. "
        f"Tokens: {tokens.path}; reference losses: {ref_store.path}"
        + (f"; learner: {model}." if model else ".")
    )
    if title is None:
        what = {"excess": "excess loss", "learner": "learner loss", "reference": "reference loss"}
        title = f"Tokens selected by {what[score]} — {tokens.path.name}"
    text = page.render_page(passages_, title=title, ratio=ratio, score=score, note=" ".join(notes))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    summary = (
        f"{len(indices)} passages, {int(selected.sum()):,} of {int(valid.sum()):,} scored "
        f"tokens selected ({score})"
    )
    if noise is not None:
        noisy = valid & noise
        clean = valid & ~noise
        if noisy.any():
            summary += (
                f"; selected {selected[noisy].mean():.0%} of noise tokens vs "
                f"{selected[clean].mean():.0%} of clean ones"
            )
    return {"summary": summary, "files": [out], "score": score}
