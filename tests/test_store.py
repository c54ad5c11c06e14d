"""TokenStore / LossStore: the alignment rule, integrity checks, atomic writes, `rho inspect`."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from rho.cli import main
from rho.errors import UserError
from rho.io import store as store_mod
from rho.io import store_files
from rho.io.files import commit_output, prepare_output, save_npy_atomic, write_json_atomic
from rho.io.store import (
    LossStore,
    TokenStore,
    load_npy,
    loss_summary,
    n_windows,
    smallest_token_dtype,
    window_bounds,
    window_starts,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_alignment_rule():
    assert n_windows(10, 4) == 3
    assert n_windows(8, 4) == 2
    assert window_bounds(2, 4, 10) == (8, 10)  # the last window is partial
    np.testing.assert_array_equal(np.flatnonzero(window_starts(10, 4)), [0, 4, 8])
    with pytest.raises(UserError, match="at least 2"):
        n_windows(10, 1)


def test_smallest_token_dtype():
    assert smallest_token_dtype(300) == np.uint16
    assert smallest_token_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert smallest_token_dtype(65537) == np.uint32
    assert smallest_token_dtype(151_936) == np.uint32


def test_token_store_contents(token_store):
    tokens = np.asarray(token_store.tokens)
    offsets = np.asarray(token_store.doc_offsets)
    assert token_store.tokens.dtype == np.uint16
    assert isinstance(token_store.tokens, np.memmap)  # never loaded whole
    # every document ends with EOS, and only there
    np.testing.assert_array_equal(np.flatnonzero(tokens == token_store.eos_id), offsets[1:] - 1)
    assert token_store.window(1, 10).tolist() == tokens[10:20].tolist()
    token_store.verify()


def copy_store(store, tmp_path):
    return TokenStore(shutil.copytree(store.path, tmp_path / "copy"))


def test_truncated_and_corrupted_token_files(tmp_path, token_store, capsys):
    store = copy_store(token_store, tmp_path)
    tokens = store.path / "tokens.npy"
    raw = tokens.read_bytes()
    tokens.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated or corrupted"):
        TokenStore(store.path)
    assert main(["inspect", str(store.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rho inspect: error: ") and err.count("\n") == 1
    tokens.write_bytes(b"\x93NUMPY\x01\x00v\x00{garbage \n" + raw[30:])  # header garbage
    with pytest.raises(UserError, match="truncated or corrupted"):
        TokenStore(store.path)
    np.save(tokens, np.zeros((2, 3), dtype=np.uint16))  # wrong shape
    with pytest.raises(UserError, match="expected 1-D"):
        TokenStore(store.path)
    # flipped bytes: the store opens, but --verify catches them
    flipped = bytearray(raw)
    flipped[-3] ^= 0x01
    tokens.write_bytes(bytes(flipped))
    TokenStore(store.path)
    assert main(["inspect", "--verify", str(store.path)]) == 2
    assert "content hash" in capsys.readouterr().err


def test_bad_meta_is_a_clear_error(tmp_path, token_store):
    store = copy_store(token_store, tmp_path)
    (store.path / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable or corrupted"):
        TokenStore(store.path)
    (store.path / "meta.json").write_text(json.dumps({"format": "rho.TokenStore", "version": 1}))
    with pytest.raises(UserError, match="missing n_tokens"):
        TokenStore(store.path)
    with pytest.raises(UserError, match="not a TokenStore"):
        TokenStore(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a LossStore"):
        LossStore(token_store.path)  # a TokenStore is not a LossStore


def test_load_npy_checks(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(5, dtype=np.int64))
    assert load_npy(path, 5, ("int64",)).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="holds 5 entries"):
        load_npy(path, 6)
    with pytest.raises(UserError, match="expected 1-D float16"):
        load_npy(path, 5, ("float16",))
    with pytest.raises(UserError, match="is missing"):
        load_npy(tmp_path / "b.npy")


def test_atomic_helpers_leave_no_temporaries(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    save_npy_atomic(tmp_path / "p.npy", np.ones(3, dtype=bool))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "p.npy"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(UserError, match="already exists"):
        prepare_output(out, overwrite=False)
    tmp = prepare_output(out, overwrite=True)
    (tmp / "new").write_text("new")
    assert (out / "old").exists()  # nothing replaced until the commit
    commit_output(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "out", "p.npy"]


def test_loss_summary_in_chunks_matches_numpy(monkeypatch):
    rng = np.random.default_rng(0)
    values = rng.random(1000).astype(np.float16) * 5
    values[::7] = np.nan  # window starts, seq_len 7
    values[500:530] = np.nan  # not scored yet
    monkeypatch.setattr(store_mod, "CHUNK", 64)  # many chunks, none aligned to windows
    stats = loss_summary(values, 7)
    kept = values[~np.isnan(values)].astype(np.float64)
    assert stats["mean"] == pytest.approx(kept.mean())
    assert stats["scored"] == len(kept)
    assert stats["missing"] == 30 - len(range(504, 530, 7))  # 500..529 minus the window starts
    assert stats["p50"] == pytest.approx(np.percentile(kept, 50), rel=1e-3)
    assert math.isnan(loss_summary(np.full(10, np.nan, dtype=np.float16), 5)["mean"])


def test_inspect_token_store(token_store, capsys):
    assert main(["inspect", "--verify", str(token_store.path)]) == 0
    out = capsys.readouterr().out
    assert f"{token_store.n_tokens:,} tokens (uint16)" in out
    assert f"{token_store.n_docs:,} documents" in out
    assert "noise mask:" in out and "complete: yes (content hash verified)" in out


def test_inspect_loss_store_and_errors(tmp_path, token_store, model_dir, capsys):
    from rho.scoring.score import score_store

    store = score_store(model_dir, token_store, tmp_path / "l", 64, progress=False)
    assert main(["inspect", "--verify", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert (
        "seq_len 64" in out and "loss mean" in out and "complete: yes (loss hash verified)" in out
    )
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "not a store directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sources": [1, 2]}, "sources.0 is 1"),
        ({"sources": [{"path": "a", "domain": 3}]}, "sources.0.domain is 3"),
        ({"domains": [1]}, "domains.0 is 1"),
        ({"content_hash": 5}, "content_hash is 5"),
        ({"n_tokens": 1e30}, "n_tokens is 1e\\+30"),
        ({"vocab_size": True}, "vocab_size is True"),
        ({"n_docs": "HUGE"}, "n_docs of 3322 bits is out of range"),
        ({"eos_id": "DEEP"}, "unreadable or corrupted"),
    ],
)
def test_token_store_meta_field_types_are_checked(tmp_path, token_store, changes, message):
    store = copy_store(token_store, tmp_path)
    meta = {**store.meta, **changes}
    text = json.dumps(meta).replace('"HUGE"', "9" * 1000).replace('"DEEP"', "[" * 10000)
    (store.path / "meta.json").write_text(text)
    with pytest.raises(UserError, match=message):
        TokenStore(store.path)


def hand_loss_store(token_store, path, **changes):
    from rho.scoring.loss_writer import loss_store_meta, write_loss_store

    meta = loss_store_meta(token_store, 8, 4, model="m", model_hash="ab" * 32)
    write_loss_store(path, token_store, np.zeros(token_store.n_tokens), meta)
    if changes:
        meta = {**json.loads((path / "meta.json").read_text()), **changes}
        (path / "meta.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seq_len": 1e30}, "seq_len is 1e\\+30"),
        ({"batch_size": None}, "batch_size is None"),
        ({"complete": "no"}, "complete is 'no'"),
        ({"complete": 1}, "complete is 1"),
        ({"token_hash": ["x"]}, "token_hash is \\['x'\\]"),
        ({"run_id": "../../etc"}, "run_id is"),
    ],
)
def test_loss_store_meta_field_types_are_checked(tmp_path, token_store, changes, message):
    path = hand_loss_store(token_store, tmp_path / "L", **changes)
    with pytest.raises(UserError, match=message):
        LossStore(path, token_store, 8)
    from rho.scoring.loss_writer import read_meta  # the scorer's resume path reads the same schema

    with pytest.raises(UserError, match=message):
        read_meta(path)


def test_a_string_is_not_a_finished_store(tmp_path, token_store):
    """ "complete": "no" used to count as complete (bool("no") is True)."""
    path = hand_loss_store(token_store, tmp_path / "L", complete="no")
    with pytest.raises(UserError, match="complete is 'no'"):
        LossStore(path).check_matches(token_store, 8)


def test_garbage_store_tokenizer_is_one_line(tmp_path, token_store, capsys):
    from rho.data.tokenizer_setup import load_tokenizer

    store = copy_store(token_store, tmp_path)
    (store.path / "tokenizer" / "tokenizer.json").write_text('{"model": {"type": "BPE"')
    with pytest.raises(UserError, match="tokenizer is unreadable or corrupted"):
        store.tokenizer()
    with pytest.raises(UserError, match="cannot load tokenizer"):
        load_tokenizer(store.path / "tokenizer")
    (store.path / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(UserError):
        store.tokenizer()


def test_a_full_disk_is_one_line_not_sigbus(tmp_path):
    """posix_fallocate reserves the memory map's blocks up front: a file too big for the disk
    (here: for the process's file-size limit, which the kernel enforces the same way) fails
    when it is created, with one line, never later with SIGBUS while a page is written."""
    import resource
    import signal

    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, old_limit[1]))
    try:
        with pytest.raises(UserError, match="cannot create .*ref_loss.npy"):
            store_files.allocate_npy(tmp_path / "ref_loss.npy", 1 << 22, np.float16)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    array = store_files.allocate_npy(tmp_path / "ok.npy", 1000, np.float16)
    array[:] = 1.0
    assert (tmp_path / "ok.npy").stat().st_blocks * 512 >= 2000  # the blocks are there
