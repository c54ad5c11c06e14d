"""Reading files and large arrays without growing the process: hashes of files and arrays, and
a store's arrays read block by block or window by window from their files."""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def sha256_file(path: str | Path, h=None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Stores are memory-mapped, but a process that reads a whole store (or random windows all over
# one) through its map keeps every page it touched mapped, the kernel's fault-around adding 64 KiB
# per touch: its RSS grows with the store. The readers below read such an array from its file
# instead (the kernel's page cache keeps the pages, and reclaims them when it must).


def _whole_map(array: np.ndarray) -> bool:
    """A whole memory-mapped 1-D .npy (not a slice of one: a slice's ``offset`` is its
    parent's)."""
    return (
        isinstance(array, np.memmap)
        and isinstance(array.base, mmap.mmap)
        and bool(array.filename)
        and array.ndim == 1
        and array.flags.c_contiguous
    )


def blocks(array: np.ndarray, size: int = 1 << 22) -> Iterator[np.ndarray]:
    """The consecutive blocks of a 1-D array, as fresh arrays; a whole memory-mapped one is read
    from its file, so a pass over a whole store leaves the process's RSS flat."""
    if not _whole_map(array):
        for start in range(0, len(array), size):
            yield np.ascontiguousarray(array[start : start + size])
        return
    with open(array.filename, "rb") as f:
        f.seek(array.offset)
        for start in range(0, len(array), size):
            yield np.fromfile(f, dtype=array.dtype, count=min(size, len(array) - start))


def read_slice(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]`` (1-D, a step of 1) as a fresh array; from the file for a whole
    memory-mapped one, so windows read all over a store leave the process's RSS flat."""
    start, stop = max(0, start), min(stop, len(array))
    if not _whole_map(array) or stop <= start:
        return np.array(array[start:stop])
    with open(array.filename, "rb") as f:
        f.seek(array.offset + start * array.itemsize)
        return np.fromfile(f, dtype=array.dtype, count=stop - start)


def hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for array in arrays:
        array = array if isinstance(array, np.ndarray) else np.asarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        for block in blocks(array):
            h.update(block.tobytes())
    return h.hexdigest()


def hash_dir(path: str | Path) -> str:
    """Content hash of every file under a directory (names and bytes)."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        sha256_file(file, h)
    return h.hexdigest()
