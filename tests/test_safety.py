"""Nothing lost, ever: the hostile try-out's findings, each reproduced.

Locks (a second writer is refused with the first's PID), --overwrite that never deletes inputs or
foreign directories, out-of-vocabulary ids and bad options refused before any work, one-line
errors without tracebacks, unsafe pickles refused, scratch left by kill -9 cleaned, long
documents encoded in pieces exactly as whole. What depends on the process (locks, kill -9,
pipes, what libraries print, memory) runs real processes (`python -m rho`), side by side where
independent; checks of arguments alone call `rho.cli.main` in this process, which is far cheaper.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    HANG_GUARD_S,
    SUBPROCESS_ENV,
    WORDS,
    hold_env,
    make_docs,
    wait_until_held,
    write_jsonl,
)

import rho.data.tokenize as tokenize_mod
from rho.cli import main
from rho.data import token_parts
from rho.errors import UserError
from rho.io.files import lock_path, save_npy_atomic
from rho.io.store import LossStore, TokenStore, loss_summary, write_token_store
from rho.models import build_model, load_model, model_fingerprint
from rho.scoring.loss_writer import (
    create_or_resume,
    done_batches,
    finish,
    loss_store_meta,
    read_meta,
)
from rho.scoring.score import score_store
from rho.scoring.windows import batch_windows

pytestmark = pytest.mark.usefixtures("one_thread")
SEQ = 32


# --- Helpers --------------------------------------------------------------------------------------


def start(*args, cwd=None, env: dict | None = None) -> subprocess.Popen:
    """`python -m rho ARGS` in its own session (so a timeout can stop all it started)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rho", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**SUBPROCESS_ENV, **(env or {})},
        start_new_session=True,
    )


