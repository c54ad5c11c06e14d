"""Embeddings of a TokenStore's units (documents or windows): writer and reader.

An embedding store is a directory beside the TokenStore: ``embeddings.npy`` (float16,
[n_units, hidden], NaN rows not yet computed), ``meta.json`` (the TokenStore's content hash, the
model and its hash, unit, seq_len, ``complete``) and, while unfinished, ``progress/`` — the same
resumable design as the LossStore (rho.scoring.loss_writer): units are embedded in fixed batches
(batch b
holds units [b*B, (b+1)*B), so a batch's rows never depend on who computed them or when), rows
reach the disk (fsync) before their batch is recorded, only records of the store's own
``run_id`` count, and under torchrun batch b goes to rank b mod world.

A unit's embedding is the mean of the model's last hidden state over the unit's tokens (D4's
recipe). Windows are the alignment rule's windows (rho.io.store); a document longer than
``seq_len`` (or, without one, the model's positions) is embedded from its first tokens only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from rho import distributed as dist
from rho.errors import UserError
from rho.io.files import (
    building,
    check_not_input,
    mark_output,
    output_lock,
    save_npy_atomic,
    write_json_atomic,
)
from rho.io.reading import hash_arrays
from rho.io.schema import Count, Hash, Name, Strict
from rho.io.store import TokenStore
from rho.io.store_files import FORMAT_VERSION, open_npy, read_store_meta, reserve_disk_space
from rho.models import model_fingerprint
from rho.scoring.loss_writer import done_batches, existing_run, progress_file, remove_progress
from rho.scoring.windows import batch_windows, check_positions, max_positions, window_ids
from rho.testhook import hold

EMBEDDINGS = "rho.Embeddings"
UNITS = ("document", "window")
RESUME_KEYS = ("token_hash", "model_hash", "unit", "seq_len", "n_units", "hidden")
# How often finished batches are recorded (seconds); tests set 0 to record after every batch.
SAVE_EVERY_S = float(os.environ.get("RHO_EMBED_SAVE_EVERY_S", "5"))


class EmbeddingsMeta(Strict):
    format: Literal["rho.Embeddings"]
    version: Literal[1]
    n_units: Count
    hidden: Annotated[int, Field(ge=1, le=1 << 20)]
    unit: Literal["document", "window"]
    seq_len: Annotated[int, Field(ge=2, le=1 << 31)]
    batch_size: Annotated[int, Field(ge=1, le=1 << 31)]
    token_hash: Hash
    model: Name | None = None
    model_hash: Hash
    layer: Annotated[int, Field(ge=-(1 << 10), le=1 << 10)] = -1
    dtype: Literal["float16"] = "float16"
    complete: bool = False
    run_id: Annotated[str, Field(pattern=r"^[0-9a-f]{1,64}$")] | None = None
    embedding_hash: Hash | None = None


def n_units(tokens: TokenStore, unit: str, seq_len: int) -> int:
    return tokens.n_docs if unit == "document" else tokens.n_windows(seq_len)


def unit_batches(tokens: TokenStore, unit: str, seq_len: int, batch_size: int) -> list[range]:
    """Fixed batches of unit indices (windows: rho.windows' batches, one rectangle each)."""
    if unit == "window":
        return batch_windows(tokens.n_tokens, seq_len, batch_size)
    n = tokens.n_docs
    return [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def batch_ids(tokens: TokenStore, unit: str, seq_len: int, batch: range):
    """(ids, attention mask) of a batch of units; documents are cut at ``seq_len`` tokens and
    padded on the right (causal attention: the pads change nothing before them)."""
    if unit == "window":
        ids = window_ids(tokens.tokens, seq_len, batch)
        return torch.from_numpy(ids), torch.ones(ids.shape, dtype=torch.long)
    offsets = np.asarray(tokens.doc_offsets[batch.start : batch.stop + 1])
    lengths = np.minimum(np.diff(offsets), seq_len)
    ids = np.zeros((len(batch), int(lengths.max())), dtype=np.int64)
    mask = np.zeros(ids.shape, dtype=np.int64)
    for row, (start, length) in enumerate(zip(offsets[:-1], lengths, strict=True)):
        ids[row, :length] = tokens.tokens[start : start + length]
        mask[row, :length] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


@torch.inference_mode()
def mean_last_hidden(model, ids: torch.Tensor, mask: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(B, L) ids and mask -> (B, hidden) float32 mean over the mask of one hidden state: the
    last (-1), or ``layer`` of the model's hidden states (0: the input token embeddings, a
    lookup with no forward pass)."""
    if layer == 0:
        hidden = model.get_input_embeddings()(ids).float()
    else:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                    use_cache=False)  # fmt: skip
        hidden = out.hidden_states[layer].float()
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def embedding_seq_len(model, unit: str, seq_len: int | None) -> int:
    """Window length, or the most tokens of a document that are embedded."""
    if unit == "window":
        if seq_len is None:
            raise UserError("--unit window needs --seq-len (or --losses, whose seq_len is used)")
        check_positions(model, seq_len, "--seq-len")
        return seq_len
    if seq_len is not None:
        check_positions(model, seq_len, "--seq-len")
        return seq_len
    limit = max_positions(model)
    if limit is None:
        raise UserError("the embedding model does not say its positions: give --seq-len")
    return limit


def default_path(
    tokens: TokenStore, unit: str, seq_len: int, model_hash: str, layer: int = -1
) -> Path:
    """Beside the TokenStore, named by what makes the embeddings (a rerun finds them)."""
    name = f"{tokens.path.name}.embeddings-{unit}{seq_len}-{model_hash[:12]}"
    name += "" if layer == -1 else f"-layer{layer}"
    return tokens.path.parent / name


class EmbeddingStore:
    """A finished (or, with ``complete=False``, any) embedding store, memory-mapped read-only."""

    def __init__(self, path: str | Path, tokens: TokenStore | None = None, complete=True):
        self.path = Path(path)
        self.meta = read_store_meta(self.path, EMBEDDINGS, EmbeddingsMeta)
        self.embeddings = load_rows(self.path / "embeddings.npy", self.meta)
        if complete and not self.meta.get("complete"):
            raise UserError(f"{self.path} is unfinished: rerun to complete it")
        if tokens is not None and self.meta["token_hash"] != tokens.content_hash:
            raise UserError(f"{self.path} embeds other tokens than {tokens.path} (hash mismatch)")

    def verify(self) -> None:
        """The rows are the ones ``finish`` checked finite and hashed (one pass over them)."""
        if hash_arrays(self.embeddings) != self.meta.get("embedding_hash"):
            raise UserError(f"{self.path}: embeddings do not match their hash (corrupted)")


def load_rows(path: Path, meta: dict) -> np.ndarray:
    shape = (meta["n_units"], meta["hidden"])
    array = open_npy(path)
    if array.shape != shape or array.dtype.str != "<f2":
        raise UserError(
            f"{path} is corrupted: holds {array.dtype.str} {array.shape}, meta.json says <f2 "
            f"{shape}"
        )
    return array


def create_or_resume(out: Path, meta: dict, overwrite: bool) -> dict:
    """Create an empty store atomically, or validate an unfinished one of the same settings to
    resume (a finished one is reused); returns its meta. Rank 0, holding the store's lock."""
    old = None
    if not overwrite:
        old = existing_run(out, EMBEDDINGS, EmbeddingsMeta, meta, RESUME_KEYS, "embeddings",
                           "remove it or choose another --embeddings")  # fmt: skip
    if old is not None:
        if old["layer"] != meta["layer"]:  # stores from before layers held the last (-1)
            raise UserError(f"{out} holds embeddings of another layer ({old['layer']}):"
                            " remove it or choose another --embeddings")  # fmt: skip
        EmbeddingStore(out, complete=False)  # validated, truncation included
        return old
    meta = {**meta, "run_id": secrets.token_hex(8)}
    with building(out, overwrite, EMBEDDINGS) as tmp:
        shape = (meta["n_units"], meta["hidden"])
        try:
            rows = np.lib.format.open_memmap(tmp / "embeddings.npy", "w+", np.float16, shape)
            reserve_disk_space(tmp / "embeddings.npy")
        except OSError as err:
            raise UserError(f"cannot create {out}/embeddings.npy: {err.strerror or err}") from None
        rows[:] = np.nan
        rows.flush()
        del rows
        (tmp / "progress").mkdir()
        write_json_atomic(tmp / "meta.json", meta)
        mark_output(tmp, EMBEDDINGS)
    return meta


class RowFile:
    """Writes rows into embeddings.npy at their offsets with pwrite (each rank its own bytes)."""

    def __init__(self, path: Path, hidden: int):
        array = open_npy(path)
        self.offset, self.row_bytes = array.offset, 2 * hidden
        del array
        self.path = path
        self.fd = os.open(path, os.O_RDWR)

    def write(self, first_row: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype="<f2").tobytes()
        written = os.pwrite(self.fd, data, self.offset + self.row_bytes * first_row)
        if written != len(data):
            raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")

    def record(self, progress: Path, done: np.ndarray) -> None:
        """Rows reach the disk, then their batches are recorded as done."""
        os.fsync(self.fd)
        if os.fstat(self.fd).st_ino != os.stat(self.path).st_ino:
            raise UserError(f"{self.path} was replaced by another process while being written")
        save_npy_atomic(progress, done)

    def close(self) -> None:
        os.close(self.fd)


def finish(out: Path, meta: dict, n_batches: int) -> dict:
    """Mark the store complete once every batch of this run is recorded; drop the records."""
    if not done_batches(out, meta, n_batches).all():
        raise RuntimeError(f"{out}: some batches were not embedded; rerun to finish")
    rows = load_rows(out / "embeddings.npy", meta)
    if not np.isfinite(rows).all():
        raise UserError(f"{out}: the model gives NaN or inf hidden states (broken weights?)")
    meta = {k: v for k, v in meta.items() if k != "run_id"}
    meta.update(complete=True, embedding_hash=hash_arrays(rows))
    del rows
    write_json_atomic(out / "meta.json", meta)
    remove_progress(out)  # after meta says complete: a kill here loses nothing
    return meta


def embed_units(
    model,
    model_name: str,
    tokens: TokenStore,
    unit: str,
    seq_len: int | None,
    out: str | Path | None = None,
    *,
    batch_size: int = 16,
    device: torch.device | None = None,
    overwrite: bool = False,
    inputs: tuple = (),
    layer: int = -1,
) -> EmbeddingStore:
    """Embed every unit of ``tokens`` with ``model`` (loaded) into an embedding store at
    ``out`` (default: beside the TokenStore); reruns resume, a finished store is reused once
    its rows match their hash, and under torchrun the ranks share the batches. Every rank
    returns the finished store."""
    check_embed_options(model, unit, batch_size, layer)
    device = device or torch.device("cpu")
    tokens.check_model_vocab(model, "the embedding model")
    seq_len = embedding_seq_len(model, unit, seq_len)
    count = n_units(tokens, unit, seq_len)
    if count == 0:
        raise UserError(f"{tokens.path} holds no {unit}s to embed (empty store)")
    model.to(device).eval()
    model_hash = model_fingerprint(model)
    out = Path(out) if out is not None else default_path(tokens, unit, seq_len, model_hash, layer)
    check_not_input(out, [tokens.path, *inputs], "--embeddings")
    from rho.io.disk import check_output_path  # beside a read-only store: one line

    check_output_path(out, "--embeddings")
    meta = {
        "format": EMBEDDINGS,
        "version": FORMAT_VERSION,
        "n_units": count,
        "hidden": int(model.config.hidden_size),
        "unit": unit,
        "seq_len": int(seq_len),
        "batch_size": int(batch_size),
        "token_hash": tokens.content_hash,
        "model": model_name,
        "model_hash": model_hash,
        "layer": int(layer),
        "dtype": "float16",
        "complete": False,
    }
    with output_lock(out) if dist.rank() == 0 else contextlib.nullcontext():
        dist.checked(lambda: create_or_resume(out, meta, overwrite), device=device)
        dist.barrier()
        meta = EmbeddingStore(out, complete=False).meta
        reused = meta["complete"]
        if not reused:
            _embed_all(model, tokens, out, meta, device)
    store = EmbeddingStore(out, tokens)
    if reused:  # bytes changed since they were checked finite and hashed are never clustered
        store.verify()
    return store


def check_embed_options(model, unit: str, batch_size: int, layer: int) -> None:
    """One line for each option out of range, before any work."""
    if unit not in UNITS:
        raise UserError(f"--unit must be one of {', '.join(UNITS)}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    depth = getattr(model.config, "num_hidden_layers", None)
    if depth is not None and not -(depth + 1) <= layer <= depth:
        raise UserError(f"--embed-layer {layer}: the embedding model has hidden states 0..{depth}"
                        f" (or -1 for the last)")  # fmt: skip


def _embed_all(model, tokens: TokenStore, out: Path, meta: dict, device) -> None:
    """Every rank embeds its unfinished batches; then the store is finished (rank 0)."""
    batches = unit_batches(tokens, meta["unit"], meta["seq_len"], int(meta["batch_size"]))
    _embed_batches(model, tokens, out, meta, batches, device)
    dist.barrier()
    if not done_batches(out, meta, len(batches)).all():
        raise RuntimeError(f"{out}: some batches were not embedded; rerun to finish")
    dist.checked(lambda: finish(out, meta, len(batches)), device=device)
    dist.barrier()


def _embed_batches(model, tokens, out: Path, meta: dict, batches, device) -> None:
    """This rank's unfinished batches (batch b to rank b mod world), written and recorded."""
    done = done_batches(out, meta, len(batches))
    mine = np.zeros(len(batches), dtype=bool)
    mine[dist.rank() :: dist.world_size()] = True
    record_file = progress_file(out, meta, dist.rank(), dist.world_size())
    my_done = done & mine
    rows = RowFile(out / "embeddings.npy", meta["hidden"])
    last_save = time.perf_counter()
    try:
        for b in np.flatnonzero(mine & ~done).tolist():
            ids, mask = batch_ids(tokens, meta["unit"], meta["seq_len"], batches[b])
            pooled = mean_last_hidden(model, ids.to(device), mask.to(device), meta["layer"])
            rows.write(batches[b].start, pooled.cpu().numpy())
            my_done[b] = True
            if time.perf_counter() - last_save >= SAVE_EVERY_S:
                rows.record(record_file, my_done)
                last_save = time.perf_counter()
                hold("embed.recorded")  # tests only: killed exactly here
    except KeyboardInterrupt:
        rows.record(record_file, my_done)  # Ctrl-C: keep every finished batch
        raise
    rows.record(record_file, my_done)
    rows.close()
