"""A store's files on disk: ``meta.json`` read against its schema, ``.npy`` arrays opened and
checked against their meta (dtype, shape, length, offsets, ranges), new arrays allocated with
their disk space reserved. Every store reader (rho.io.store, rho.scoring.loss_writer,
rho.scoring.embed) opens its
files here, so a damaged file is one UserError naming it, whichever command reads it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from tokenize import TokenError

import numpy as np

from rho.errors import UserError
from rho.io.files import one_line
from rho.io.reading import blocks
from rho.io.schema import LossStoreMeta, Strict, read_json_file, show, validate

FORMAT_VERSION = 1
TOKEN_STORE = "rho.TokenStore"
LOSS_STORE = "rho.LossStore"
# What numpy raises for a damaged .npy: a header it cannot parse goes through Python's tokenizer
# (TokenError) and ast.literal_eval (SyntaxError, RecursionError, MemoryError), a shape too big
# for the file through mmap (ValueError, OverflowError).
NPY_ERRORS = (
    ValueError, OSError, EOFError, TokenError, SyntaxError, RecursionError, MemoryError,
    OverflowError, TypeError,
)  # fmt: skip
CHUNK = 1 << 22  # entries read at a time by whole-array passes (hashes, checks, statistics)


def open_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """A .npy, memory-mapped (or read whole, for small files); a missing, truncated or damaged
    one (header included) is a one-line UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except NPY_ERRORS as err:
        raise UserError(f"{path} is truncated or corrupted ({one_line(err, 80)})") from None


def load_npy(
    path: Path, expected_len: int | None = None, dtypes: tuple[str, ...] | None = None
) -> np.ndarray:
    """Memory-map a 1-D .npy of one of ``dtypes`` (names, in this machine's byte order, as rho
    writes them) holding ``expected_len`` entries; anything else is one line."""
    array = open_npy(path)
    if array.ndim != 1 or (dtypes is not None and not any(array.dtype == d for d in dtypes)):
        raise UserError(
            f"{path} is corrupted: holds a {array.dtype.str} array of shape {array.shape}, "
            f"expected 1-D {' or '.join(dtypes or ('any dtype',))}"
        )
    if expected_len is not None and len(array) != expected_len:
        raise UserError(f"{path} holds {len(array)} entries, meta.json says {expected_len}")
    return array


def check_offsets(path: Path, offsets: np.ndarray, n_tokens: int) -> None:
    """Document starts: from 0 to ``n_tokens``, strictly increasing (no empty document), read in
    blocks (a store of millions of documents stays cheap to open)."""
    if n_tokens == 0:
        raise UserError(f"{path.parent} holds no tokens (corrupted store)")
    if offsets[0] != 0 or offsets[-1] != n_tokens:
        raise UserError(f"{path} does not span the {n_tokens:,} tokens (corrupted)")
    last = -1
    for block in blocks(offsets, CHUNK):
        if block[0] <= last or (len(block) > 1 and np.diff(block).min() < 1):
            raise UserError(f"{path} is not increasing (corrupted)")
        last = block[-1]


def check_domains(path: Path, codes: np.ndarray, names: list[str]) -> None:
    """Per-document domain indices into the meta's ``domains`` list."""
    low, high = 0, 0
    for block in blocks(codes, CHUNK):
        low, high = min(low, int(block.min())), max(high, int(block.max()))
    if low < 0 or high >= len(names):
        bad = low if low < 0 else high
        raise UserError(
            f"{path} holds domain index {bad}, but meta.json names {len(names)} domains (corrupted)"
        )


def read_store_meta(path: Path, kind: str, schema: type[Strict]) -> dict:
    """A store's meta.json, checked: its format is ``kind`` ("rho.TokenStore" ...), its version
    is ours, and every field has the type and range of ``schema`` (rho.io.schema); a field left
    out takes the schema's default, so readers index every field they rely on safely."""
    name = kind.removeprefix("rho.")
    if not (path / "meta.json").is_file():
        raise UserError(f"{path} is not a {name} directory (no meta.json)")
    meta = read_json_file(path / "meta.json")
    if meta.get("format") != kind:
        raise UserError(f"{path} is not a {name} (meta.json format is wrong)")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: unsupported {name} version {show(meta.get('version'))}")
    validate(schema, meta, f"{path}/meta.json is corrupted")
    for key, field in schema.model_fields.items():
        if key not in meta and not field.is_required() and field.default is not None:
            meta[key] = field.get_default(call_default_factory=True)
    return meta


def read_loss_meta(path: str | Path) -> dict:
    """A LossStore's meta.json, validated (finished or not)."""
    return read_store_meta(Path(path), LOSS_STORE, LossStoreMeta)


def allocate_npy(path: Path, length: int, dtype) -> np.memmap:
    """A new 1-D .npy of ``length`` entries, memory-mapped for writing, with its disk space
    reserved up front: a full disk is a one-line error now, not a SIGBUS when a page of the
    map is written later (a sparse file's pages get their blocks only then)."""
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(length,))
        reserve_disk_space(path)
    except OSError as err:
        free = shutil.disk_usage(Path(path).parent).free
        need = np.dtype(dtype).itemsize * length
        raise UserError(
            f"cannot create {path} ({need:,} bytes, {free:,} free on its disk): "
            f"{err.strerror or err}"
        ) from None
    return array


def reserve_disk_space(path: Path) -> None:
    """Give every byte of a file its disk blocks (posix_fallocate); where the filesystem cannot,
    at least check that the free space suffices."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            if shutil.disk_usage(Path(path).parent).free < size:
                raise OSError(errno.ENOSPC, "not enough free disk space") from None
    finally:
        os.close(fd)