def collect(proc: subprocess.Popen, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {timeout}s)"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_together(*commands, cwd=None) -> list[subprocess.CompletedProcess]:
    """Run several `rho` commands side by side; each command is a tuple of arguments."""
    return [collect(p) for p in [start(*c, cwd=cwd) for c in commands]]


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Failed, with exactly one line on stderr holding every needle, and no traceback."""
    assert result.returncode != 0, (result.args, result.stdout[-500:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rho "), (result.args, result.stderr[-3000:])
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def cli_error(capsys, *args) -> str:
    """`rho ARGS` in this process (for checks of arguments only): exit 2, exactly one line on
    stderr; an exception escaping main would be a traceback, and fails the test."""
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rho {args[0]}: error: "), err[-3000:]
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under ``root``, hidden ones included."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def copy_store(src: Path, dst: Path, **meta_changes) -> Path:
    shutil.copytree(src, dst)
    if meta_changes:
        meta = json.loads((dst / "meta.json").read_text())
        meta.update(meta_changes)
        (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def same_store(a: Path, b: Path) -> None:
    """Two LossStores hold the same bytes of losses and the same meta.json."""
    assert (a / "ref_loss.npy").read_bytes() == (b / "ref_loss.npy").read_bytes()
    assert json.loads((a / "meta.json").read_text()) == json.loads((b / "meta.json").read_text())


@pytest.fixture(scope="module")
def losses(tmp_path_factory, token_store, model_dir) -> LossStore:
    """Read-only: a finished LossStore of the shared TokenStore."""
    out = tmp_path_factory.mktemp("losses") / "L"
    return score_store(model_dir, token_store, out, SEQ, batch_size=16, progress=False)


# --- 1. Two writers of one store --------------------------------------------------------------


@pytest.mark.slow
def test_second_writer_is_refused_and_first_store_is_whole(tmp_path, token_store, model_dir):
    out = tmp_path / "S"
    args = ("score", "--model", model_dir, "--tokens", token_store.path, "--out", out)
    args += ("--seq-len", SEQ, "--batch-size", 1)
    held = tmp_path / "held"  # the first writer waits there mid-run, holding the lock
    env = {**hold_env("score.recorded", 1, held), "RHO_SCORE_SAVE_EVERY_S": "0"}
    first = start(*args, env=env)
    try:
        wait_until_held(held, first)
        assert lock_path(out).read_text().strip() == str(first.pid)
        seconds = run_together(args, (*args, "--overwrite"))
        for second in seconds:
            one_line_error(second, f"PID {first.pid}", "another rho process")
        held.unlink()  # released: it goes on
        done = collect(first)
    finally:
        held.unlink(missing_ok=True)
        if first.poll() is None:
            first.kill()
            first.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    clean = score_store(
        model_dir, token_store, tmp_path / "clean", SEQ, batch_size=1, progress=False
    )
    same_store(out, clean.path)
    assert sorted(os.listdir(tmp_path)) == ["S", "clean"]  # no lock file, no scratch left


def test_progress_of_another_run_never_completes_a_store(tmp_path, token_store, model_dir):
    out = tmp_path / "L"
    model = load_model(model_dir)
    meta = loss_store_meta(
        token_store,
        SEQ,
        4,
        model=str(model_dir),
        model_hash=model_fingerprint(model),
        score_dtype="float32",
    )
    meta = create_or_resume(token_store, out, meta, overwrite=False)
    n = len(batch_windows(token_store.n_tokens, SEQ, 4))
    # Another run's record says every batch is done; this run wrote nothing.
    save_npy_atomic(out / "progress" / "rank0-of-1-0badc0ffee0badc0.npy", np.ones(n, bool))
    assert not done_batches(out, meta, n).any()
    with pytest.raises(RuntimeError, match="not scored"):
        finish(out, meta, token_store.n_tokens, n)
    assert read_meta(out)["complete"] is False
    # A rerun scores every batch itself: no token is left unscored.
    store = score_store(model_dir, token_store, out, SEQ, batch_size=4, progress=False)
    assert store.complete and loss_summary(store.ref_loss, SEQ)["missing"] == 0


# --- 3. --overwrite never deletes inputs or foreign directories -----------------------------------


@pytest.mark.slow
def test_overwrite_never_deletes_inputs_or_foreign_dirs(
    tmp_path, corpus, token_store, model_dir, losses
):
    lines = corpus.read_text().splitlines()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.jsonl").write_text("\n".join(lines[:60]) + "\n")
    (tmp_path / "data" / "notes.txt").write_text("my own notes\n")
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "thesis.tex").write_text("years of work\n")
    copy_store(token_store.path, tmp_path / "tok")
    copy_store(losses.path, tmp_path / "L")
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "input.jsonl").write_text("\n".join(lines[:20]) + "\n")
    (tmp_path / "here" / "keep.txt").write_text("precious\n")
    # A TokenStore rho made: --overwrite may replace it.
    made = tokenize_mod.tokenize_corpus(
        [str(corpus)], tmp_path / "made", tokenizer=token_store.tokenizer_dir, progress=False
    )
    before = snapshot(tmp_path)

    train = ("--train-tokenizer", "300", "--overwrite")
    dot = start("tokenize", "input.jsonl", "--out", ".", *train, cwd=tmp_path / "here")
    tokenize_data, prune, score, replace = run_together(
        ("tokenize", "data/input.jsonl", "--out", "data", *train),
        ("prune", "--tokens", "tok", "--losses", "L", "--out", "tok", "--overwrite"),
        ("score", "--model", model_dir, "--tokens", "tok", "--out", "userdir", "--overwrite")
        + ("--seq-len", SEQ),
        ("tokenize", "data/input.jsonl", "--out", "made", "--overwrite")
        + ("--tokenizer", token_store.tokenizer_dir),
        cwd=tmp_path,
    )
    one_line_error(tokenize_data, "overlaps the input")
    one_line_error(prune, "overlaps the input")
    one_line_error(score, "userdir", "rho did not make", "thesis.tex")
    one_line_error(collect(dot), "--out . overlaps the input")
    assert replace.returncode == 0, replace.stderr[-3000:]

    def others(snap: dict) -> dict:
        return {k: v for k, v in snap.items() if k != "made" and not k.startswith("made/")}

    # Every input and user file byte for byte, and nothing left beside them.
    assert others(snapshot(tmp_path)) == others(before)
    assert TokenStore(tmp_path / "made").n_docs == 60 != made.n_docs  # the new store


# --- 4. Out-of-vocabulary ids ---------------------------------------------------------------------


def with_id_past_vocabulary(src: Path, dst: Path, token_id: int) -> Path:
    """A copy of a TokenStore whose tokens.npy was patched behind meta.json's back."""
    copy_store(src, dst)
    tokens = np.load(dst / "tokens.npy")
    tokens[100] = token_id
    np.save(dst / "tokens.npy", tokens)
    return dst


