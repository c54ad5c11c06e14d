"""`rho prune --by prototype`: embeddings (mean-pooled last hidden state, resumable), faiss
k-means, SemDeDup, hard/easy selection, one-line errors."""

from __future__ import annotations

import json
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
    hold_env,
    make_docs,
    rho_command,
    run_rho,
    tokenized,
    wait_until_held,
)

from rho.cli import main
from rho.errors import UserError
from rho.io.files import write_json_atomic
from rho.io.reading import hash_arrays
from rho.io.store import TokenStore
from rho.models import build_model, load_model
from rho.pruning.prototype import keep_by_distance, prototype_select, semdedup
from rho.pruning.prune import prune_store
from rho.scoring.embed import EmbeddingStore, embed_units

pytestmark = pytest.mark.usefixtures("one_thread")


def direct_mean_pool(model, ids: np.ndarray, layer: int = -1) -> np.ndarray:
    with torch.no_grad():
        ids = torch.from_numpy(ids.astype(np.int64))[None]
        out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[layer][0].float().mean(0).numpy()


@pytest.mark.parametrize("layer", [0, 1])
def test_an_earlier_layer_embeds_like_its_hidden_state(tmp_path, token_store, model_dir, layer):
    """--embed-layer: layer 0 is the input token embeddings (looked up, no forward pass), k the
    k-th layer's output; a store of another layer is never reused for it."""
    model = load_model(model_dir)
    store = embed_units(model, "tiny", token_store, "window", 40, tmp_path / "e", layer=layer)
    n = token_store.n_tokens
    spans = [(s, min(s + 40, n)) for s in range(0, n, 40)]
    direct = np.stack([direct_mean_pool(model, token_store.tokens[a:b], layer) for a, b in spans])
    np.testing.assert_allclose(np.asarray(store.embeddings, np.float32), direct, atol=1e-3)
    assert store.meta["layer"] == layer
    with pytest.raises(UserError, match="another layer"):
        embed_units(model, "tiny", token_store, "window", 40, tmp_path / "e", layer=-1)
    with pytest.raises(UserError, match="hidden states 0..2"):
        embed_units(model, "tiny", token_store, "window", 40, tmp_path / "x", layer=3)


def doc_spans(store: TokenStore) -> list[tuple[int, int]]:
    offsets = np.asarray(store.doc_offsets).tolist()
    return list(zip(offsets[:-1], offsets[1:], strict=True))


@pytest.mark.parametrize("unit,seq_len", [("document", 24), ("window", 37)])
def test_embeddings_equal_direct_mean_pool(tmp_path, token_store, model_dir, unit, seq_len):
    model = load_model(model_dir)
    store = embed_units(model, "tiny", token_store, unit, seq_len, tmp_path / "e", batch_size=5)
    rows = np.asarray(store.embeddings, dtype=np.float32)
    if unit == "document":
        spans = [(a, min(b, a + seq_len)) for a, b in doc_spans(token_store)]
        assert any(b - a > seq_len for a, b in doc_spans(token_store)), "no truncation"
    else:
        n = token_store.n_tokens
        spans = [(s, min(s + seq_len, n)) for s in range(0, n, seq_len)]
        assert spans[-1][1] - spans[-1][0] < seq_len  # a partial last window
    assert rows.shape == (len(spans), 32)
    direct = np.stack([direct_mean_pool(model, token_store.tokens[a:b]) for a, b in spans])
    np.testing.assert_allclose(rows, direct, rtol=1e-3, atol=1e-3)
    meta = store.meta
    assert meta["complete"] and meta["token_hash"] == token_store.content_hash
    assert meta["unit"] == unit and meta["seq_len"] == seq_len and "run_id" not in meta
    assert (tmp_path / "e" / ".rho-output").read_text().startswith("rho.Embeddings")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        ".rho-output",
        "embeddings.npy",
        "meta.json",
    ]
    store.verify()


def two_clusters() -> np.ndarray:
    """Two clusters symmetric about e1 and e2 (so the centroids are e1 and e2): in each, two
    units 5° off the centre and two 30° off."""
    rows = []
    for centre, side in ((0, 2), (1, 3)):
        for degrees in (5, -30, -5, 30):
            v = np.zeros(4)
            v[centre], v[side] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
            rows.append(v)
    return np.array(rows)


def test_keep_from_hard_keeps_the_farthest_and_easy_the_nearest():
    x = two_clusters()
    far = np.array([False, True, False, True] * 2)
    hard, report = prototype_select(x, 0.5, keep_from="hard", clusters=2)
    assert hard.tolist() == far.tolist()
    assert sorted(report["cluster_units"]) == [4, 4] and report["cluster_kept"] == [2, 2]
    assert report["mean_distance_kept"] == pytest.approx(1 - np.cos(np.radians(30)), abs=1e-5)
    easy, _ = prototype_select(x, 0.5, keep_from="easy", clusters=2)
    assert easy.tolist() == (~far).tolist()
    # The pure choice: among eligible units only, ties by position.
    distance = np.array([0.1, 0.5, 0.5, 0.9, 0.2])
    eligible = np.array([True, True, True, False, True])
    assert keep_by_distance(distance, eligible, 0.4, "hard").tolist() == [0, 1, 1, 0, 0]
    assert keep_by_distance(distance, eligible, 0.4, "easy").tolist() == [1, 0, 0, 0, 1]
    assert keep_by_distance(distance, eligible, 1.0, "hard").tolist() == eligible.tolist()


