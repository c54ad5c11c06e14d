"""The reference's entropy: `rho score --entropy` stores it beside the losses (same alignment,
same resumable writer, same hash tie), and the entropy scores rank by it in `rho train` and
`rho prune` (rho.selection.select: reference-entropy, reference+entropy)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import torch_threads
from scipy.stats import rankdata

from rho.cli import main
from rho.errors import UserError
from rho.io.inspect_store import describe
from rho.io.store import LossStore, window_starts
from rho.models import load_model
from rho.scoring import windows as windows_mod
from rho.scoring.score import score_store
from rho.training.options import ModelDataArguments
from rho.training.train import build_trainer
from rho.training.trainer import DUMP_ENV, SelectiveTrainingArguments

SEQ = 32
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sharp_ref(tmp_path_factory, model_dir):
    """The tiny model with a sharpened output layer: its next-token entropies spread over several
    nats (an untrained model's are all near log V: a ranking by them would be by position)."""
    model = load_model(model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    path = tmp_path_factory.mktemp("sharp") / "ref"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def entropy_store(tmp_path_factory, token_store, sharp_ref):
    out = tmp_path_factory.mktemp("ent") / "losses"
    with torch_threads(1):
        return score_store(sharp_ref, token_store, out, SEQ, entropy=True, progress=False)


def direct(model, token_store, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Every token's loss and the entropy of the distribution that predicted it, from the model's
    logits window by window (the alignment rule), NaN at window starts."""
    loss = np.full(token_store.n_tokens, np.nan, dtype=np.float64)
    entropy = loss.copy()
    with torch.no_grad():
        for w in range(token_store.n_windows(seq_len)):
            ids = torch.from_numpy(token_store.window(w, seq_len))[None]
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            span = slice(w * seq_len + 1, w * seq_len + ids.shape[1])
            loss[span] = -log_p.gather(1, ids[0, 1:, None])[:, 0].numpy()
            entropy[span] = -(log_p.exp() * log_p).sum(-1).numpy()
    return loss, entropy


def test_entropy_equals_a_direct_computation_from_the_logits(
    tmp_path, token_store, sharp_ref, entropy_store
):
    store = entropy_store
    assert store.has_entropy and store.complete
    stored = np.asarray(store.ref_entropy, dtype=np.float64)
    nan = np.isnan(stored)
    np.testing.assert_array_equal(nan, window_starts(token_store.n_tokens, SEQ))
    loss, entropy = direct(load_model(sharp_ref).eval(), token_store, SEQ)
    np.testing.assert_allclose(stored[~nan], entropy[~nan], rtol=1e-3, atol=1e-3)  # float16
    assert np.percentile(entropy[~nan], 5) < 1.5 < 3.5 < np.percentile(entropy[~nan], 95)
    assert store.meta["mean_entropy"] == pytest.approx(float(entropy[~nan].mean()), rel=1e-3)
    # The same forward pass: the losses are byte for byte those of a store without entropy.
    plain = score_store(sharp_ref, token_store, tmp_path / "plain", SEQ, progress=False)
    assert not plain.has_entropy and plain.ref_entropy is None
    assert (plain.path / "ref_loss.npy").read_bytes() == (store.path / "ref_loss.npy").read_bytes()
    np.testing.assert_allclose(np.asarray(store.ref_loss)[~nan], loss[~nan], rtol=1e-3, atol=1e-3)
    store.verify()
    text = describe(store.path, verify=True)
    assert "entropy: yes, mean" in text and "loss and entropy hashes verified" in text
    assert "entropy: no (`rho score --entropy` stores it)" in describe(plain.path)
    assert sorted(p.name for p in store.path.iterdir()) == [
        "meta.json",
        "ref_entropy.npy",
        "ref_loss.npy",
    ]


def test_corrupted_entropies_are_caught_by_verify(tmp_path, entropy_store, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(entropy_store.path, copy)
    raw = bytearray((copy / "ref_entropy.npy").read_bytes())
    raw[-3] ^= 0xFF
    (copy / "ref_entropy.npy").write_bytes(bytes(raw))
    assert main(["inspect", "--verify", str(copy)]) == 2
    assert "entropies do not match their hash" in capsys.readouterr().err
    (copy / "ref_entropy.npy").unlink()  # meta says it is there: a one-line error, not a None
    with pytest.raises(UserError, match="ref_entropy.npy is missing"):
        LossStore(copy)


def test_ctrl_c_then_resume_with_entropy_is_byte_identical(
    tmp_path, monkeypatch, token_store, sharp_ref, entropy_store
):
    real, calls = windows_mod.window_losses_and_entropies, {"n": 0}

    def interrupted(model, ids, *rest):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(model, ids, *rest)

    monkeypatch.setattr(windows_mod, "window_losses_and_entropies", interrupted)
    monkeypatch.setattr(
        "rho.scoring.score.SAVE_EVERY_S", 1e9
    )  # only the interrupt records progress
    out = tmp_path / "l"
    with pytest.raises(KeyboardInterrupt):
        score_store(sharp_ref, token_store, out, SEQ, batch_size=1, entropy=True, progress=False)
    assert "complete: no" in describe(out)
    # Resuming without --entropy would leave the entropies half written: refused in one line.
    with pytest.raises(UserError, match="has_entropy differ"):
        score_store(sharp_ref, token_store, out, SEQ, batch_size=1, progress=False)
    monkeypatch.setattr(windows_mod, "window_losses_and_entropies", real)
    store = score_store(
        sharp_ref, token_store, out, SEQ, batch_size=1, entropy=True, progress=False
    )
    for name in ("ref_loss.npy", "ref_entropy.npy"):
        assert (out / name).read_bytes() == (entropy_store.path / name).read_bytes(), name
    assert store.meta["entropy_hash"] == entropy_store.meta["entropy_hash"]


def test_an_unfinished_store_from_before_entropy_resumes(tmp_path, token_store, model_dir):
    """Its meta has no has_entropy key: it holds no entropy, and a plain rerun resumes it."""
    out = tmp_path / "l"
    full = score_store(model_dir, token_store, tmp_path / "full", SEQ, progress=False)
    shutil.copytree(full.path, out)
    meta = json.loads((out / "meta.json").read_text())
    for key in ("has_entropy", "mean_loss", "loss_hash"):
        meta.pop(key)
    meta.update(complete=False, run_id="00ab")
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "progress").mkdir()
    store = score_store(model_dir, token_store, out, SEQ, progress=False)
    assert store.complete and not store.has_entropy
    assert (out / "ref_loss.npy").read_bytes() == (full.path / "ref_loss.npy").read_bytes()


def test_a_store_without_entropy_is_refused_by_entropy_readers(
    tmp_path, token_store, model_dir, capsys
):
    """Old stores (no has_entropy key at all) still read; what needs entropy says so in a line."""
    store = score_store(model_dir, token_store, tmp_path / "old", SEQ, progress=False)
    meta = json.loads((store.path / "meta.json").read_text())
    meta.pop("has_entropy")
    (store.path / "meta.json").write_text(json.dumps(meta))
    old = LossStore(store.path, token_store, SEQ)
    assert not old.has_entropy and "entropy: no" in describe(old.path)
    for score in ("reference-entropy", "reference+entropy"):
        args = ["train", "--tokens", token_store.path, "--ref_losses", old.path, "--preset"]
        args += ["tiny", "--score", score, "--output_dir", tmp_path / "run", "--use_cpu"]
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "rho score --entropy" in err, err
        prune = ["prune", "--tokens", token_store.path, "--losses", old.path, "--by", score]
        assert main([str(a) for a in [*prune, "--out", tmp_path / "pruned"]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "rho score --entropy" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "pruned").exists()


def test_training_checks_the_recorded_finite_shares(tmp_path, token_store, entropy_store, capsys):
    """A finished store records the finite share of its losses and of its entropies; rho train
    checks the records (no pass over the values at start-up): here the values are all finite
    but the records say otherwise, and each is refused in one line."""
    meta = entropy_store.meta
    assert meta["finite_fraction"] == meta["entropy_finite_fraction"] == 1.0
    base = ["train", "--tokens", token_store.path, "--preset", "tiny", "--use_cpu"]
    base += ["--output_dir", tmp_path / "run"]
    cases = [
        ("entropy_finite_fraction", "reference-entropy", "50.0% of the reference entropies"),
        ("finite_fraction", "reference+entropy", "50.0% of the reference losses"),
        ("finite_fraction", "excess", "50.0% of the reference losses"),
    ]
    for i, (key, score, message) in enumerate(cases):
        out = tmp_path / f"l{i}"
        shutil.copytree(entropy_store.path, out)
        (out / "meta.json").write_text(json.dumps({**meta, key: 0.5}))
        assert main([str(a) for a in [*base, "--ref_losses", out, "--score", score]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_entropy_scores_need_a_loss_store_and_token_selection(
    tmp_path, token_store, model_dir, capsys
):
    base = ["train", "--tokens", token_store.path, "--preset", "tiny", "--use_cpu"]
    base += ["--output_dir", tmp_path / "run"]
    cases = [
        (["--score", "reference-entropy", "--ref_model", model_dir], "online --ref_model gives"),
        (["--score", "reference+entropy", "--selection", "sample"], "ranks tokens, not windows"),
        (["--score", "reference-entropy"], "needs --ref_losses or --ref_model"),
    ]
    for extra, message in cases:
        assert main([str(a) for a in [*base, *extra]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


# --- Training by entropy: the trainer's selection against one computed here ---------------------


def expected_selection(dump, token_store, store, score: str, ratio: float) -> np.ndarray:
    """Which targets of a dumped micro-batch the score keeps (batch scope), computed from the
    store directly: entropies (and losses) of each row's window, ranked with numpy / scipy."""
    windows = {}
    for w in range(token_store.n_windows(SEQ)):
        ids = np.full(SEQ, token_store.eos_id, dtype=np.int64)
        part = token_store.window(w, SEQ)
        ids[: len(part)] = part
        windows[ids.tobytes()] = w
    ent, loss = [], []
    for row in dump["input_ids"]:
        w = windows[np.asarray(row, dtype=np.int64).tobytes()]
        values = []
        for array in (store.ref_entropy, store.ref_loss):
            window = np.full(SEQ, np.nan)
            part = np.asarray(array[w * SEQ : (w + 1) * SEQ], dtype=np.float64)
            window[: len(part)] = part
            values.append(window[1:])  # model alignment: target t + 1 of logits t
        ent.append(values[0])
        loss.append(values[1])
    ent, loss = np.concatenate(ent), np.concatenate(loss)
    valid = ~np.isnan(ent) & ~np.isnan(loss)
    if score == "reference-entropy":
        key = -ent
    else:  # mean rank (0 = worst, ties share their mean) of -loss and -entropy, over the batch
        key = np.full(len(ent), np.nan)
        ranks = [rankdata(-x[valid], method="average") - 1 for x in (loss, ent)]
        key[valid] = (ranks[0] + ranks[1]) / 2 / max(int(valid.sum()) - 1, 1)
    k = math.ceil(ratio * int(valid.sum()) - 1e-9)
    positions = np.flatnonzero(valid)
    order = positions[np.lexsort((positions, -key[positions]))]  # best first, ties by position
    selected = np.zeros(len(ent), dtype=bool)
    selected[order[:k]] = True
    return selected.reshape(len(dump["input_ids"]), SEQ - 1)


@pytest.mark.parametrize("score", ["reference-entropy", "reference+entropy"])
def test_training_selects_by_the_reference_entropy(
    tmp_path, monkeypatch, token_store, entropy_store, score
):
    monkeypatch.setenv(DUMP_ENV, str(tmp_path / "dump"))
    data = ModelDataArguments(
        tokens=str(token_store.path), preset="tiny", ref_losses=str(entropy_store.path)
    )
    args = SelectiveTrainingArguments(
        score=score,
        ratio=0.4,
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        max_steps=3,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = build_trainer(data, args)
    trainer.train()
    dumps = sorted((tmp_path / "dump").glob("*.npz"))
    assert len(dumps) == 3
    for file in dumps:
        dump = np.load(file)
        expected = expected_selection(dump, token_store, entropy_store, score, 0.4)
        np.testing.assert_array_equal(dump["selected"], expected)
    if score == "reference-entropy":  # the kept tokens are the surer ones
        assert expected.sum() == math.ceil(0.4 * 4 * (SEQ - 1) - 1e-9)


@pytest.mark.slow
def test_torchrun_two_processes_rank_reference_entropy_like_one(
    tmp_path, token_store, entropy_store
):
    """reference+entropy ranks within the unit: under torchrun with scope=batch the keys of every
    rank are gathered before their ranks are taken, so 2 ranks x 2 rows select like 1 x 4."""
    from test_trainer import two_ranks_and_one_process

    steps = 3
    common = [
        "train", "--tokens", token_store.path, "--ref_losses", entropy_store.path,
        "--preset", "tiny", "--score", "reference+entropy", "--scope", "batch", "--use_cpu",
        "--report_to", "none", "--save_strategy", "no", "--max_steps", str(steps),
        "--logging_steps", "1", "--seed", "0", "--disable_tqdm", "true",
    ]  # fmt: skip
    two_ranks_and_one_process(common, tmp_path)
    per_rank_topk = False
    for step in range(steps):
        ranks = [np.load(tmp_path / "dump2" / f"step{step:05d}-micro0-rank{r}.npz") for r in (0, 1)]
        single = np.load(tmp_path / "dump1" / f"step{step:05d}-micro0-rank0.npz")
        np.testing.assert_array_equal(
            np.concatenate([r["input_ids"] for r in ranks]), single["input_ids"]
        )
        np.testing.assert_array_equal(
            np.concatenate([r["selected"] for r in ranks]), single["selected"]
        )
        expected = expected_selection(single, token_store, entropy_store, "reference+entropy", 0.6)
        np.testing.assert_array_equal(single["selected"], expected)
        per_rank_topk |= any(
            r["selected"].sum() != math.ceil(0.6 * 2 * (SEQ - 1) - 1e-9) for r in ranks
        )
    assert per_rank_topk, "the ranks never selected differently from a per-rank selection"