def test_write_token_store_refuses_ids_outside_its_vocabulary(tmp_path, token_store):
    tokenizer = token_store.tokenizer_dir
    with pytest.raises(UserError, match="token id 9 is outside the vocabulary of 9"):
        write_token_store(tmp_path / "s", np.arange(10), [0, 10], tokenizer, vocab_size=9, eos_id=0)
    with pytest.raises(UserError, match="token id 70000"):  # refused, not wrapped into uint16
        write_token_store(
            tmp_path / "s", [1, 70_000], [0, 2], tokenizer, vocab_size=60_000, eos_id=0
        )
    assert list(tmp_path.iterdir()) == []


def test_meta_vocabulary_smaller_than_the_ids_is_refused(tmp_path, token_store, capsys):
    small = copy_store(token_store.path, tmp_path / "small", vocab_size=token_store.vocab_size - 20)
    model = tmp_path / "small-model"
    build_model("tiny", token_store.vocab_size - 20, seed=1).save_pretrained(model)
    before = snapshot(tmp_path)
    for args in (
        ("score", "--model", model, "--tokens", small, "--out", tmp_path / "L", "--seq-len", SEQ),
        ("train", "--tokens", small, "--preset", "tiny", "--output_dir", tmp_path / "run"),
        ("eval", "--model", model, "--tokens", small, "--out", tmp_path / "e", "--quiet"),
    ):
        assert "small/meta.json is corrupted: max_token_id" in cli_error(capsys, *args)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_out_of_vocabulary_ids_are_refused_before_any_work(tmp_path, token_store, model_dir):
    bad_id = token_store.vocab_size + 7
    patched = with_id_past_vocabulary(token_store.path, tmp_path / "patched", bad_id)
    before = snapshot(tmp_path)
    score, train = run_together(
        ("score", "--model", model_dir, "--tokens", patched, "--out", tmp_path / "L")
        + ("--seq-len", SEQ),
        ("train", "--tokens", patched, "--preset", "tiny", "--selection", "none")
        + ("--seq_len", SEQ, "--output_dir", tmp_path / "run"),
    )
    one_line_error(score, f"holds token id {bad_id}, outside the model's vocabulary")
    one_line_error(train, f"holds token id {bad_id}, outside the training model's vocabulary")
    assert snapshot(tmp_path) == before  # no LossStore, no run directory, no lock file


def test_eval_refuses_patched_out_of_vocabulary_ids(tmp_path, token_store, model_dir, capsys):
    bad_id = token_store.vocab_size + 7
    patched = with_id_past_vocabulary(token_store.path, tmp_path / "patched", bad_id)
    args = ("eval", "--model", model_dir, "--tokens", patched, "--out", tmp_path / "e")
    assert f"token id {bad_id}" in cli_error(capsys, *args, "--seq-len", SEQ, "--quiet")
    assert not (tmp_path / "e").exists()


# --- 5. rho train: windows and output directory ---------------------------------------------------


def test_train_refuses_bad_windows_and_outputs_in_its_inputs(tmp_path, token_store, capsys):
    tok = copy_store(token_store.path, tmp_path / "tok")
    model32 = tmp_path / "model32"
    build_model("tiny", token_store.vocab_size, seed=1, max_positions=32).save_pretrained(model32)
    before = snapshot(tmp_path)
    base = ("train", "--tokens", tok, "--selection", "none", "--max_steps", "1")
    tiny = (*base, "--preset", "tiny", "--seq_len", "16")
    long_windows = (*base, "--model", model32, "--seq_len", "64", "--output_dir", tmp_path / "r1")
    assert "--seq_len 64 exceeds the model's 32 positions" in cli_error(capsys, *long_windows)
    zero = (*base, "--preset", "tiny", "--seq_len", "0", "--output_dir", tmp_path / "r2")
    assert "--seq_len must be at least 2" in cli_error(capsys, *zero)
    assert "overlaps the input" in cli_error(capsys, *tiny, "--output_dir", tok)
    assert "overlaps the input" in cli_error(capsys, *tiny, "--output_dir", tok / "run")
    assert snapshot(tmp_path) == before  # the store byte for byte; no run dir, no lock file


# --- 6. One line, no traceback --------------------------------------------------------------------


