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
import sys
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
    hash_arrays,
    load_npy,
    loss_store_meta,
    loss_summary,
    n_windows,
    prepare_output,
    read_json,
    save_npy_atomic,
    write_json_atomic,
)

# How often finished batches are recorded (seconds); tests set 0 to record after every batch.
SAVE_EVERY_S = float(os.environ.get("RHO_SCORE_SAVE_EVERY_S", "5"))


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
    logits = model(input_ids=ids, use_cache=False).logits  # no KV cache: nothing is generated
    # Position t predicts token t + 1. Shifting the targets, not slicing the logits, keeps the
    # logits contiguous (a slice would be copied whole); the last position is ignored.
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    losses = token_losses(logits, targets)
    nan = torch.full((ids.shape[0], 1), float("nan"), device=losses.device)
    return torch.cat([nan, losses[:, :-1]], dim=1)


def _done_batches(out: Path, n_batches: int) -> np.ndarray:
    """Batches recorded as finished by any rank of any earlier or current run."""
    done = np.zeros(n_batches, dtype=bool)
    for file in sorted((out / "progress").glob("rank*.npy")):
        try:
            marks = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            continue  # unreadable: those batches are simply scored again
        if marks.shape == (n_batches,) and marks.dtype == bool:
            done |= marks
    return done


def _open_or_create(tokens: TokenStore, out: Path, meta: dict, overwrite: bool) -> dict:
    """Rank 0: create the store (atomically), or validate an unfinished one to resume."""
    if (out.exists() or out.is_symlink()) and not overwrite:
        old = read_json(out / "meta.json") if (out / "meta.json").is_file() else {}
        if old.get("format") != LOSS_STORE:
            raise UserError(f"{out} exists and is not a LossStore (pass --overwrite to replace it)")
        keys = ("token_hash", "seq_len", "model_hash", "score_dtype")
        changed = [k for k in keys if old.get(k) != meta.get(k)]
        if changed:
            raise UserError(
                f"{out} holds losses from a different run ({', '.join(changed)} differ): "
                "pass --overwrite to replace it"
            )
        load_npy(out / "ref_loss.npy", tokens.n_tokens, ("float16",))  # truncated or corrupted
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


def _on_rank0(fn, device: torch.device):
    """Run ``fn`` on rank 0 only. If it fails, every rank raises, so no rank waits forever at the
    next barrier for a rank that has left."""
    error = None
    if dist.rank() == 0:
        try:
            fn()
        except Exception as err:
            error = err
    if dist.is_distributed():
        failed = dist.all_reduce_sum(torch.tensor([float(error is not None)], device=device))
        if failed.item() and error is None:
            raise UserError("rank 0 could not open the output (its error is printed above)")
    if error is not None:
        raise error


def _check_paths(tokens: TokenStore, out: Path) -> None:
    a, b = tokens.path.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise UserError(f"--out {out} overlaps the TokenStore {tokens.path}: choose another path")


