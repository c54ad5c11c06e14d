"""A store's size does not show in a process's memory: every pass over a whole memory-mapped
store (hashes, the largest id, the finite share of losses, statistics, copies, the NaN fill of a
new LossStore) reads it from its file in blocks, so none of it stays mapped (bench/bench_scale.py
measures the commands at 10M and 100M tokens; docs/SCALE.md)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rho.io.reading import blocks, hash_arrays
from rho.io.store import (
    LossStore,
    TokenStore,
    finite_fraction,
    loss_summary,
    max_chunked,
    write_token_store,
)
from rho.scoring import loss_writer
from rho.scoring.windows import batch_windows, window_ids

N = 24 << 20  # tokens: 48 MiB of uint16, 48 MiB of float16 losses
MIB = 1 << 20


def rss_file() -> int:
    """Bytes of file-backed pages mapped into this process and resident (RssFile)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status")


def grows(fn) -> int:
    """The most file-backed memory ``fn`` held mapped at once beyond what was mapped before
    (sampled every millisecond by a thread: a map dropped before returning counts too)."""
    before, peak, done = rss_file(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_file())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], rss_file()) - before


@pytest.fixture(scope="module")
def big(tmp_path_factory, token_store):
    root = tmp_path_factory.mktemp("big")
    raw = np.lib.format.open_memmap(root / "raw.npy", "w+", np.uint16, (N,))
    raw[:] = np.arange(N, dtype=np.uint64) % 397
    raw.flush()
    del raw
    raw = np.load(root / "raw.npy", mmap_mode="r")
    store = write_token_store(
        root / "tokens", raw, [0, N], token_store.tokenizer_dir, vocab_size=400, eos_id=0
    )
    return root, store


def test_a_pass_through_the_map_would_show_and_blocks_do_not(big):
    """The measure works: the same pass through the map leaves the file resident."""
    root, _ = big
    tokens = np.load(root / "raw.npy", mmap_mode="r")
    assert grows(lambda: [b.max() for b in blocks(tokens)]) < 4 * MIB
    assert grows(lambda: [tokens[s : s + MIB].max() for s in range(0, N, MIB)]) > 40 * MIB


def test_token_store_writes_and_checks_leave_nothing_mapped(big, tmp_path):
    root, store = big
    raw = np.load(root / "raw.npy", mmap_mode="r")
    again = tmp_path / "again"
    assert grows(lambda: write_token_store(again, raw, [0, N], store.tokenizer_dir,
                                           vocab_size=400, eos_id=0)) < 8 * MIB  # fmt: skip
    opened = TokenStore(again)
    assert grows(lambda: opened.max_token_id) < 4 * MIB
    assert opened.max_token_id == 396 == max_chunked(raw)
    assert grows(opened.verify) < 4 * MIB
    assert opened.content_hash == store.content_hash
    assert (again / "tokens.npy").read_bytes() == (store.path / "tokens.npy").read_bytes()
    np.save(tmp_path / "plain.npy", np.asarray(raw))  # numpy's own writer: the same bytes
    assert (tmp_path / "plain.npy").read_bytes() == (store.path / "tokens.npy").read_bytes()


