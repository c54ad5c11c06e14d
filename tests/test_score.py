"""`rho score`: losses under the alignment rule, resume after Ctrl-C / kill -9, torchrun, errors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import HANG_GUARD_S, SUBPROCESS_ENV, hold_env, run_rho, torch_threads, wait_until_held

from rho.cli import main
from rho.errors import UserError
from rho.io.inspect_store import describe
from rho.io.store import LossStore, TokenStore, window_starts
from rho.models import build_model, load_model
from rho.scoring import score as score_mod
from rho.scoring import windows as windows_mod
from rho.scoring.score import score_store
from rho.scoring.windows import batch_windows

SEQ = 37  # does not divide the corpus: the last window is partial
pytestmark = pytest.mark.usefixtures("one_thread")


def comparable_meta(path) -> dict:
    return json.loads((path / "meta.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, token_store, model_dir):
    """One uninterrupted in-process run (batch size 1, so subprocess runs can be killed midway)."""
    out = tmp_path_factory.mktemp("ref") / "losses"
    with torch_threads(1):
        return score_store(model_dir, token_store, out, 32, batch_size=1, progress=False)


def test_losses_equal_direct_forward(tmp_path, token_store, model_dir):
    assert token_store.n_tokens % SEQ != 0
    store = score_store(model_dir, token_store, tmp_path / "l", SEQ, batch_size=5, progress=False)
    losses = np.asarray(store.ref_loss, dtype=np.float32)
    nan = np.isnan(losses)
    np.testing.assert_array_equal(nan, window_starts(token_store.n_tokens, SEQ))
    model = load_model(model_dir).eval()
    direct = np.full(token_store.n_tokens, np.nan, dtype=np.float32)
    with torch.no_grad():
        for w in range(token_store.n_windows(SEQ)):
            ids = torch.from_numpy(token_store.window(w, SEQ))[None]
            logits = model(input_ids=ids).logits[0].float()
            loss = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
            direct[w * SEQ + 1 : w * SEQ + ids.shape[1]] = loss.numpy()
    assert token_store.n_tokens - (token_store.n_windows(SEQ) - 1) * SEQ < SEQ  # partial last
    np.testing.assert_allclose(losses[~nan], direct[~nan], rtol=1e-3, atol=1e-3)  # float16
    assert store.complete and store.seq_len == SEQ
    assert store.meta["mean_loss"] == pytest.approx(float(np.mean(direct[~nan])), rel=1e-3)
    assert not (tmp_path / "l" / "progress").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l"]  # no temporary left behind


def test_batch_windows_are_fixed_and_cover_everything():
    batches = batch_windows(100, 8, 4)  # 12 full windows + 1 partial
    assert [list(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]
    assert [list(b) for b in batch_windows(96, 8, 5)] == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
        [10, 11],
    ]


def test_ctrl_c_in_process_saves_progress_and_resumes(
    tmp_path, monkeypatch, token_store, model_dir, reference
):
    real, calls = windows_mod.window_losses, {"n": 0}

    def interrupted(model, ids, *rest):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return real(model, ids, *rest)

    monkeypatch.setattr(windows_mod, "window_losses", interrupted)
    monkeypatch.setattr(score_mod, "SAVE_EVERY_S", 1e9)  # only the interrupt records progress
    out = tmp_path / "l"
    with pytest.raises(KeyboardInterrupt):
        score_store(model_dir, token_store, out, 32, batch_size=1, progress=False)
    (record,) = (out / "progress").glob("rank0-of-1-*.npy")  # this run's record
    done = np.load(record)
    assert done.sum() == 39
    text = describe(out)
    assert "complete: no" in text
    with pytest.raises(UserError, match="unfinished"):
        LossStore(out, token_store)
    monkeypatch.setattr(windows_mod, "window_losses", real)
    score_store(model_dir, token_store, out, 32, batch_size=1, progress=False)
    assert (out / "ref_loss.npy").read_bytes() == (reference.path / "ref_loss.npy").read_bytes()
    assert comparable_meta(out) == comparable_meta(reference.path)


def batches_done(progress: Path) -> int:
    """Batches recorded as done by rank 0 of 1 in a store's progress/ (0 before any record)."""
    records = list(progress.glob("rank0-of-1-*.npy"))
    return int(np.load(records[0]).sum()) if records else 0