def test_bad_values_give_one_line(tmp_path, corpus, token_store, losses, capsys):
    bad_count = copy_store(token_store.path, tmp_path / "n-abc", n_tokens="abc")
    bad_vocab = copy_store(token_store.path, tmp_path / "vocab-1.5", vocab_size=1.5)
    bad_seq = copy_store(losses.path, tmp_path / "seq-0", seq_len=0)
    (tmp_path / "a-file").write_text("not a directory\n")
    before = snapshot(tmp_path)
    assert "n_tokens is 'abc'" in cli_error(capsys, "inspect", bad_count)
    assert "vocab_size is 1.5" in cli_error(capsys, "inspect", bad_vocab)
    assert "seq_len 0" in cli_error(capsys, "inspect", bad_seq)
    train = ("train", "--tokens", token_store.path, "--preset", "tiny", "--selection", "none")
    err = cli_error(capsys, *train, "--per_device_train_batch_size", "0", "--output_dir", "r")
    assert "--per_device_train_batch_size must be at least 1" in err
    assert "is a file" in cli_error(capsys, *train, "--output_dir", tmp_path / "a-file")
    too_big = ("--out", tmp_path / "t", "--train-tokenizer", "100000000000")
    assert "100,000,000,000" in cli_error(capsys, "tokenize", corpus, *too_big)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_inspect_into_a_closed_pipe_is_quiet(token_store):
    # Many copies of the summary: more than a pipe holds, so the writer surely meets the
    # closed pipe while printing.
    paths = " ".join([f"'{token_store.path}'"] * 400)
    script = f"set +o pipefail; '{sys.executable}' -m rho inspect {paths} | head -1"
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0
    assert result.stdout == f"{token_store.path}\n"
    assert result.stderr == ""


def test_eval_out_is_an_existing_file(tmp_path, token_store, model_dir, capsys):
    (tmp_path / "a-file").write_text("mine\n")
    args = ("eval", "--model", model_dir, "--tokens", token_store.path)
    assert "a-file" in cli_error(capsys, *args, "--out", tmp_path / "a-file", "--quiet")
    assert (tmp_path / "a-file").read_text() == "mine\n"