def test_a_new_loss_store_and_its_checks_leave_nothing_mapped(big, tmp_path):
    _, store = big
    out, seq = tmp_path / "losses", 256
    meta = loss_writer.loss_store_meta(store, seq, 16, model="m", model_hash="h")
    assert grows(lambda: loss_writer.create_or_resume(store, out, meta, False)) < 4 * MIB
    losses = np.load(out / "ref_loss.npy", mmap_mode="r")
    assert np.isnan(losses[[0, N // 2, N - 1]]).all()
    writer = loss_writer.LossFile(out / "ref_loss.npy")
    for start in range(0, N, 1 << 22):  # "scores": 1.5 everywhere but the window starts
        values = np.full(min(1 << 22, N - start), 1.5, dtype=np.float16)
        values[-start % seq :: seq] = np.nan
        writer.write(start, values)
    meta = loss_writer.read_meta(out)
    n_batches = len(batch_windows(N, seq, 16))
    writer.record(loss_writer.progress_file(out, meta, 0, 1), np.ones(n_batches, dtype=bool))
    writer.close()
    finished = {}
    assert grows(lambda: finished.update(loss_writer.finish(out, meta, N, n_batches))) < 4 * MIB
    assert finished["complete"] and finished["mean_loss"] == 1.5
    assert finished["finite_fraction"] == 1.0  # recorded: training reads no loss to check it
    assert LossStore(out, store, seq).complete
    losses = np.load(out / "ref_loss.npy", mmap_mode="r")
    assert grows(lambda: loss_writer.check_mostly_finite(losses, seq, "x")) < 4 * MIB
    summary = {}
    assert grows(lambda: summary.update(loss_summary(losses, seq))) < 4 * MIB
    assert summary["mean"] == 1.5 and summary["missing"] == 0 and summary["p50"] == 1.5
    assert grows(lambda: hash_arrays(losses)) < 4 * MIB
    assert hash_arrays(losses) == hash_arrays(np.asarray(losses))  # same bytes, either way
    assert finite_fraction(losses, seq) == 1.0


def test_a_new_loss_store_with_entropy_fills_every_value_file_through_the_file(big, tmp_path):
    """`rho score --entropy`: ref_entropy.npy is NaN-filled like ref_loss.npy, through the file."""
    _, store = big
    out = tmp_path / "losses"
    meta = loss_writer.loss_store_meta(store, 256, 16, entropy=True, model="m", model_hash="h")
    assert grows(lambda: loss_writer.create_or_resume(store, out, meta, False)) < 4 * MIB
    assert loss_writer.value_files(meta) == ["ref_loss.npy", "ref_entropy.npy"]
    for name in loss_writer.value_files(meta):
        values = np.load(out / name, mmap_mode="r")
        assert values.dtype == np.float16 and len(values) == N
        assert all(np.isnan(block).all() for block in blocks(values))


def test_the_finite_share_of_a_masked_store_leaves_nothing_mapped(big, tmp_path):
    """Instruction data: the share counts only loss positions (the mask is read from its file in
    blocks, like the values)."""
    root, store = big
    raw = np.load(root / "raw.npy", mmap_mode="r")
    mask = np.tile(np.array([False, True, True]), N // 3)  # every third token is prompt
    masked = write_token_store(tmp_path / "masked", raw, np.arange(0, N + 1, 1024),
                               store.tokenizer_dir, vocab_size=400, eos_id=0,
                               loss_mask=mask)  # fmt: skip
    del mask
    masked = TokenStore(masked.path)
    seq = 256
    values = np.full(N, 1.5, dtype=np.float16)
    values[~np.load(masked.path / "loss_mask.npy")] = np.nan  # NaN by design off the mask
    np.save(tmp_path / "values.npy", values)
    del values
    values = np.load(tmp_path / "values.npy", mmap_mode="r")
    share = []
    assert grows(lambda: share.append(finite_fraction(values, seq, masked))) < 4 * MIB
    assert share == [1.0]
    assert finite_fraction(values, seq, None) < 0.7  # the plain rule counts the prompts
    counted = []
    assert grows(lambda: counted.append(loss_writer.n_masked_out(masked, seq))) < 4 * MIB
    assert counted[0] > N // 4


def test_training_trusts_the_recorded_finite_share(big, tmp_path):
    """rho train checks a finished LossStore's finite share from its meta.json (no pass over
    every loss at start-up): here the file is all NaN but the record says 1.0."""
    import json

    from rho.scoring.loss_writer import loss_store_meta, write_loss_store

    _, store = big
    out, seq = tmp_path / "losses", 256
    write_loss_store(out, store, np.full(N, np.nan, np.float16), loss_store_meta(store, seq, 16))
    assert LossStore(out).finite_fraction() == 0.0  # recorded by the writer
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "finite_fraction": 1.0}))
    assert grows(lambda: LossStore(out).finite_fraction()) < MIB
    assert LossStore(out).finite_fraction() == 1.0
    del meta["finite_fraction"]  # a store written before the record: read through once
    (out / "meta.json").write_text(json.dumps(meta))
    assert LossStore(out).finite_fraction() == 0.0


def test_windows_read_all_over_a_store_leave_nothing_mapped(big, tmp_path):
    """Training reads windows all over a store, scoring and eval reads batches through it:
    read from the file, none of it stays mapped (through the map, each touch maps 64 KiB)."""
    from rho.scoring.loss_writer import loss_store_meta, write_loss_store

    _, store = big
    seq = 256
    losses = (np.arange(N) % 1000).astype(np.float16)
    write_loss_store(tmp_path / "l", store, losses, loss_store_meta(store, seq, 16))
    tokens, ref = TokenStore(store.path), LossStore(tmp_path / "l")
    picks = np.random.default_rng(0).integers(0, N // seq, 2000).tolist()
    assert grows(lambda: [tokens.window(w, seq) for w in picks]) < 4 * MIB
    assert grows(lambda: [ref.window(w) for w in picks]) < 4 * MIB
    batches = [range(b, b + 16) for b in range(0, N // seq, 16)]
    assert grows(lambda: [window_ids(tokens.tokens, seq, b) for b in batches]) < 4 * MIB
    assert grows(lambda: window_ids(tokens.tokens, seq, picks[:64])) < 4 * MIB
    w = picks[0]
    assert tokens.window(w, seq).tolist() == tokens.tokens[w * seq : (w + 1) * seq].tolist()
    assert ref.window(w).tolist() == losses[w * seq : (w + 1) * seq].astype(np.float32).tolist()
    through_map = [np.array(tokens.tokens[w * seq : (w + 1) * seq]) for w in picks]
    assert grows(lambda: through_map.extend(  # the control: the measure would see it
        np.array(ref.ref_loss[w * seq : (w + 1) * seq]) for w in picks)) > 20 * MIB  # fmt: skip