def _check_positions(model, seq_len: int) -> None:
    """Models with learned positions crash past their table; refuse up front."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and seq_len > limit:
        raise UserError(f"--seq-len {seq_len} exceeds the model's {limit} positions")


class _LossFile:
    """Writes window losses into ref_loss.npy at their offsets with pwrite: each rank touches only
    its own bytes, which stays right even when ranks on several nodes share a network filesystem
    (a shared mmap would write back whole pages)."""

    def __init__(self, path: Path):
        array = np.load(path, mmap_mode="r")
        if array.dtype.str != "<f2":
            raise UserError(f"{path} is not little-endian float16 (corrupted)")
        self.offset = array.offset  # bytes of .npy header before the data
        del array
        self.fd = os.open(path, os.O_RDWR)

    def write(self, first: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype="<f2").tobytes()
        written = os.pwrite(self.fd, data, self.offset + 2 * first)
        if written != len(data):
            raise OSError(f"short write to ref_loss.npy ({written} of {len(data)} bytes)")

    def sync(self) -> None:
        os.fsync(self.fd)  # losses reach the disk before the batches are recorded as done

    def close(self) -> None:
        os.close(self.fd)


def score_store(
    model,
    tokens: str | Path | TokenStore,
    out: str | Path,
    seq_len: int,
    *,
    batch_size: int = 16,
    dtype: str | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> LossStore:
    """Score every token of ``tokens`` with ``model`` (a path, hub name or loaded model) into a
    LossStore at ``out``. Reruns resume; under torchrun the ranks share the batches.

    ``dtype``: float32, bfloat16 or float16; default float32 for a path, or the loaded model's
    own dtype. A loaded model is moved to ``device`` and put in eval mode."""
    tokens = tokens if isinstance(tokens, TokenStore) else TokenStore(tokens)
    out = Path(out)
    n_windows(tokens.n_tokens, seq_len)  # seq_len >= 2
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    _check_paths(tokens, out)
    device = torch.device(device) if device is not None else default_device()
    dist.init_from_env(device)
    if isinstance(model, (str, Path)):
        model_name = str(model)
        if not Path(model).exists() and (Path(model).is_absolute() or model_name.startswith(".")):
            raise UserError(f"model directory {model} does not exist")  # not a hub name either
        dtype = dtype or "float32"
        model = load_model(model, dtype, trust_remote_code)
    else:
        model_name = type(model).__name__
        if dtype is None:
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        model = model.to(parse_dtype(dtype))
    check_vocab(model, tokens.vocab_size)
    _check_positions(model, seq_len)
    model.to(device).eval()

    meta = loss_store_meta(
        tokens,
        seq_len,
        batch_size,
        model=model_name,
        model_hash=model_fingerprint(model),
        score_dtype=dtype,
    )
    _on_rank0(lambda: _open_or_create(tokens, out, meta, overwrite), device)
    dist.barrier()
    meta = read_json(out / "meta.json")
    # A resumed store keeps the batch size it was started with: batches must stay the same.
    batches = batch_windows(tokens.n_tokens, seq_len, int(meta["batch_size"]))
    if int(meta["batch_size"]) != batch_size and dist.rank() == 0 and progress:
        print(f"{out}: resuming with its batch size {meta['batch_size']}", file=sys.stderr)
    if meta.get("complete"):
        if dist.rank() == 0 and progress:
            print(f"{out} is already complete")
        return LossStore(out, tokens, seq_len)

    done = _done_batches(out, len(batches))
    mine = np.zeros(len(batches), dtype=bool)
    mine[dist.rank() :: dist.world_size()] = True
    todo = np.flatnonzero(mine & ~done).tolist()
    progress_file = out / "progress" / f"rank{dist.rank()}-of-{dist.world_size()}.npy"
    my_done = done & mine

    spans = {b: _token_span(batches[b], seq_len, tokens.n_tokens) for b in todo}
    n_todo = sum(end - first for first, end in spans.values())
    bar = tqdm(
        total=n_todo,
        desc="score",
        unit="tok",
        unit_scale=True,
        disable=True if not progress or dist.rank() else None,  # None: on a terminal only
    )
    losses = _LossFile(out / "ref_loss.npy")

    def record() -> None:
        losses.sync()
        save_npy_atomic(progress_file, my_done)

    start = last_save = time.perf_counter()
    try:
        for b in todo:
            first, end = spans[b]
            ids = torch.from_numpy(np.asarray(tokens.tokens[first:end], dtype=np.int64))
            ids = ids.view(len(batches[b]), -1).to(device)
            losses.write(first, window_losses(model, ids).reshape(-1).cpu().numpy())
            my_done[b] = True
            bar.update(end - first)
            if time.perf_counter() - last_save >= SAVE_EVERY_S:
                record()
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        record()  # Ctrl-C: keep every finished batch, so a rerun resumes from here
        raise
    finally:
        bar.close()
    record()
    losses.close()
    seconds = time.perf_counter() - start
    dist.barrier()

    # Every rank checks (no rank waits alone at the last barrier if something is missing).
    if not _done_batches(out, len(batches)).all():
        raise RuntimeError(f"{out}: some batches were not scored; rerun to finish")
    scored = int(dist.all_reduce_sum(torch.tensor([n_todo], device=device)).item())
    if dist.rank() == 0:
        ref_loss = load_npy(out / "ref_loss.npy", tokens.n_tokens, ("float16",))
        mean = loss_summary(ref_loss, seq_len)["mean"]
        meta.update(complete=True, mean_loss=mean, loss_hash=hash_arrays(ref_loss))
        del ref_loss
        write_json_atomic(out / "meta.json", meta)
        shutil.rmtree(out / "progress", ignore_errors=True)
        if progress:
            print(ScoreSummary(scored, mean, seconds, scored / max(seconds, 1e-9)))
    dist.barrier()
    return LossStore(out, tokens, seq_len)


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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar: our own bar and summary suffice
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
    if dist.is_distributed():
        torch.distributed.destroy_process_group()
    return 0
