import json

import numpy as np
import pytest

from rho.errors import UserError
from rho.io.files import write_json_atomic
from rho.io.store import LossStore, TokenStore, write_token_store
from rho.pruning.prune import keep_top, prune_store, unit_bounds, unit_means, unit_scores
from rho.scoring.loss_writer import loss_store_meta

NAN = float("nan")


def test_unit_means_skip_nan():
    values = np.array([NAN, 1.0, 3.0, NAN, 2.0, NAN])
    bounds = np.array([[0, 3], [3, 5], [5, 6]])
    got = unit_means(values, bounds)
    assert got[:2].tolist() == [2.0, 2.0] and np.isnan(got[2])


def test_unit_scores_reference_and_colorfilter():
    ref = np.array([NAN, 1.0, 1.0, NAN, 3.0, 3.0])
    base = np.array([NAN, 5.0, 5.0, NAN, 4.0, 4.0])
    bounds = np.array([[0, 3], [3, 6]])
    assert unit_scores(ref, bounds).tolist() == [-1.0, -3.0]  # lower reference loss first
    assert unit_scores(ref, bounds, base).tolist() == [4.0, 1.0]  # base − reference


def test_unit_scores_by_entropy_hand_computed():
    ref = np.array([NAN, 1.0, 2.0, NAN, 3.0, 4.0])
    ent = np.array([NAN, 0.1, 0.2, NAN, 1.5, 0.5])
    bounds = np.array([[0, 3], [3, 6]])
    got = unit_scores(ref, bounds, by="reference-entropy", entropy=ent)
    assert got.tolist() == pytest.approx([-0.15, -1.0])  # lower mean entropy first
    # Ranks over the store's 4 scored tokens (0 = worst): by -reference 3, 2, 1, 0; by -entropy
    # 3, 2, 0, 1; means 3, 2, 0.5, 0.5, scaled by n - 1 = 3; unit means 5/6 and 1/6.
    got = unit_scores(ref, bounds, by="reference+entropy", entropy=ent)
    assert got.tolist() == pytest.approx([5 / 6, 1 / 6])
    with pytest.raises(UserError, match="rho score --entropy"):
        unit_scores(ref, bounds, by="reference-entropy")


def test_keep_top_exact_count_nan_last_ties_by_position():
    scores = np.array([1.0, NAN, 3.0, 3.0, 0.0])
    assert keep_top(scores, 0.4).tolist() == [False, False, True, True, False]
    assert keep_top(scores, 0.6).tolist() == [True, False, True, True, False]
    assert keep_top(scores, 1.0).all()
    with pytest.raises(UserError):
        keep_top(scores, 0.0)


@pytest.fixture
def stores(tmp_path):
    """Hand-made stores: 4 documents of 5 tokens, seq_len 4, losses chosen per document."""
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    tokens = np.arange(20) % 7
    offsets = np.array([0, 5, 10, 15, 20])
    noise = np.zeros(20, dtype=bool)
    noise[15:20] = True
    store = write_token_store(
        tmp_path / "tokens",
        tokens,
        offsets,
        tok_dir,
        vocab_size=7,
        eos_id=6,
        doc_domains=np.array([0, 0, 1, 1]),
        domain_names=["math", "noise"],
        noise_mask=noise,
    )
    per_doc = np.repeat([1.0, 2.0, 0.5, 4.0], 5)
    ref = per_doc.copy()
    ref[::4] = NAN  # window starts
    loss_dir = tmp_path / "losses"
    loss_dir.mkdir()
    np.save(loss_dir / "ref_loss.npy", ref.astype(np.float16))
    entropy = np.repeat([3.0, 0.5, 2.0, 1.0], 5)
    entropy[::4] = NAN
    np.save(loss_dir / "ref_entropy.npy", entropy.astype(np.float16))
    meta = loss_store_meta(store, 4, 2, True, model="hand", model_hash="h", score_dtype="float32")
    meta["complete"] = True
    write_json_atomic(loss_dir / "meta.json", meta)
    return store, LossStore(loss_dir, store, 4), tmp_path