# --- 7. Smaller findings --------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_ratio_zero_is_refused_at_once(tmp_path):
    """Refused before any work: nothing written, no base model cached."""
    env = {"RHO_CACHE": str(tmp_path / "cache")}
    result = collect(start("demo", "--ratio", "0", "--out", tmp_path / "demo", env=env))
    one_line_error(result, "--ratio")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_missing_relative_model_path_fails_at_once(tmp_path, token_store):
    """Refused as a missing local directory, not looked up on the hub; nothing written."""
    (tmp_path / "runs").mkdir()
    (result,) = run_together(
        ("score", "--model", "runs/nope", "--tokens", token_store.path, "--out", "L")
        + ("--seq-len", SEQ),
        cwd=tmp_path,
    )
    one_line_error(result, "'runs/nope' is not a local directory (and not a hub name)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


class RunsCode:
    """Unpickling this calls print: harmless proof that a loader would have run the file's code."""

    def __reduce__(self):
        return (print, ("PICKLE-CODE-RAN",))


@pytest.mark.slow
def test_pickle_weights_safe_ones_load_with_a_warning_unsafe_ones_are_refused(
    tmp_path, token_store, model_dir, losses
):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    model = load_model(model_dir)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # a plain, safe state_dict
    evil = tmp_path / "evil"
    evil.mkdir()
    model.config.save_pretrained(evil)
    torch.save({"model.embed_tokens.weight": RunsCode()}, evil / "pytorch_model.bin")
    score = ("score", "--tokens", token_store.path, "--seq-len", SEQ, "--model")
    safe, unsafe = run_together(
        (*score, pickled, "--out", tmp_path / "L"), (*score, evil, "--out", tmp_path / "L-evil")
    )
    assert safe.returncode == 0, safe.stderr[-3000:]
    lines = safe.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rho: warning:") and "pickle" in lines[0]
    # The same weights as the safetensors model: the same losses.
    assert (tmp_path / "L" / "ref_loss.npy").read_bytes() == (
        losses.path / "ref_loss.npy"
    ).read_bytes()
    refusal = one_line_error(unsafe, "refused", "unsafe pickle", "could run code")
    assert "weights_only" not in refusal  # torch's advice to turn the safety off is not repeated
    assert "PICKLE-CODE-RAN" not in unsafe.stdout + unsafe.stderr
    assert not (tmp_path / "L-evil").exists()


def big_corpus(path: Path, n_docs: int) -> Path:
    return write_jsonl(path, [{"text": t} for t in make_docs(n_docs, seed=3)])


@pytest.mark.slow
def test_killed_tokenize_leaves_scratch_the_next_run_removes(tmp_path, token_store):
    """kill -9 while a part is half written (rho.token_parts' fault hook: the process kills
    itself inside its third part, before the rename): the rerun drops the half part, keeps the
    whole ones, and leaves only the store."""
    from rho.data import token_parts

    corpus = big_corpus(tmp_path / "big.jsonl", 4000)
    out = tmp_path / "store"
    args = ("tokenize", corpus, "--out", out, "--tokenizer", token_store.tokenizer_dir)
    chunks = {"RHO_TOKENIZE_CHUNK_BYTES": "20000"}  # many parts
    proc = collect(start(*args, env={**chunks, token_parts.FAULT_ENV: "0:3"}))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    parts = token_parts.parts_dir(out)
    (scratch,) = parts.glob(".part-*")  # the half-written part
    assert scratch.is_dir() and not out.exists() and len(list(parts.glob("part-*"))) == 2

    rerun = collect(start(*args, env=chunks))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 of them kept from an interrupted run" in rerun.stdout
    assert not scratch.exists() and not parts.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl", "store"]
    assert TokenStore(out).n_docs == 4000


def test_long_document_in_pieces_equals_whole_encoding(tmp_path, monkeypatch, token_store):
    """Pieces of 1000 characters give the ids and noise marks of encoding each text whole."""
    rng = np.random.default_rng(0)
    parts = []
    for i in range(6000):
        parts.append(str(rng.choice(WORDS)))
        parts.append(str(rng.choice([" ", " ", " ", " ", "  ", "\n", "\n\n", ", ", ". ", "\t"])))
        if i % 500 == 0:
            parts.append("it's 1999 — café ∑x ")
    long_text = "".join(parts)
    assert len(token_parts.pieces_of(long_text, 1000)) > 20
    texts = [long_text, "a short one", long_text[:2500] + "   "]
    spans = [[[990, 1010], [5000, 7300], [len(long_text) - 3, len(long_text) + 5]], [], [[0, 1]]]
    records = [{"text": t, "noise_spans": s} for t, s in zip(texts, spans, strict=True)]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)

    monkeypatch.setattr(token_parts, "PIECE_CHARS", 1000)
    store = tokenize_mod.tokenize_corpus(
        [str(corpus)], tmp_path / "s", tokenizer=token_store.tokenizer_dir, progress=False
    )
    tok = token_store.tokenizer()
    for d, (text, doc_spans) in enumerate(zip(texts, spans, strict=True)):
        whole = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        a, b = store.doc_offsets[d], store.doc_offsets[d + 1]
        assert np.asarray(store.tokens[a:b]).tolist() == [*whole["input_ids"], tok.eos_token_id]
        noisy = np.zeros(len(text), dtype=bool)
        for x, y in doc_spans:
            noisy[max(0, x) : min(len(text), y)] = True
        marks = [bool(noisy[x:y].any()) for x, y in whole["offset_mapping"]] + [False]
        assert np.asarray(store.noise_mask[a:b]).tolist() == marks


@pytest.mark.slow
def test_five_megabyte_single_line_document_stays_small(tmp_path, token_store):
    rng = np.random.default_rng(1)
    words = rng.choice(np.array(WORDS), size=1_100_000)
    text = " ".join(words.tolist())
    assert len(text) > 5_000_000
    corpus = write_jsonl(tmp_path / "one-line.jsonl", [{"text": text}])
    assert len(corpus.read_text().splitlines()) == 1
    out = tmp_path / "store"
    # A parent whose only child is the run: its RUSAGE_CHILDREN peak is the run's own.
    measure = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    cmd = [sys.executable, "-c", measure, sys.executable, "-m", "rho", "tokenize", str(corpus)]
    cmd += ["--out", str(out), "--tokenizer", str(token_store.tokenizer_dir)]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=HANG_GUARD_S
    )
    assert result.returncode == 0, result.stderr[-3000:]
    peak_mb = int(result.stdout.split("peak-rss-kb")[-1]) / 1024
    print(f"5 MB single-line document: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 800
    store = TokenStore(out)
    assert store.n_docs == 1 and store.n_tokens > 1_000_000
    # Spot check: the start of the document as encoded whole.
    tok = token_store.tokenizer()
    head = tok(text[:2000].rsplit(" ", 1)[0], add_special_tokens=False)["input_ids"]
    assert np.asarray(store.tokens[: len(head) - 1]).tolist() == head[:-1]
