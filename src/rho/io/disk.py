"""Writes the filesystem refuses (full, over quota, read-only, not ours): the user's to fix, so
each is one line (rho.cli), never a traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from rho.errors import UserError
from rho.io.files import one_line

# A filesystem that is full, read-only or not ours to write: the user's to fix, one line.
DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the filesystem (or the file size limit)",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# Writers that wrap the OS error in their own (torch.save, safetensors): recognised by its text.
_DISK_TEXTS = {os.strerror(code): code for code in DISK_ERRORS} | {
    "file write failed": errno.ENOSPC
}


def disk_error_message(err: BaseException, output: str | Path | None = None) -> str | None:
    """One line for a write the filesystem refused (``err`` or an error it was raised from),
    naming the path the error names, else ``output``; None for any other error."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRORS:
            where = err.filename or output or "writing the output"
            return f"{where}: {DISK_ERRORS[err.errno]} ({_fix(err.errno)})"
        text = str(err)
        for known, code in _DISK_TEXTS.items():
            if known in text:
                where = f"{output}: " if output else ""
                return f"{where}{DISK_ERRORS[code]}: {one_line(text, 200)} ({_fix(code)})"
        err = err.__cause__ or err.__context__
    return None


def _fix(code: int) -> str:
    full = code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return "free space, or write elsewhere" if full else "write elsewhere"


def check_output_path(path: str | Path, flag: str = "--out") -> None:
    """Before any work: an output must be creatable where it is asked for. A file where a
    directory is needed (``--out afile/S``) or a directory rho cannot write in (read-only
    filesystem, no permission) is a one-line error, not a traceback after the work."""
    path = Path(path).absolute()
    parent = path.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {path}: cannot write in {existing} (read-only filesystem or no permission)"
        )
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {path}: cannot write in it (read-only filesystem or no permission)"
        )