def interrupt_midway(args: list, sig: signal.Signals, progress, n_batches: int) -> str:
    """Start `rho ARGS` (recording progress after every batch), send ``sig`` while it waits
    after recording a fifth of the batches (rho.testhook), and return its stderr."""
    held = progress.parent.parent / "held"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rho", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **hold_env("score.recorded", max(1, n_batches // 5), held),
            "RHO_SCORE_SAVE_EVERY_S": "0",  # record after every batch
        },
    )
    try:
        wait_until_held(held, proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
        held.unlink(missing_ok=True)
    expected = 130 if sig == signal.SIGINT else -signal.SIGKILL
    assert proc.returncode == expected, stderr[-2000:]
    assert 0 < batches_done(progress) < n_batches, "the run ended before it was interrupted"
    return stderr


@pytest.mark.slow
def test_interrupted_subprocess_resumes_byte_identical(
    tmp_path, token_store, model_dir, reference, capsys
):
    """Ctrl-C (exit 130), then kill -9 of the rerun, then a rerun: same bytes as one clean run."""
    out = tmp_path / "l"
    args = ["score", "--model", model_dir, "--tokens", token_store.path, "--out", out]
    args += ["--seq-len", "32", "--batch-size", "1"]
    progress = out / "progress"
    n_batches = token_store.n_windows(32)

    stderr = interrupt_midway(args, signal.SIGINT, progress, n_batches)
    assert "Traceback" not in stderr and stderr.rstrip().endswith("rho score: interrupted")
    after_ctrl_c = batches_done(progress)
    interrupt_midway(args, signal.SIGKILL, progress, n_batches)
    assert batches_done(progress) > after_ctrl_c  # the second run resumed, then got killed
    assert not comparable_meta(out)["complete"]
    assert "complete: no" in run_rho("inspect", out).stdout

    assert main([str(a) for a in args]) == 0
    summary = capsys.readouterr().out
    scored = int(summary.split("scored ")[1].split(" tokens")[0].replace(",", ""))
    assert scored < token_store.n_tokens  # it resumed rather than started over
    assert (out / "ref_loss.npy").read_bytes() == (reference.path / "ref_loss.npy").read_bytes()
    assert comparable_meta(out) == comparable_meta(reference.path)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "ref_loss.npy"]


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one_process(tmp_path, token_store, model_dir):
    one = score_store(model_dir, token_store, tmp_path / "one", SEQ, batch_size=4, progress=False)
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "rho", "score", "--model", str(model_dir), "--tokens", str(token_store.path)]
    cmd += ["--out", str(out), "--seq-len", str(SEQ), "--batch-size", "4", "--device", "cpu"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, env=SUBPROCESS_ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each batch has the same windows and shapes whichever rank scores it, and CPU kernels are
    # deterministic for a given shape, so the bytes match exactly (checked, not assumed).
    assert (out / "ref_loss.npy").read_bytes() == (one.path / "ref_loss.npy").read_bytes()
    meta_two = comparable_meta(out)
    meta_one = comparable_meta(one.path)
    assert meta_two.pop("model") == str(model_dir)
    assert meta_one.pop("model") == str(model_dir)
    assert meta_two == meta_one
    assert f"scored {token_store.n_tokens:,} tokens" in proc.stdout  # summed over both ranks


# --- Resume bookkeeping and bad inputs ---------------------------------------------------------


def test_rerun_of_complete_store_is_a_no_op(tmp_path, token_store, model_dir, capsys):
    out = tmp_path / "l"
    score_store(model_dir, token_store, out, SEQ, progress=False)
    before = (out / "ref_loss.npy").stat().st_mtime_ns
    assert (
        main(
            [
                "score",
                "--model",
                str(model_dir),
                "--tokens",
                str(token_store.path),
                "--out",
                str(out),
                "--seq-len",
                str(SEQ),
            ]
        )
        == 0
    )
    assert "already complete" in capsys.readouterr().out
    assert (out / "ref_loss.npy").stat().st_mtime_ns == before


def cli_error(capsys, *args) -> str:
    """Run `rho ARGS` in-process; it must fail with exit 2 and a one-line error."""
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rho {args[0]}: error: ") and err.count("\n") == 1, err
    return err


def score_args(model, tokens, out, seq_len=SEQ, *extra):
    return [
        "score",
        "--model",
        model,
        "--tokens",
        tokens,
        "--out",
        out,
        "--seq-len",
        seq_len,
        *extra,
    ]


def test_score_refuses_a_different_run_in_the_same_output(tmp_path, token_store, model_dir, capsys):
    out = tmp_path / "l"
    score_store(model_dir, token_store, out, SEQ, progress=False)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    err = cli_error(capsys, *score_args(model_dir, token_store.path, out, 16))
    assert "seq_len differ" in err and "--overwrite" in err
    other = tmp_path / "other-model"
    build_model("tiny", token_store.vocab_size, seed=2).save_pretrained(other)
    assert "model_hash differ" in cli_error(capsys, *score_args(other, token_store.path, out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot  # untouched
    # --overwrite replaces it.
    assert (
        main([str(a) for a in score_args(model_dir, token_store.path, out, 16, "--overwrite")]) == 0
    )
    assert LossStore(out).seq_len == 16


def test_losses_of_other_tokens_or_seq_len_are_refused(
    tmp_path, token_store, model_dir, corpus, capsys
):
    from rho.data.tokenize import tokenize_corpus

    store = score_store(model_dir, token_store, tmp_path / "l", SEQ, progress=False)
    LossStore(store.path, token_store, SEQ)  # the matching pair opens
    with pytest.raises(UserError, match="seq_len 37, but seq_len 64"):
        LossStore(store.path, token_store, 64)
    lines = corpus.read_text().splitlines()[:50]
    (tmp_path / "half.jsonl").write_text("\n".join(lines) + "\n")
    other = tokenize_corpus(
        [str(tmp_path / "half.jsonl")],
        tmp_path / "other",
        tokenizer=token_store.tokenizer_dir,
        progress=False,
    )
    with pytest.raises(UserError, match="token hash mismatch"):
        LossStore(store.path, other, SEQ)
    # Through the CLI: resuming into losses of other tokens.
    assert "token_hash differ" in cli_error(capsys, *score_args(model_dir, other.path, store.path))


def test_model_with_smaller_vocabulary(tmp_path, token_store, capsys):
    small = tmp_path / "small"
    build_model("tiny", token_store.vocab_size - 100).save_pretrained(small)
    err = cli_error(capsys, *score_args(small, token_store.path, tmp_path / "l"))
    assert "vocabulary" in err
    assert not (tmp_path / "l").exists()


def test_bad_score_arguments(tmp_path, token_store, model_dir, capsys):
    t = token_store.path
    assert "does not exist" in cli_error(capsys, *score_args(tmp_path / "nope", t, tmp_path / "l"))
    assert "not a TokenStore" in cli_error(capsys, *score_args(model_dir, tmp_path, tmp_path / "l"))
    assert "seq_len must be at least 2" in cli_error(
        capsys, *score_args(model_dir, t, tmp_path / "l", 1)
    )
    assert "--batch-size" in cli_error(
        capsys, *score_args(model_dir, t, tmp_path / "l", SEQ, "--batch-size", "0")
    )
    assert "exceeds the model's" in cli_error(
        capsys, *score_args(model_dir, t, tmp_path / "l", 100000)
    )
    # --out must never be (or contain) the TokenStore, even with --overwrite.
    assert "overlaps" in cli_error(capsys, *score_args(model_dir, t, t, SEQ, "--overwrite"))
    TokenStore(t)  # still whole
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_truncated_or_corrupted_loss_store(tmp_path, token_store, model_dir, capsys):
    store = score_store(model_dir, token_store, tmp_path / "l", SEQ, progress=False)
    path = store.path / "ref_loss.npy"
    raw = path.read_bytes()
    # flipped bytes: the file still opens, --verify catches them
    flipped = bytearray(raw)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    assert main(["inspect", str(store.path)]) == 0
    capsys.readouterr()
    assert "do not match their hash" in cli_error(capsys, "inspect", "--verify", store.path)
    # truncated: scoring into it (resume) and inspecting both fail cleanly
    path.write_bytes(raw[:-100])
    assert "truncated or corrupted" in cli_error(capsys, "inspect", store.path)
    with pytest.raises(UserError, match="truncated or corrupted"):
        LossStore(store.path)
    meta = json.loads((store.path / "meta.json").read_text())
    meta["complete"] = False
    (store.path / "meta.json").write_text(json.dumps(meta))
    err = cli_error(capsys, *score_args(model_dir, token_store.path, store.path))
    assert "truncated or corrupted" in err
    # garbage header
    path.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': garbage" + raw[30:])
    assert "truncated or corrupted" in cli_error(capsys, "inspect", store.path)


def test_corrupted_progress_file_is_rescored(tmp_path, token_store, model_dir, reference):
    out = tmp_path / "l"
    shutil.copytree(reference.path, out)
    meta = json.loads((out / "meta.json").read_text())
    meta.update(complete=False, run_id="0123abcd")  # an unfinished run's store
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "progress").mkdir()
    (out / "progress" / "rank0-of-1-0123abcd.npy").write_bytes(b"garbage")
    store = score_store(model_dir, token_store, out, 32, batch_size=1, progress=False)
    assert store.complete
    assert (out / "ref_loss.npy").read_bytes() == (reference.path / "ref_loss.npy").read_bytes()


def test_loaded_model_keeps_its_dtype(tmp_path, token_store):
    model = build_model("tiny", token_store.vocab_size).to(torch.bfloat16)
    store = score_store(model, token_store, tmp_path / "l", SEQ, progress=False)
    assert store.meta["score_dtype"] == "bfloat16"
    assert next(model.parameters()).dtype == torch.bfloat16
