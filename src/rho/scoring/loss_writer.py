"""The one writer of LossStores: create, resume, write losses (and entropies), record progress,
finish; and write a whole LossStore at once (pruning carries losses over).

A store being scored holds ``ref_loss.npy`` (NaN where not yet scored), with ``--entropy``
``ref_entropy.npy`` beside it (written by the same batches), ``meta.json`` with
``complete: false`` and a ``run_id``, and ``progress/rank{R}-of-{W}-{run_id}.npy``: which fixed
batches of windows each rank has finished. Values reach the disk (fsync) before their batches
are recorded, and only records of the store's own ``run_id`` count, so a store is marked
complete only when every batch was written into these very files by this run or a resumed one.
Writers hold the store's lock (rho.io.files.output_lock) for the whole run.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from rho.errors import UserError
from rho.io.files import building, read_json, save_npy_atomic, write_json_atomic
from rho.io.reading import hash_arrays
from rho.io.schema import LossStoreMeta, Strict
from rho.io.store import (
    FINITE_RECORDS,
    TokenStore,
    finite_fraction,
    loss_summary,
    should_have_value,
    window_chunk,
    window_starts,
)
from rho.io.store_files import (
    FORMAT_VERSION,
    LOSS_STORE,
    NPY_ERRORS,
    allocate_npy,
    load_npy,
    open_npy,
    read_loss_meta,
    read_store_meta,
)

RESUME_KEYS = ("token_hash", "seq_len", "model_hash", "score_dtype", "has_entropy")
ENTROPY_FILE = "ref_entropy.npy"
# A reference whose loss is NaN or infinite on more than a tenth of the tokens that should have
# one (every token but the window starts) is broken (NaN weights, fp16 overflow): refused.
MIN_FINITE_FRACTION = 0.9
CHUNK = 1 << 24  # losses written at a time (a new store's NaN fill)


def n_masked_out(tokens: TokenStore, seq_len: int) -> int:
    """Positions besides window starts that a loss mask leaves unscored (NaN by design)."""
    total, step = 0, window_chunk(seq_len)
    for start in range(0, tokens.n_tokens, step):
        end = min(start + step, tokens.n_tokens)
        total += int((~window_starts(end - start, seq_len)).sum())
        total -= int(should_have_value(start, end, seq_len, tokens).sum())
    return total


def check_mostly_finite(
    values: np.ndarray,
    seq_len: int,
    what: str,
    tokens: TokenStore | None = None,
    kind: str = "losses",
) -> float:
    """Refuse reference values that are mostly NaN (see MIN_FINITE_FRACTION) in one line;
    returns their finite share (one pass over them, in blocks). Give the ``tokens`` they score
    so that tokens a loss mask leaves out are not counted."""
    share = finite_fraction(values, seq_len, tokens)
    check_finite_share(share, what, kind)
    return share


def check_finite_share(share: float, what: str, kind: str = "losses") -> None:
    """Refuse a finite share (computed, or recorded by ``finish``) below MIN_FINITE_FRACTION."""
    if share < MIN_FINITE_FRACTION:
        raise UserError(
            f"{what}: only {share:.1%} of the reference {kind} are finite (rho needs at least "
            f"{MIN_FINITE_FRACTION:.0%}): the reference model gives NaN or inf (broken weights, "
            "float16 overflow?), or the store was damaged since it was scored"
        )


def loss_store_meta(
    tokens: TokenStore, seq_len: int, batch_size: int, entropy: bool = False, **extra
) -> dict:
    """meta.json of a new LossStore of ``tokens`` (unfinished until ``finish``); ``entropy``:
    it also holds the reference's entropies."""
    meta = {
        "format": LOSS_STORE,
        "version": FORMAT_VERSION,
        "n_tokens": tokens.n_tokens,
        "seq_len": int(seq_len),
        "batch_size": int(batch_size),
        "token_hash": tokens.content_hash,
        "tokenizer_hash": tokens.meta.get("tokenizer_hash"),
        "dtype": "float16",
        "complete": False,
        "has_entropy": bool(entropy),
        **extra,
    }
    if tokens.loss_mask is not None:
        meta.update(loss_mask=True, n_masked_out=n_masked_out(tokens, seq_len))
    return meta