def test_semdedup_keeps_the_first_of_each_near_duplicate_group():
    x = two_clusters()
    copy = x[1] + np.array([0, 0, 0.01, 0])
    x = np.concatenate([x, copy[None] / np.linalg.norm(copy)])
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0])
    assert semdedup(x, clusters, 0.99).tolist() == [True] * 8 + [False]
    assert semdedup(x, np.arange(9), 0.99).all()  # only inside a cluster
    kept, report = prototype_select(x, 1.0, clusters=2, dedup=0.99)
    assert report["dropped_by_dedup"] == 1 and not kept[8] and kept[:8].all()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A small store whose last document is the third with its last word changed, and a model."""
    tmp = tmp_path_factory.mktemp("planted")
    docs = make_docs(30, seed=7, min_words=30, max_words=60)
    words = docs[2].split()
    docs.append(" ".join([*words[:-1], "river" if words[-1] != "river" else "stone"]))
    store = tokenized(tmp, [{"text": d} for d in docs])
    build_model("tiny", store.vocab_size, seed=3).save_pretrained(tmp / "model")
    return store, tmp / "model", tmp


def test_a_planted_near_duplicate_is_dropped_by_dedup(planted, capsys):
    store, model, tmp = planted
    out, emb = tmp / "out", tmp / "emb"
    args = ["prune", "--by", "prototype", "--tokens", store.path, "--embed-model", model]
    args += ["--embeddings", emb, "--out", out, "--keep", "1.0", "--dedup", "0.99"]
    assert main([str(a) for a in args]) == 0
    report = json.loads((out / "prune.json").read_text())
    rows = np.asarray(EmbeddingStore(emb, store).embeddings, np.float64)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    assert unit[2] @ unit[30] > 0.99  # the planted pair really is near
    dropped = report["dropped_by_dedup"]
    assert dropped >= 1 and report["units_kept"] == 31 - dropped
    assert report["by"] == "prototype" and sum(report["cluster_units"]) == 31
    assert report["clusters"] == 6  # round(sqrt(31))
    new = TokenStore(out / "tokens")
    docs = [tuple(store.tokens[a:b]) for a, b in doc_spans(store)]
    kept = {tuple(new.tokens[a:b]) for a, b in doc_spans(new)}
    assert docs[2] in kept and docs[30] not in kept  # the first of the pair survives
    assert not (out / "ref_losses").exists()
    assert '"dropped_by_dedup"' in capsys.readouterr().out


def test_windows_carry_their_losses(planted, tmp_path):
    from rho.io.store import LossStore
    from rho.scoring.score import score_store

    store, model, _ = planted
    losses = score_store(model, store, tmp_path / "l", 16, batch_size=8, progress=False)
    opts = {"embed_model": model, "embeddings": tmp_path / "e", "keep_from": "easy"}
    report = prune_store(store, losses, tmp_path / "o", keep=0.5, unit="window", by="prototype",
                         prototype=opts, progress=False)  # fmt: skip
    n_windows = store.n_windows(16)
    assert report["seq_len"] == 16 and report["units_kept"] == -(-n_windows // 2)
    new = TokenStore(tmp_path / "o" / "tokens")
    carried = LossStore(tmp_path / "o" / "ref_losses", new, 16)
    windows = [store.window(w, 16) for w in range(n_windows)]
    ref = np.asarray(losses.ref_loss)
    by_tokens = {tuple(t): ref[w * 16 : w * 16 + len(t)] for w, t in enumerate(windows)}
    for w in range(new.n_windows(16)):
        expected = by_tokens[tuple(new.window(w, 16))]
        np.testing.assert_array_equal(carried.window(w), expected.astype(np.float32))


def embedding_batches_done(progress) -> int:
    records = list(progress.glob("rank0-of-1-*.npy"))
    return int(np.load(records[0]).sum()) if records else 0


@pytest.mark.slow
def test_kill_9_mid_embedding_resumes_to_identical_embeddings(tmp_path, token_store, model_dir):
    clean = embed_units(load_model(model_dir), str(model_dir), token_store, "window", 16,
                        tmp_path / "clean", batch_size=1)  # fmt: skip
    emb = tmp_path / "emb"
    args = ["prune", "--by", "prototype", "--tokens", token_store.path, "--unit", "window"]
    args += ["--seq-len", "16", "--batch-size", "1", "--embed-model", model_dir]
    args += ["--embeddings", emb, "--out", tmp_path / "out"]
    n_batches = token_store.n_windows(16)
    held = tmp_path / "held"  # killed where it waits after recording a fifth of the batches
    env = hold_env("embed.recorded", max(1, n_batches // 5), held)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rho", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "RHO_EMBED_SAVE_EVERY_S": "0"},  # record after every batch
    )
    try:
        wait_until_held(held, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == -signal.SIGKILL, stderr[-2000:]
    done = embedding_batches_done(emb / "progress")
    assert 0 < done < n_batches, "the run ended before it was killed"
    assert not json.loads((emb / "meta.json").read_text())["complete"]
    assert not (tmp_path / "out").exists()

    resumed = run_rho(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (emb / "embeddings.npy").read_bytes() == (clean.path / "embeddings.npy").read_bytes()
    meta = json.loads((emb / "meta.json").read_text())
    assert meta == {**clean.meta, "model": str(model_dir)}
    assert meta["embedding_hash"] == hash_arrays(np.load(clean.path / "embeddings.npy"))
    assert json.loads((tmp_path / "out" / "prune.json").read_text())["units"] == n_batches


@pytest.mark.slow
def test_torchrun_two_ranks_embed_and_prune_like_one_process(tmp_path, planted):
    store, model, _ = planted
    args = ["prune", "--by", "prototype", "--tokens", str(store.path), "--embed-model", str(model)]
    args += ["--unit", "window", "--seq-len", "16", "--batch-size", "4", "--device", "cpu"]
    one = run_rho(*args, "--embeddings", tmp_path / "e1", "--out", tmp_path / "o1")
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "rho", *args, "--embeddings", str(tmp_path / "e2"), "--out", str(tmp_path / "o2")]
    two = subprocess.run(
        cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, env=SUBPROCESS_ENV
    )
    assert two.returncode == 0, two.stderr[-3000:]
    for one_path, two_path in (("e1", "e2"), ("o1/tokens", "o2/tokens")):
        for name in ("embeddings.npy",) if one_path == "e1" else ("tokens.npy", "doc_offsets.npy"):
            same = (tmp_path / one_path / name).read_bytes()
            assert same == (tmp_path / two_path / name).read_bytes(), name
    report_one = json.loads((tmp_path / "o1" / "prune.json").read_text())
    report_two = json.loads((tmp_path / "o2" / "prune.json").read_text())
    report_two["embeddings"]["path"] = report_one["embeddings"]["path"]
    assert report_one == report_two


def empty_store(tmp_path, token_store) -> Path:
    """A TokenStore of no tokens (rho never writes one: a hand-made or damaged store)."""
    import shutil

    path = tmp_path / "empty"
    path.mkdir()
    tokens, offsets = np.zeros(0, np.uint16), np.zeros(1, np.int64)
    np.save(path / "tokens.npy", tokens)
    np.save(path / "doc_offsets.npy", offsets)
    shutil.copytree(token_store.tokenizer_dir, path / "tokenizer")
    meta = {**token_store.meta, "n_tokens": 0, "n_docs": 0, "max_token_id": 0}
    meta.update(content_hash=hash_arrays(tokens, offsets), has_noise_mask=False, domains=[])
    write_json_atomic(path / "meta.json", meta)
    return path


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--clusters", "401"], "--clusters 401 must be between 1 and the number of units (400)"),
        (["--keep", "0"], "--keep must be in (0, 1], got 0.0"),
        (["--keep", "1.5"], "--keep must be in (0, 1], got 1.5"),
        (["--dedup", "0"], "--dedup must be in (0, 1], got 0.0"),
        (["--dedup", "1.01"], "--dedup must be in (0, 1], got 1.01"),
        (["--embed-model", None], "--by prototype needs --embed-model"),
        (["--tokens", "EMPTY"], "empty holds no tokens (corrupted store)"),
    ],
)
def test_bad_input_is_one_line(tmp_path, token_store, model_dir, capsys, extra, message):
    args = {"--tokens": token_store.path, "--embed-model": model_dir, "--out": tmp_path / "o"}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = empty_store(tmp_path, token_store) if value == "EMPTY" else value
    argv = ["prune", "--by", "prototype"]
    argv += [str(a) for flag, value in args.items() if value is not None for a in (flag, value)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()
    assert not list(token_store.path.parent.glob("*.embeddings-*"))  # no work was started


def test_prototype_options_belong_to_prototype_and_help_lists_them():
    with pytest.raises(UserError, match="--dedup is an option of --by prototype"):
        rho_command("prune", ["--tokens", "t", "--losses", "l", "--out", "o", "--dedup", "0.9"])
    text = run_rho("prune", "--help").stdout
    for option in ("--embed-model", "--embeddings", "--clusters", "--keep-from", "--dedup"):
        assert option in text
    assert "truncated" in text and "faiss" in text
