"""Files: the only place that writes, replaces or locks anything on disk.

- Atomic writes: a temporary sibling, fsync, then rename, so a reader (or a rerun after kill -9
  or a power cut) sees the old file or the new one, never half of one.
- Outputs: a stage builds its output in a temporary sibling directory and moves it into place
  at the end (``prepare_output`` / ``commit_output``); ``--overwrite`` may replace only an
  output rho made of the same kind, never an input, ``.``, a parent of an input, or a
  directory with other content (``check_replaceable``).
- Locks: every writer of a store or run directory holds an OS lock on it (``output_lock``),
  released by the OS when the process dies, so kill -9 leaves no stale lock; a second writer is
  refused with the holder's PID.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from rho.errors import UserError
from rho.io.reading import blocks

# A directory that holds this file was made by rho as a whole output of the named kind (run
# directories, demo/experiment directories, analysis and eval outputs); stores are known by
# their meta.json.
MARKER = ".rho-output"


def one_line(err: BaseException | str, limit: int = 200) -> str:
    """An error message squeezed onto one line (the CLI prints user errors as one line)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


# --- Atomic writes ---------------------------------------------------------------------------


def write_atomic(path: str | Path, write: Callable, suffix: str = "") -> Path:
    """Write through ``write(binary_file)`` into a temporary sibling, fsync, rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def jsonable(value):
    """NaN and inf become null (strict JSON); numpy scalars and arrays become Python values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | Path, data: dict, sort_keys: bool = True) -> Path:
    """Strict JSON (NaN as null), non-ASCII kept, written atomically."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=sort_keys, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


def save_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    return write_atomic(path, lambda f: np.save(f, array), suffix=".npy")


def read_json(path: str | Path) -> dict:
    """A JSON object from a file; a missing, oversized or damaged file (deep nesting, huge
    integers, lone surrogates included) is a one-line UserError (rho.schema's bounded reader)."""
    from rho.io.schema import read_json_file

    return read_json_file(path)


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a .jsonl file (missing file: none); unreadable lines are skipped."""
    from rho.io.schema import parse_json

    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = parse_json(line, str(path))
        except UserError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` of a 1-D array, block by block (a memory-mapped one through ``blocks``)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        for block in blocks(array):
            f.write(block.tobytes())


# --- Outputs: what --overwrite may replace ------------------------------------------------------


def output_kind(path: str | Path) -> str | None:
    """What rho output a directory is: a store's meta.json format, a marker's kind, or None."""
    path = Path(path)
    if (path / MARKER).is_file():
        return (path / MARKER).read_text().split("\n", 1)[0].strip() or None
    meta = path / "meta.json"
    if meta.is_file():
        try:  # the bounded reader: a hostile meta.json is "not rho's", never a RecursionError
            return read_json(meta).get("format")
        except (UserError, AttributeError):
            return None
    return None


def mark_output(path: str | Path, kind: str) -> None:
    """Mark a directory as a whole rho output of ``kind`` (so a rerun may replace it)."""
    write_text_atomic(Path(path) / MARKER, f"{kind}\nmade by rho; --overwrite may replace it\n")


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_not_input(path: str | Path, inputs: Iterable, what: str = "--out") -> None:
    """An output may not be, hold or sit inside any of the command's inputs."""
    target = Path(path).resolve()
    for item in inputs:
        if item is not None and _overlaps(target, Path(item).resolve()):
            raise UserError(f"{what} {path} overlaps the input {item}: choose another path")


def check_replaceable(
    path: str | Path, kind: str, inputs: Iterable = (), what: str = "--out"
) -> None:
    """Refuse outputs that would destroy something: ``path`` may not overlap an input, be the
    working directory or one of its parents, and (when it exists) must be a directory rho made
    as a ``kind`` output. Call with every input of the command."""
    path = Path(path)
    check_not_input(path, inputs, what)
    target, cwd = path.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UserError(f"{what} {path} is the working directory or a parent of it")
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        raise UserError(f"{what} {path} exists and is not a directory rho made: remove it yourself")
    found = output_kind(path)
    if found != kind:
        content = sorted(p.name for p in path.iterdir())[:5]
        listing = ", ".join(content) if content else "nothing"
        said = f"a {found}" if found else f"a directory rho did not make (holds {listing})"
        raise UserError(f"{what} {path} is {said}, not a {kind}: rho will not replace it")


def check_claimable(
    path: str | Path, kind: str, inputs: Iterable = (), what: str = "--out"
) -> bool:
    """``claim_output_dir``'s check alone (nothing created): True when ``path`` holds a ``kind``
    output already."""
    path = Path(path)
    empty = path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    if not empty:
        check_replaceable(path, kind, inputs, what)
    else:
        check_not_input(path, inputs, what)
        if path.resolve() in Path.cwd().resolve().parents:
            raise UserError(f"{what} {path} is a parent of the working directory")
    return path.exists() and not empty


def claim_output_dir(
    path: str | Path, kind: str, inputs: Iterable = (), what: str = "--out"
) -> bool:
    """The one check for a directory output filled in place (a run directory, an analysis's
    output): it must be new, empty, or one rho made as a ``kind`` output (``check_replaceable``),
    never a directory holding someone else's files. Creates and marks it; returns True when it
    already held a ``kind`` output (the caller resumes, refuses or clears it)."""
    existed = check_claimable(path, kind, inputs, what)
    Path(path).mkdir(parents=True, exist_ok=True)
    if not existed:
        mark_output(path, kind)
    return existed


def clear_output_dir(path: str | Path) -> None:
    """Empty a directory output rho made (``--overwrite``), keeping its marker."""
    for child in Path(path).iterdir():
        if child.name != MARKER:
            remove_path(child)


def fsync_path(path: str | Path) -> None:
    """A file's bytes, or a directory's entries (a rename into it), reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Every file under ``path`` (and the directories holding them) reaches the disk."""
    path = Path(path)
    for item in [*sorted(p for p in path.rglob("*") if not p.is_symlink()), path]:
        fsync_path(item)


def clean_stale_scratch(parent: Path, name: str) -> None:
    """Remove ``.NAME.tmp-PID-*`` siblings whose writer process is gone (killed mid-write)."""
    for p in parent.glob(f".{name}.tmp-*"):
        if _owner_dead(p):
            remove_path(p)


def _owner_dead(path: Path) -> bool:
    """Scratch names are ``.NAME.tmp-PID-...``: True when that process no longer exists."""
    pid = path.name.rsplit(".tmp-", 1)[-1].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def prepare_output(path: str | Path, overwrite: bool, kind: str | None = None) -> Path:
    """Refuse to clobber an existing output unless asked (and, with ``kind``, unless it is a rho
    output of that kind); return a fresh temporary sibling to build the new output in."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserError(f"{path} already exists (pass --overwrite to replace it)")
    if overwrite and kind is not None:
        check_replaceable(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_scratch(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; the finished output gets the usual mode
    return tmp


def remove_path(path: str | Path) -> None:
    """Delete a file or a directory tree (best effort)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def commit_output(tmp: Path, path: str | Path) -> None:
    """Move a finished temporary directory into place; the old one goes only once the new is in."""
    path = Path(path)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.tmp-{os.getpid()}-old")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:  # put the old output back rather than lose it
            os.replace(old, path)
        raise
    if old is not None:
        remove_path(old)


@contextmanager
def building(path: str | Path, overwrite: bool, kind: str | None = None) -> Iterator[Path]:
    """Build an output in a temporary sibling and commit it on success; drop it on failure."""
    tmp = prepare_output(path, overwrite, kind)
    try:
        yield tmp
        commit_output(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- Locks -------------------------------------------------------------------------------------


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextmanager
def output_lock(path: str | Path, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive OS lock on the output ``path`` (a sibling ``.NAME.lock`` file) for the
    block. Another holder: a one-line UserError naming its PID, or with ``wait`` (a shared cache
    entry) block until it is done. The kernel drops the lock when the process dies, so a killed
    writer never blocks the next run."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"{path} is being written by another rho process (PID {holder}): wait for "
                    "it to finish or stop it"
                ) from None
            raise
        try:  # the holder before us may have removed the file we opened: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # unlinked while held: a waiter re-checks the inode
        os.close(fd)


def check_output_file(
    path: str | Path, signature: str, overwrite: bool, inputs: Iterable = ()
) -> None:
    """A single-file output may replace only a file rho wrote (one whose first 4 KB hold
    ``signature``), unless ``overwrite``; never a directory, a link or an input."""
    path = Path(path)
    check_not_input(path, [p for p in inputs if p is not None], "--out")
    if path.is_dir():
        raise UserError(f"--out {path} is a directory: give a file name")
    if path.is_symlink():
        raise UserError(f"--out {path} is a symbolic link: give a plain file name")
    link = _linked_parent(path)
    if link is not None and path.exists():
        raise UserError(
            f"--out {path} is reached through the symbolic link {link}: rho will not replace a "
            "file through it (give its real path)"
        )
    if path.exists() and not overwrite:
        with open(path, "rb") as f:
            head = f.read(4096)
        if signature.encode() not in head:
            raise UserError(f"--out {path} exists and rho did not write it: pass --overwrite")


def _linked_parent(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that is a symbolic link, or None."""
    for parent in reversed(Path(os.path.abspath(path)).parents):
        if parent.is_symlink():
            return parent
    return None