def existing_run(
    out: Path,
    kind: str,
    schema: type[Strict],
    meta: dict,
    keys,
    what: str,
    hint: str,
) -> dict | None:
    """The meta of a store already at ``out`` that a writer of ``kind`` may resume (its ``keys``
    equal ``meta``'s; its meta.json checked against ``schema``, a key an older store lacks
    taking the schema's default), or None when there is none; anything else is a one-line
    refusal naming the store, ``what`` it holds and the ``hint`` past it. An unfinished store
    without a run id (from before them) starts a fresh run: none of its records count. Shared
    by every resumable writer (LossStore, embeddings)."""
    if not (out.exists() or out.is_symlink()):
        return None
    if not (out / "meta.json").is_file() or read_json(out / "meta.json").get("format") != kind:
        raise UserError(f"{out} exists and holds no {what} of rho's to resume ({hint})")
    old = read_store_meta(out, kind, schema)
    changed = [k for k in keys if old.get(k) != meta.get(k)]
    if changed:
        raise UserError(f"{out} holds {what} of another run ({', '.join(changed)} differ): {hint}")
    if not old["complete"] and old.get("run_id") is None:
        old["run_id"] = secrets.token_hex(8)
        write_json_atomic(out / "meta.json", old)
    return old


def create_or_resume(tokens: TokenStore, out: Path, meta: dict, overwrite: bool) -> dict:
    """Create an empty store atomically, or validate an unfinished one of the same run settings
    to resume; returns the store's meta. (Rank 0 only, holding the store's lock.)"""
    old = None
    if not overwrite:
        old = existing_run(out, LOSS_STORE, LossStoreMeta, meta, RESUME_KEYS, "losses",
                           "pass --overwrite to replace it")  # fmt: skip
    if old is not None:
        for name in value_files(old):  # truncated or corrupted
            load_npy(out / name, tokens.n_tokens, ("float16",))
        return old
    meta = {**meta, "run_id": secrets.token_hex(8)}
    with building(out, overwrite, LOSS_STORE) as tmp:
        for name in value_files(meta):  # losses, and entropies with --entropy
            # disk reserved up front: a full disk is one line
            values = allocate_npy(tmp / name, tokens.n_tokens, np.float16)
            offset = values.offset
            del values  # NaN written through the file: none of it stays mapped (RSS)
            fill_nan(tmp / name, offset, tokens.n_tokens)
        (tmp / "progress").mkdir()
        write_json_atomic(tmp / "meta.json", meta)
    return meta


def fill_nan(path: Path, offset: int, n: int) -> None:
    """NaN into the ``n`` float16 entries of a .npy whose data start at byte ``offset``,
    written through the file in blocks of CHUNK (no memory map: nothing stays in the RSS)."""
    nan = np.full(min(CHUNK, n), np.nan, dtype="<f2").tobytes()
    with open(path, "r+b") as f:
        f.seek(offset)
        for start in range(0, n, CHUNK):
            f.write(nan[: 2 * min(CHUNK, n - start)])


def value_files(meta: dict) -> list[str]:
    """The per-token arrays of a LossStore with this meta, in the order writers pass them."""
    return ["ref_loss.npy", *([ENTROPY_FILE] if meta.get("has_entropy") else [])]


def remove_progress(out: Path) -> None:
    """Delete a finished job's progress files (call after its meta says complete)."""
    for file in (out / "progress").glob("*"):
        file.unlink(missing_ok=True)
    if (out / "progress").is_dir():  # a damaged store may have lost it: nothing to remove
        (out / "progress").rmdir()


def progress_file(out: Path, meta: dict, rank: int, world: int) -> Path:
    return out / "progress" / f"rank{rank}-of-{world}-{meta['run_id']}.npy"


def done_batches(out: Path, meta: dict, n_batches: int) -> np.ndarray:
    """Batches recorded as finished by any rank of this store's run (resumes included)."""
    done = np.zeros(n_batches, dtype=bool)
    for file in sorted((out / "progress").glob(f"rank*-{meta['run_id']}.npy")):
        try:  # mapped: a damaged header's huge shape is refused, never allocated
            marks = np.load(file, mmap_mode="r", allow_pickle=False)
        except NPY_ERRORS:
            continue  # unreadable: those batches are simply scored again
        if marks.shape == (n_batches,) and marks.dtype == bool:
            done |= np.asarray(marks)
    return done