def test_prune_windows_keeps_chosen_windows_and_their_losses(stores):
    store, losses, tmp = stores
    report = prune_store(store, losses, tmp / "out", keep=0.4, unit="window", progress=False)
    bounds = unit_bounds(store, "window", 4)
    means = unit_means(np.asarray(losses.ref_loss, np.float64), bounds)
    kept = np.sort(np.argsort(means, kind="stable")[:2])  # the two lowest mean reference losses
    new = TokenStore(tmp / "out" / "tokens")
    new_losses = LossStore(tmp / "out" / "ref_losses", new, 4)
    expected = np.concatenate([np.asarray(store.tokens[a:b]) for a, b in bounds[kept]])
    assert np.array_equal(np.asarray(new.tokens), expected)
    carried = np.concatenate([np.asarray(losses.ref_loss[a:b]) for a, b in bounds[kept]])
    assert np.array_equal(np.asarray(new_losses.ref_loss), carried, equal_nan=True)
    assert np.isnan(new_losses.ref_loss[::4]).all()  # window starts still NaN: aligned
    assert report["units_kept"] == 2 and report["tokens_kept"] == 8
    assert json.loads((tmp / "out" / "prune.json").read_text())["unit"] == "window"


def test_prune_windows_by_entropy_keeps_the_surest_and_carries_entropies(stores):
    store, losses, tmp = stores
    prune_store(store, losses, tmp / "out", keep=0.4, unit="window", by="reference-entropy")
    # Windows' mean entropies (window starts excluded): 3, 0.5, (0.5 + 2 + 2) / 3, (2 + 2 + 1) / 3,
    # 1: the 0.5 and 1 ones (windows 1 and 4) survive.
    new = TokenStore(tmp / "out" / "tokens")
    carried = LossStore(tmp / "out" / "ref_losses", new, 4)
    assert np.array_equal(
        np.asarray(new.tokens), np.asarray(store.tokens)[[*range(4, 8), *range(16, 20)]]
    )
    assert carried.has_entropy
    expected = np.concatenate([losses.ref_entropy[4:8], losses.ref_entropy[16:20]])
    assert np.array_equal(np.asarray(carried.ref_entropy), expected, equal_nan=True)
    carried.verify()
    # reference+entropy ranks the 15 scored tokens of the store (0 = worst, ties share): by
    # -reference the documents' tokens rank 9, 5.5, 12.5, 1.5; by -entropy 1, 12.5, 4.5, 8.5;
    # means 5, 9, 8.5, 5; windows 5, 9, (9 + 8.5 + 8.5) / 3, (8.5 + 8.5 + 5) / 3, 5: 1 and 2 win
    report = prune_store(store, losses, tmp / "o2", keep=0.4, unit="window", by="reference+entropy")
    assert report["by"] == "reference+entropy" and report["units_kept"] == 2
    both = TokenStore(tmp / "o2" / "tokens")
    assert np.array_equal(np.asarray(both.tokens), np.asarray(store.tokens)[4:12])


def test_prune_documents_reports_domains_and_noise(stores, capsys):
    store, losses, tmp = stores
    report = prune_store(store, losses, tmp / "out", keep=0.5, unit="document")
    # Documents' mean reference losses (window starts excluded): the 0.5 and 1.0 ones survive.
    new = TokenStore(tmp / "out" / "tokens")
    assert np.array_equal(
        np.asarray(new.tokens), np.concatenate([store.tokens[0:5], store.tokens[10:15]])
    )
    assert new.doc_offsets.tolist() == [0, 5, 10]
    assert report["kept_fraction_by_domain"] == {"math": 0.5, "noise": 0.5}
    assert report["kept_fraction_noise"] == 0.0 and report["kept_fraction_clean"] == pytest.approx(
        2 / 3
    )
    assert not (tmp / "out" / "ref_losses").exists()  # windows changed: must be re-scored
    assert "rho score" in capsys.readouterr().out


def test_prune_by_excess_needs_base_and_refuses_overwrite(stores):
    store, losses, tmp = stores
    with pytest.raises(UserError, match="base-losses"):
        prune_store(store, losses, tmp / "out", by="excess")
    (tmp / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        prune_store(store, losses, tmp / "out")


def test_a_keep_too_small_to_keep_anything_is_one_line(stores):
    store, losses, tmp = stores
    with pytest.raises(UserError, match="keeps none of the 4 units"):
        prune_store(store, losses, tmp / "out", keep=1e-300, progress=False)
    assert not (tmp / "out").exists()


def test_prune_output_below_a_file_is_one_line(stores):
    store, losses, tmp = stores
    (tmp / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file, not a directory"):
        prune_store(store, losses, tmp / "afile" / "S", keep=0.5, progress=False)
