"""Model x TokenStore -> LossStore: every token's reference loss, computed once, offline.

Windows are scored in fixed batches (batch b holds windows [b*B, (b+1)*B); the last, partial
window is a batch of its own), so a batch's losses do not depend on which process scored it or
when. That makes the store resumable (finished batches are recorded in ``progress/``) and the
same whether one process or many (``torchrun``: batch b goes to rank b mod world) wrote it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rho import distributed as dist
from rho.errors import UserError
from rho.loss import token_losses
from rho.models import check_vocab, load_model, model_fingerprint, parse_dtype
from rho.store import (
    LOSS_STORE,
    LossStore,
    TokenStore,
    commit_output,
    load_npy,
    loss_store_meta,
    n_windows,
    prepare_output,
    read_json,
    save_npy_atomic,
    write_json_atomic,
)

SAVE_EVERY_S = 5.0  # how often finished batches are recorded


@dataclass
class ScoreSummary:
    tokens: int
    mean_loss: float
    seconds: float
    tokens_per_s: float

    def __str__(self) -> str:
        return (
            f"scored {self.tokens:,} tokens in {self.seconds:.1f}s "
            f"({self.tokens_per_s:,.0f} tok/s), mean loss {self.mean_loss:.4f}"
        )


def batch_windows(n_tokens: int, seq_len: int, batch_size: int) -> list[range]:
    """The fixed batches of window indices; a partial last window gets a batch of its own."""
    total = n_windows(n_tokens, seq_len)
    full = n_tokens // seq_len
    batches = [range(s, min(s + batch_size, full)) for s in range(0, full, batch_size)]
    if total > full:
        batches.append(range(full, total))
    return batches


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@torch.inference_mode()
def window_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """(B, L) token ids -> (B, L) float32 losses: NaN at position 0, else loss of token t given
    the tokens before it in the window (the alignment rule)."""
    logits = model(input_ids=ids).logits
    losses = token_losses(logits[:, :-1], ids[:, 1:])
    nan = torch.full((ids.shape[0], 1), float("nan"), device=losses.device)
    return torch.cat([nan, losses], dim=1)


def _progress_files(out: Path) -> list[Path]:
    return sorted((out / "progress").glob("rank*.npy"))


def _done_batches(out: Path, n_batches: int) -> np.ndarray:
    done = np.zeros(n_batches, dtype=bool)
    for file in _progress_files(out):
        marks = np.load(file)
        if len(marks) == n_batches:
            done |= marks
    return done


def _open_or_create(tokens: TokenStore, out: Path, meta: dict, overwrite: bool) -> dict:
    """Rank 0: create the store (atomically), or validate an unfinished one to resume."""
    if out.exists() and not overwrite:
        old = read_json(out / "meta.json") if (out / "meta.json").exists() else {}
        if old.get("format") != LOSS_STORE:
            raise UserError(f"{out} exists and is not a LossStore (pass --overwrite to replace it)")
        keys = ("token_hash", "seq_len", "model_hash", "score_dtype")
        changed = [k for k in keys if old.get(k) != meta.get(k)]
        if changed:
            raise UserError(
                f"{out} holds losses from a different run ({', '.join(changed)} differ): "
                "pass --overwrite to replace it"
            )
        load_npy(out / "ref_loss.npy", tokens.n_tokens)  # truncated or corrupted: clear error
        return old
    tmp = prepare_output(out, overwrite)
    try:
        losses = np.lib.format.open_memmap(
            tmp / "ref_loss.npy", mode="w+", dtype=np.float16, shape=(tokens.n_tokens,)
        )
        losses[:] = np.nan
        losses.flush()
        del losses
        (tmp / "progress").mkdir()
        write_json_atomic(tmp / "meta.json", meta)
        commit_output(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def score_store(
    model,
    tokens: str | Path | TokenStore,
    out: str | Path,
    seq_len: int,
    *,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> LossStore:
    """Score every token of ``tokens`` with ``model`` (a path, hub name or loaded model) into a
    LossStore at ``out``. Reruns resume; under torchrun the ranks share the batches."""
    tokens = tokens if isinstance(tokens, TokenStore) else TokenStore(tokens)
    out = Path(out)
    device = torch.device(device) if device is not None else default_device()
    dist.init_from_env(device)
    if isinstance(model, (str, Path)):
        model_name = str(model)
        model = load_model(model, dtype, trust_remote_code)
    else:
        model_name = type(model).__name__
        model = model.to(parse_dtype(dtype))
    check_vocab(model, tokens.vocab_size)
    model.to(device).eval()
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")

    meta = loss_store_meta(
        tokens,
        seq_len,
        batch_size,
        model=model_name,
        model_hash=model_fingerprint(model),
        score_dtype=dtype,
    )
    if dist.rank() == 0:
        meta = _open_or_create(tokens, out, meta, overwrite)
    dist.barrier()
    meta = read_json(out / "meta.json")
    batches = batch_windows(tokens.n_tokens, seq_len, int(meta["batch_size"]))
    if meta.get("complete"):
        if dist.rank() == 0 and progress:
            print(f"{out} is already complete")
        return LossStore(out, tokens, seq_len)

    done = _done_batches(out, len(batches))
    mine = np.zeros(len(batches), dtype=bool)
    mine[dist.rank() :: dist.world_size()] = True
    todo = np.flatnonzero(mine & ~done).tolist()
    losses = np.load(out / "ref_loss.npy", mmap_mode="r+")
    progress_file = out / "progress" / f"rank{dist.rank()}-of-{dist.world_size()}.npy"
    my_done = done & mine

    n_todo = sum(len(range(*_token_span(batches[b], seq_len, tokens.n_tokens))) for b in todo)
    bar = tqdm(
        total=n_todo, desc="score", unit="tok", unit_scale=True, disable=not progress or dist.rank()
    )
    start, last_save = time.perf_counter(), time.perf_counter()
    for b in todo:
        first, end = _token_span(batches[b], seq_len, tokens.n_tokens)
        ids = torch.from_numpy(np.asarray(tokens.tokens[first:end], dtype=np.int64))
        ids = ids.view(len(batches[b]), -1).to(device)
        losses[first:end] = window_losses(model, ids).reshape(-1).cpu().numpy().astype(np.float16)
        my_done[b] = True
        bar.update(end - first)
        if time.perf_counter() - last_save > SAVE_EVERY_S:
            losses.flush()
            save_npy_atomic(progress_file, my_done)
            last_save = time.perf_counter()
    losses.flush()
    save_npy_atomic(progress_file, my_done)
    bar.close()
    seconds = time.perf_counter() - start
    dist.barrier()

    if dist.rank() == 0:
        if not _done_batches(out, len(batches)).all():
            raise RuntimeError(f"{out}: some batches were not scored; rerun to finish")
        mean = nanmean_chunked(losses)
        meta.update(complete=True, mean_loss=mean)
        write_json_atomic(out / "meta.json", meta)
        shutil.rmtree(out / "progress", ignore_errors=True)
        if progress:
            summary = ScoreSummary(n_todo, mean, seconds, n_todo / max(seconds, 1e-9))
            print(summary)
    del losses
    dist.barrier()
    return LossStore(out, tokens, seq_len)


def nanmean_chunked(values: np.ndarray, chunk: int = 1 << 22) -> float:
    """Mean of the non-NaN entries without loading the whole array."""
    total, count = 0.0, 0
    for start in range(0, len(values), chunk):
        block = np.asarray(values[start : start + chunk], dtype=np.float64)
        keep = ~np.isnan(block)
        total, count = total + block[keep].sum(), count + int(keep.sum())
    return total / count if count else float("nan")


def _token_span(windows: range, seq_len: int, n_tokens: int) -> tuple[int, int]:
    return windows.start * seq_len, min(windows.stop * seq_len, n_tokens)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho score", description="Score every token of a TokenStore with a reference model."
    )
    parser.add_argument("--model", required=True, help="model directory or hub name")
    parser.add_argument("--tokens", required=True, help="TokenStore directory")
    parser.add_argument("--out", required=True, help="LossStore directory to write (or resume)")
    parser.add_argument("--seq-len", type=int, required=True, help="window length in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code")
    args = parser.parse_args(argv)
    score_store(
        args.model,
        args.tokens,
        args.out,
        args.seq_len,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
    )
    return 0
