"""What a `rho experiment` ran under: rho's version and commit, the libraries whose versions
change its numbers, and the device. results.json records it (``environment``); the cached
base's key holds ``build_key`` (what changes a pretrained model's bytes), so a base pretrained
under another torch, transformers or device type is pretrained again, not reused."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

import rho
from rho.experiment.records import Environment

LIBRARIES = ("torch", "transformers", "accelerate", "tokenizers", "numpy")
CHANGES_BYTES = ("torch", "transformers")  # with the device type: a base's weights differ


def versions() -> dict[str, str | None]:
    """The installed version of each of ``LIBRARIES`` (None: not installed)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_type() -> str:
    """Where rho trains: the experiment's runs use CUDA when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_key() -> dict[str, str | None]:
    """What a pretrained base's bytes depend on beyond its settings and data."""
    found = versions()
    return {**{name: found[name] for name in CHANGES_BYTES}, "device": device_type()}


def git(*args: str) -> subprocess.CompletedProcess | None:
    source = Path(rho.__file__).resolve().parent
    try:
        return subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, check=False
        )
    except OSError:  # no git
        return None


def commit() -> tuple[str | None, bool | None]:
    """(the commit rho runs from, whether tracked files differ from it); (None, None) when
    rho's sources are not tracked by a git checkout (an installed wheel, say, even inside
    another project's repository)."""
    tracked = git("ls-files", "--error-unmatch", "__init__.py")
    head = git("rev-parse", "HEAD")
    if tracked is None or tracked.returncode or head is None or head.returncode:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return head.stdout.strip(), bool(status and status.stdout.strip())


def environment() -> Environment:
    cuda = device_type() == "cuda"
    sha, dirty = commit()
    return Environment(
        rho=rho.__version__,
        commit=sha,
        dirty=dirty,
        python=platform.python_version(),
        **versions(),
        device=device_type(),
        device_name=torch.cuda.get_device_name(0) if cuda else None,
        platform=platform.platform(),
    )
