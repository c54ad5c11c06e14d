"""The one writer of LossStores: create, resume, write losses, record progress, finish; and write
a whole LossStore at once (pruning carries losses over).

A store being scored holds ``ref_loss.npy`` (NaN where not yet scored), ``meta.json`` with
``complete: false`` and a ``run_id``, and ``progress/rank{R}-of-{W}-{run_id}.npy``: which fixed
batches of windows each rank has finished. Losses reach the disk (fsync) before their batches
are recorded, and only records of the store's own ``run_id`` count, so a store is marked
complete only when every batch was written into this very file by this run or a resumed one.
Writers hold the store's lock (rho.files.output_lock) for the whole run.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from rho.errors import UserError
from rho.files import (
    building,
    hash_arrays,
    read_json,
    save_npy_atomic,
    write_json_atomic,
)
from rho.store import (
    FORMAT_VERSION,
    LOSS_STORE,
    TokenStore,
    finite_fraction,
    load_npy,
    loss_summary,
)

RESUME_KEYS = ("token_hash", "seq_len", "model_hash", "score_dtype")
# A reference whose loss is NaN or infinite on more than a tenth of the tokens that should have
# one (every token but the window starts) is broken (NaN weights, fp16 overflow): refused.
MIN_FINITE_FRACTION = 0.9
CHUNK = 1 << 24  # losses written at a time (a new store's NaN fill)


def check_mostly_finite(ref_loss: np.ndarray, seq_len: int, what: str) -> float:
    """Refuse reference losses that are mostly NaN (see MIN_FINITE_FRACTION) in one line;
    returns their finite share (one pass over them)."""
    share = finite_fraction(ref_loss, seq_len)
    check_finite_share(share, what)
    return share


def check_finite_share(share: float, what: str) -> None:
    if share < MIN_FINITE_FRACTION:
        raise UserError(
            f"{what}: only {share:.1%} of the reference losses are finite (rho needs at least "
            f"{MIN_FINITE_FRACTION:.0%}): the reference model gives NaN or inf (broken weights, "
            "float16 overflow?)"
        )


def loss_store_meta(tokens: TokenStore, seq_len: int, batch_size: int, **extra) -> dict:
    """meta.json of a new LossStore of ``tokens`` (unfinished until ``finish``)."""
    return {
        "format": LOSS_STORE,
        "version": FORMAT_VERSION,
        "n_tokens": tokens.n_tokens,
        "seq_len": int(seq_len),
        "batch_size": int(batch_size),
        "token_hash": tokens.content_hash,
        "tokenizer_hash": tokens.meta.get("tokenizer_hash"),
        "dtype": "float16",
        "complete": False,
        **extra,
    }


def existing_run(
    out: Path, kind: str, name: str, meta: dict, keys, what: str, hint: str
) -> dict | None:
    """The meta of a store already at ``out`` that a writer of ``kind`` may resume (its ``keys``
    equal ``meta``'s), or None when there is none; anything else is a one-line refusal naming
    the store (``name``), ``what`` it holds and the ``hint`` past it. Shared by every resumable
    writer (LossStore, embeddings)."""
    if not (out.exists() or out.is_symlink()):
        return None
    old = read_json(out / "meta.json") if (out / "meta.json").is_file() else {}
    if old.get("format") != kind:
        raise UserError(f"{out} exists and is not {name} ({hint})")
    changed = [k for k in keys if old.get(k) != meta.get(k)]
    if changed:
        raise UserError(f"{out} holds {what} of another run ({', '.join(changed)} differ): {hint}")
    return old


def create_or_resume(tokens: TokenStore, out: Path, meta: dict, overwrite: bool) -> dict:
    """Create an empty store atomically, or validate an unfinished one of the same run settings
    to resume; returns the store's meta. (Rank 0 only, holding the store's lock.)"""
    old = None
    if not overwrite:
        old = existing_run(out, LOSS_STORE, "a LossStore", meta, RESUME_KEYS, "losses",
                           "pass --overwrite to replace it")  # fmt: skip
    if old is not None:
        load_npy(out / "ref_loss.npy", tokens.n_tokens, ("float16",))  # truncated or corrupted
        if not old.get("complete") and "run_id" not in old:
            old["run_id"] = secrets.token_hex(8)  # a store from before run ids: start afresh
            write_json_atomic(out / "meta.json", old)
        return old
    meta = {**meta, "run_id": secrets.token_hex(8)}
    with building(out, overwrite, LOSS_STORE) as tmp:
        from rho.store import allocate_npy  # disk reserved up front: a full disk is one line

        losses = allocate_npy(tmp / "ref_loss.npy", tokens.n_tokens, np.float16)
        offset = losses.offset
        del losses  # NaN written through the file: none of it stays mapped (RSS)
        nan = np.full(min(CHUNK, tokens.n_tokens), np.nan, dtype="<f2").tobytes()
        with open(tmp / "ref_loss.npy", "r+b") as f:
            f.seek(offset)
            for start in range(0, tokens.n_tokens, CHUNK):
                f.write(nan[: 2 * min(CHUNK, tokens.n_tokens - start)])
        (tmp / "progress").mkdir()
        write_json_atomic(tmp / "meta.json", meta)
    return meta


def progress_file(out: Path, meta: dict, rank: int, world: int) -> Path:
    return out / "progress" / f"rank{rank}-of-{world}-{meta['run_id']}.npy"


def done_batches(out: Path, meta: dict, n_batches: int) -> np.ndarray:
    """Batches recorded as finished by any rank of this store's run (resumes included)."""
    done = np.zeros(n_batches, dtype=bool)
    for file in sorted((out / "progress").glob(f"rank*-{meta['run_id']}.npy")):
        try:
            marks = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            continue  # unreadable: those batches are simply scored again
        if marks.shape == (n_batches,) and marks.dtype == bool:
            done |= marks
    return done


