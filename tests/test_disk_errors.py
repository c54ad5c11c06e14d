"""A full or read-only filesystem is one line in every command, never a traceback; a tokenize
that ran out of space removes its partial parts.

A full disk is simulated without mounting: the command runs in a subprocess whose file size
limit (RLIMIT_FSIZE, SIGXFSZ ignored) refuses any write past a few kB with EFBIG, as a full disk
refuses it with ENOSPC. A read-only filesystem needs a read-only tmpfs mount (root); the tests
that need one are skipped where mounting is not allowed."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S

from rho.cli import main
from rho.scoring.score import score_store

SEQ = "32"


def limited(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_limited(limit: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rho", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, preexec_fn=limited(limit),
        timeout=HANG_GUARD_S,
    )  # fmt: skip


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0].lower(), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def losses(tmp_path_factory, model_dir, token_store):
    out = tmp_path_factory.mktemp("losses") / "L"
    return score_store(model_dir, token_store, out, int(SEQ), batch_size=16, progress=False)


@pytest.mark.slow
def test_a_full_disk_during_tokenize_is_one_line_and_its_parts_go(tmp_path, corpus, token_store):
    tokenizer = token_store.tokenizer_dir
    limit = max(p.stat().st_size for p in tokenizer.iterdir()) + 4096  # the parts' tokens: more
    assert (token_store.path / "tokens.npy").stat().st_size > 2 * limit
    args = ("tokenize", corpus, "--tokenizer", tokenizer, "--out", tmp_path / "S")
    proc = run_limited(limit, *args, cwd=tmp_path)
    one_line(proc, "file too large", "the partial parts were removed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, parts, scratch or lock


@pytest.mark.slow
@pytest.mark.parametrize("command", ["score", "prune", "train", "eval"])
def test_a_full_disk_is_one_line(tmp_path, command, token_store, model_dir, losses):
    out = tmp_path / "out"
    args, limit = {
        "score": (("--model", model_dir, "--tokens", token_store.path, "--seq-len", SEQ), 16384),
        "prune": (("--tokens", token_store.path, "--losses", losses.path, "--keep", "0.5")
                  + ("--unit", "window"), 16384),
        "train": (("--tokens", token_store.path, "--preset", "tiny", "--selection", "none")
                  + ("--seq_len", SEQ, "--max_steps", "1", "--use_cpu", "--report_to", "none"),
                  16384),
        "eval": (("--model", model_dir, "--tokens", token_store.path, "--seq-len", SEQ)
                 + ("--quiet",), 512),  # eval.json: about 1 kB
    }[command]  # fmt: skip
    flag = "--output_dir" if command == "train" else "--out"
    line = one_line(run_limited(limit, command, *args, flag, out, cwd=tmp_path))
    assert "file too large" in line.lower(), line


@pytest.fixture
def read_only(tmp_path):
    """A directory on a read-only filesystem (root ignores permissions: a read-only tmpfs)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only filesystem here: {mounted.stderr!r}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_train_on_a_read_only_filesystem_is_one_line(read_only, token_store, capsys):
    base = ["train", "--tokens", str(token_store.path), "--preset", "tiny", "--selection", "none"]
    base += ["--seq_len", SEQ, "--max_steps", "1", "--use_cpu", "--report_to", "none"]
    for out in (read_only, read_only / "run"):  # the mount itself (empty) and a new directory
        assert main([*base, "--output_dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert "read-only filesystem" in err and err.count("\n") == 1, err
