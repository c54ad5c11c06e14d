"""What a `rho experiment` records about where it ran (rho.experiment.environment): the
versions, the device, and rho's git commit when its sources are a git checkout (real git
repositories made here)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
import transformers

import rho
from rho.experiment import environment

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="no git")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return done.stdout.strip()


def repository(root: Path) -> Path:
    """A git repository holding a package's __init__.py, committed; returns that file."""
    git(root, "init", "-q")
    package = root / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return package / "__init__.py"


def test_the_environment_is_recorded_typed():
    env = environment.environment()
    assert env.rho == rho.__version__ and env.python == platform.python_version()
    assert env.torch == torch.__version__ and env.transformers == transformers.__version__
    assert env.tokenizers == tokenizers.__version__ and env.numpy == np.__version__
    assert isinstance(env.accelerate, str) and env.platform
    cuda = torch.cuda.is_available()
    assert env.device == ("cuda" if cuda else "cpu")
    assert env.device_name == (torch.cuda.get_device_name(0) if cuda else None)
    assert env.commit is None or len(env.commit) == 40
    assert environment.build_key() == {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": env.device,
    }


@needs_git
def test_the_commit_of_a_git_checkout_and_whether_it_is_dirty(tmp_path, monkeypatch):
    source = repository(tmp_path)
    monkeypatch.setattr(rho, "__file__", str(source))
    assert environment.commit() == (git(tmp_path, "rev-parse", "HEAD"), False)
    source.write_text("x = 2\n")
    assert environment.commit() == (git(tmp_path, "rev-parse", "HEAD"), True)
    assert environment.environment().dirty is True


@needs_git
def test_no_commit_outside_a_checkout_and_no_error(tmp_path, monkeypatch):
    loose = tmp_path / "site-packages" / "rho" / "__init__.py"
    loose.parent.mkdir(parents=True)
    loose.write_text("")
    monkeypatch.setattr(rho, "__file__", str(loose))
    assert environment.commit() == (None, None)
    # an installed copy inside another project's repository, untracked there: not its commit
    other = tmp_path / "project"
    other.mkdir()
    repository(other)
    venv = other / ".venv" / "rho" / "__init__.py"
    venv.parent.mkdir(parents=True)
    venv.write_text("")
    monkeypatch.setattr(rho, "__file__", str(venv))
    assert environment.commit() == (None, None)
    assert environment.environment().commit is None


def test_no_git_at_all_is_no_commit(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert environment.commit() == (None, None)
