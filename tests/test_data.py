"""rho.data.batches: training windows follow the store's alignment rule; partial windows are
padded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_docs, tokenized

from rho.data.batches import WindowCollator, WindowDataset
from rho.errors import UserError
from rho.io.store import LossStore, window_bounds

SEQ = 32


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A TokenStore whose length is not a multiple of SEQ, and its LossStore from a tiny model."""
    from rho.models import build_model
    from rho.scoring.score import score_store

    root = tmp_path_factory.mktemp("data")
    words = "alpha beta gamma delta eps zeta eta theta iota kappa lambda mu nu xi".split()
    docs = make_docs(60, seed=0, min_words=5, max_words=60, words=words)
    tokens = tokenized(root, [{"text": d} for d in docs])
    if tokens.n_tokens % SEQ == 0:  # the last window must be partial for these tests
        pytest.skip("corpus happened to fill its last window")
    ref = build_model("tiny", tokens.vocab_size, seed=1)
    losses = score_store(ref, tokens, root / "losses", SEQ, progress=False, device="cpu")
    return tokens, losses, ref


def test_windows_follow_the_alignment_rule(stores):
    tokens, losses, _ = stores
    data = WindowDataset(tokens, SEQ, losses)
    assert len(data) == -(-tokens.n_tokens // SEQ)
    for i in (0, 1, len(data) // 2, len(data) - 1):
        start, end = window_bounds(i, SEQ, tokens.n_tokens)
        item = data[i]
        np.testing.assert_array_equal(item["input_ids"], tokens.tokens[start:end])
        np.testing.assert_array_equal(item["ref_loss"], losses.ref_loss[start:end].astype("f4"))
        assert np.isnan(item["ref_loss"][0])  # a window start has no context
        assert not np.isnan(item["ref_loss"][1:]).any()
    assert len(data[len(data) - 1]["input_ids"]) == tokens.n_tokens % SEQ


def test_ref_loss_is_the_loss_of_that_token_given_the_window_before_it(stores):
    """ref_loss[t] = -log p(input_ids[t] | input_ids[:t]): what the trainer compares with the
    learner's loss on target t (logits[t-1])."""
    tokens, losses, ref = stores
    item = WindowDataset(tokens, SEQ, losses)[3]
    ids = torch.as_tensor(item["input_ids"])[None]
    with torch.no_grad():
        logp = torch.log_softmax(ref(input_ids=ids).logits[0, :-1].float(), -1)
    expected = -logp.gather(1, ids[0, 1:, None])[:, 0].numpy()
    np.testing.assert_allclose(item["ref_loss"][1:], expected, rtol=2e-3, atol=1e-3)  # float16


def test_collator_pads_a_partial_last_window(stores):
    tokens, losses, _ = stores
    data = WindowDataset(tokens, SEQ, losses)
    full, part = data[0], data[len(data) - 1]
    n = len(part["input_ids"])
    batch = WindowCollator(SEQ, pad_id=tokens.eos_id)([full, part])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["ref_loss"].shape
    assert batch["input_ids"].shape == (2, SEQ) and batch["input_ids"].dtype == torch.long
    np.testing.assert_array_equal(batch["input_ids"][0], full["input_ids"])
    np.testing.assert_array_equal(batch["labels"][0], full["input_ids"])
    np.testing.assert_array_equal(batch["input_ids"][1, :n], part["input_ids"])
    np.testing.assert_array_equal(batch["labels"][1, :n], part["input_ids"])
    assert (batch["labels"][1, n:] == -100).all()
    assert (batch["input_ids"][1, n:] == tokens.eos_id).all()
    assert torch.isnan(batch["ref_loss"][1, n:]).all()
    assert not torch.isnan(batch["ref_loss"][:, 1:n]).any()
    assert torch.isnan(batch["ref_loss"][:, 0]).all()


def test_collator_without_reference_losses(stores):
    tokens, _, _ = stores
    batch = WindowCollator(SEQ)([WindowDataset(tokens, SEQ)[0]])
    assert set(batch) == {"input_ids", "labels", "input_length"}


def test_dataset_refuses_a_loss_store_of_another_seq_len(stores):
    tokens, losses, _ = stores
    with pytest.raises(UserError, match="seq_len"):
        WindowDataset(tokens, SEQ * 2, LossStore(losses.path))