class LossFile:
    """Writes window values into a store's float16 arrays (ref_loss.npy, and ref_entropy.npy when
    given) at their offsets with pwrite: each rank touches only its own bytes, which stays right
    even when ranks on several nodes share a network filesystem (a shared mmap would write back
    whole pages)."""

    def __init__(self, *paths: Path):
        self.paths, self.offsets, self.fds = list(paths), [], []
        for path in self.paths:
            array = open_npy(path)
            if array.dtype.str != "<f2":
                raise UserError(f"{path} is not little-endian float16 (corrupted)")
            self.offsets.append(array.offset)  # bytes of .npy header before the data
            del array
        self.fds = [os.open(path, os.O_RDWR) for path in self.paths]

    def write(self, first: int, *values: np.ndarray) -> None:
        """One array of values per file, in the order of the paths."""
        for path, fd, offset, array in zip(self.paths, self.fds, self.offsets, values, strict=True):
            data = np.ascontiguousarray(array, dtype="<f2").tobytes()
            written = os.pwrite(fd, data, offset + 2 * first)
            if written != len(data):
                raise OSError(f"short write to {path.name} ({written} of {len(data)} bytes)")

    def record(self, progress: Path, done: np.ndarray) -> None:
        """Values reach the disk, then the batches are recorded as done; if a file was
        replaced under us (it must not be: writers hold the lock), nothing is recorded."""
        for path, fd in zip(self.paths, self.fds, strict=True):
            os.fsync(fd)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise UserError(f"{path} was replaced by another process while being scored")
        save_npy_atomic(progress, done)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def finish(
    out: Path, meta: dict, n_tokens: int, n_batches: int, tokens: TokenStore | None = None
) -> dict:
    """Mark the store complete (with its mean loss and loss hash, and mean entropy and entropy
    hash) once every batch of this run is recorded; remove the progress records. Returns the
    final meta. ``tokens``: the scored TokenStore, whose loss mask the finite check follows."""
    if not done_batches(out, meta, n_batches).all():
        raise RuntimeError(f"{out}: some batches were not scored; rerun to finish")
    ref_loss = load_npy(out / "ref_loss.npy", n_tokens, ("float16",))
    seq_len = meta["seq_len"]
    share = check_mostly_finite(ref_loss, seq_len, str(out), tokens)  # else never complete
    entropy, entropy_share = None, None
    if meta.get("has_entropy"):
        entropy = load_npy(out / ENTROPY_FILE, n_tokens, ("float16",))
        entropy_share = check_mostly_finite(entropy, seq_len, str(out), tokens, "entropies")
    meta = {k: v for k, v in meta.items() if k != "run_id"}  # a finished store is run-free
    meta["complete"] = True
    # recorded: training checks them without reading every value again (rho.io.store.LossStore)
    meta[FINITE_RECORDS["losses"]] = share
    if entropy_share is not None:
        meta[FINITE_RECORDS["entropies"]] = entropy_share
    meta.update(mean_loss=loss_summary(ref_loss, seq_len)["mean"])
    meta.update(loss_hash=hash_arrays(ref_loss))
    if entropy is not None:
        meta.update(mean_entropy=loss_summary(entropy, seq_len)["mean"])
        meta.update(entropy_hash=hash_arrays(entropy))
    del ref_loss, entropy
    write_json_atomic(out / "meta.json", meta)
    remove_progress(out)  # after meta says complete: a kill here loses nothing
    return meta


def write_loss_store(
    path: Path,
    tokens: TokenStore,
    ref_loss: np.ndarray,
    meta: dict,
    ref_entropy: np.ndarray | None = None,
) -> None:
    """A complete LossStore at once from losses (and entropies) in memory (e.g. carried over by
    pruning); ``meta`` from ``loss_store_meta``. Atomic like every output."""
    arrays = {"ref_loss.npy": ref_loss}
    if ref_entropy is not None:
        arrays[ENTROPY_FILE] = ref_entropy
    meta = {**meta, "complete": True, "has_entropy": ref_entropy is not None}
    with building(path, False, LOSS_STORE) as tmp:
        whats = (("loss", "losses"), ("entropy", "entropies"))
        for (name, values), (what, kind) in zip(arrays.items(), whats, strict=False):
            values = np.asarray(values, dtype=np.float16)
            if len(values) != tokens.n_tokens:
                raise ValueError(f"{len(values)} {name} values for {tokens.n_tokens} tokens")
            np.save(tmp / name, values)
            meta[f"{what}_hash"] = hash_arrays(values)
            meta[f"mean_{what}"] = loss_summary(values, meta["seq_len"])["mean"]
            # the finite share, of the loss positions of a masked store (read by rho train)
            meta[FINITE_RECORDS[kind]] = finite_fraction(values, meta["seq_len"], tokens)
        write_json_atomic(tmp / "meta.json", meta)


def read_meta(out: Path) -> dict:
    """A LossStore's meta.json, every field type-checked (rho.io.schema)."""
    return read_loss_meta(out)