class LossFile:
    """Writes window losses into ref_loss.npy at their offsets with pwrite: each rank touches only
    its own bytes, which stays right even when ranks on several nodes share a network filesystem
    (a shared mmap would write back whole pages)."""

    def __init__(self, path: Path):
        array = np.load(path, mmap_mode="r")
        if array.dtype.str != "<f2":
            raise UserError(f"{path} is not little-endian float16 (corrupted)")
        self.offset = array.offset  # bytes of .npy header before the data
        del array
        self.path = path
        self.fd = os.open(path, os.O_RDWR)

    def write(self, first: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype="<f2").tobytes()
        written = os.pwrite(self.fd, data, self.offset + 2 * first)
        if written != len(data):
            raise OSError(f"short write to ref_loss.npy ({written} of {len(data)} bytes)")

    def record(self, progress: Path, done: np.ndarray) -> None:
        """Losses reach the disk, then the batches are recorded as done; if the file was
        replaced under us (it must not be: writers hold the lock), nothing is recorded."""
        os.fsync(self.fd)
        if os.fstat(self.fd).st_ino != os.stat(self.path).st_ino:
            raise UserError(f"{self.path} was replaced by another process while being scored")
        save_npy_atomic(progress, done)

    def close(self) -> None:
        os.close(self.fd)


def finish(out: Path, meta: dict, n_tokens: int, n_batches: int) -> dict:
    """Mark the store complete (with its mean loss and loss hash) once every batch of this run is
    recorded; remove the progress records. Returns the final meta."""
    if not done_batches(out, meta, n_batches).all():
        raise RuntimeError(f"{out}: some batches were not scored; rerun to finish")
    ref_loss = load_npy(out / "ref_loss.npy", n_tokens, ("float16",))
    share = check_mostly_finite(ref_loss, meta["seq_len"], str(out))  # else never complete
    meta = {k: v for k, v in meta.items() if k != "run_id"}  # a finished store is run-free
    meta["complete"] = True
    meta["finite_fraction"] = share  # training checks it without reading every loss again
    meta.update(mean_loss=loss_summary(ref_loss, meta["seq_len"])["mean"])
    meta.update(loss_hash=hash_arrays(ref_loss))
    del ref_loss
    write_json_atomic(out / "meta.json", meta)
    for file in (out / "progress").glob("*"):
        file.unlink(missing_ok=True)
    (out / "progress").rmdir()
    return meta


def write_loss_store(path: Path, tokens: TokenStore, ref_loss: np.ndarray, meta: dict) -> None:
    """A complete LossStore at once from losses in memory (e.g. carried over by pruning);
    ``meta`` from ``loss_store_meta``. Atomic like every output."""
    ref_loss = np.asarray(ref_loss, dtype=np.float16)
    if len(ref_loss) != tokens.n_tokens:
        raise ValueError(f"{len(ref_loss)} losses for {tokens.n_tokens} tokens")
    with building(path, False, LOSS_STORE) as tmp:
        np.save(tmp / "ref_loss.npy", ref_loss)
        meta = {**meta, "complete": True, "loss_hash": hash_arrays(ref_loss)}
        meta["mean_loss"] = loss_summary(ref_loss, meta["seq_len"])["mean"]
        meta["finite_fraction"] = finite_fraction(ref_loss, meta["seq_len"])
        write_json_atomic(tmp / "meta.json", meta)


def read_meta(out: Path) -> dict:
    from rho.store import read_loss_meta  # every field type-checked (rho.schema)

    return read_loss_meta(out)
