"""rho.evaluation.heldout: held-out loss and bits per byte per domain, and `rho eval --tokens`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import EVAL_WORDS, make_docs, rho_command, write_jsonl, write_texts

from rho.data.tokenize import tokenize_corpus
from rho.errors import UserError
from rho.evaluation.heldout import byte_lengths, evaluate_store
from rho.io.store import TokenStore, write_token_store
from rho.models import build_model

# --- Bytes per token ------------------------------------------------------------------------------


def test_byte_lengths_sum_to_utf8_bytes(tmp_path):
    """Byte-level BPE pieces map back to exact bytes, even halves of multi-byte characters."""
    texts = ["café au lait — naïve", "日本語のテキスト and ascii", "emoji 🙂 mixed 1,234 ünïcödé"]
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts * 5])
    store = tokenize_corpus([str(corpus)], tmp_path / "tokens", train_vocab=300, progress=False)
    tok = store.tokenizer()
    table = byte_lengths(tok, store.vocab_size)
    assert table.shape == (store.vocab_size,) and table[store.eos_id] == 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert table[ids].sum() == len(text.encode("utf-8"))
    stream = np.asarray(store.tokens, dtype=np.int64)
    assert table[stream].sum() == sum(len(t.encode()) for t in texts * 5)
    # A store without domains reports overall figures only; every byte but window starts counts.
    model = build_model("tiny", store.vocab_size)
    result = evaluate_store(model, store, seq_len=16, progress=False)
    assert result["domains"] == {}
    assert result["overall"]["bytes"] == table[stream].sum() - table[stream[::16]].sum()


# --- Held-out loss per domain ---------------------------------------------------------------------


def _direct(model, store: TokenStore, seq_len: int, carries=None) -> dict[int, list[float]]:
    """Per domain: [nats, tokens, bytes], from a plain forward + F.cross_entropy per window
    (only over the positions ``carries`` marks, when given)."""
    tok = store.tokenizer()
    special = set(tok.all_special_ids)
    ids = np.asarray(store.tokens, dtype=np.int64)
    domains = store.token_domains()
    domains = np.zeros(len(ids), dtype=np.int64) if domains is None else domains
    sums: dict[int, list[float]] = {}
    with torch.no_grad():
        for start in range(0, len(ids), seq_len):
            window = torch.from_numpy(ids[start : start + seq_len])
            if len(window) < 2:
                continue
            logits = model(input_ids=window[None]).logits[0].double()
            losses = F.cross_entropy(logits[:-1], window[1:], reduction="none")
            for offset, loss in enumerate(losses.tolist(), start=start + 1):
                if carries is not None and not carries[offset]:
                    continue
                t = int(ids[offset])
                n_bytes = 0 if t in special else len(tok.decode([t]).encode("utf-8"))
                entry = sums.setdefault(int(domains[offset]), [0.0, 0, 0])
                entry[0] += loss
                entry[1] += 1
                entry[2] += n_bytes
    return sums


def test_per_domain_loss_on_hand_made_store(tmp_path, eval_store, eval_model):
    """Hand-made documents in three domains, a document crossing window boundaries and a short
    last window: per-domain mean loss equals a direct computation."""
    rng = np.random.default_rng(7)
    eos = eval_store.eos_id
    lengths = [5, 23, 9, 14, 3, 17]
    docs = [np.append(rng.integers(1, eval_store.vocab_size, size=n - 1), eos) for n in lengths]
    tokens = np.concatenate(docs)
    hand = write_token_store(
        tmp_path / "hand",
        tokens,
        np.concatenate([[0], np.cumsum(lengths)]),
        eval_store.tokenizer_dir,
        vocab_size=eval_store.vocab_size,
        eos_id=eos,
        doc_domains=np.array([0, 1, 2, 1, 0, 2]),
        domain_names=["a", "b", "c"],
    )
    seq_len = 16  # 71 tokens: four full windows and a short last one
    result = evaluate_store(eval_model, hand, seq_len=seq_len, batch_size=3, progress=False)
    direct = _direct(eval_model, hand, seq_len)
    n_scored = len(tokens) - math.ceil(len(tokens) / seq_len)
    assert result["overall"]["tokens"] == n_scored
    for index, name in enumerate(["a", "b", "c"]):
        nats, count, _ = direct[index]
        got = result["domains"][name]
        assert got["tokens"] == count
        assert got["loss"] == pytest.approx(nats / count, rel=1e-5)
        assert got["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-5)
    total = sum(v[0] for v in direct.values())
    assert result["overall"]["loss"] == pytest.approx(total / n_scored, rel=1e-5)


def test_only_tokens_that_carry_loss_are_evaluated(tmp_path, eval_store, eval_model, capsys):
    """Of a store with a loss mask (instruction data), a token counts where the mask marks it
    and its conversation starts in its window, as in training; a store with none is one line."""
    offsets = np.asarray(eval_store.doc_offsets)
    positions = np.arange(eval_store.n_tokens)
    mask = (positions - offsets[np.searchsorted(offsets, positions, "right") - 1]) >= 3
    seq_len = 32
    doc_start = offsets[np.searchsorted(offsets, positions, "right") - 1]
    carries = mask & (doc_start >= positions - positions % seq_len)
    kwargs = dict(
        vocab_size=eval_store.vocab_size,
        eos_id=eval_store.eos_id,
        doc_domains=eval_store.doc_domains,
        domain_names=eval_store.domain_names,
    )
    args = (np.asarray(eval_store.tokens), offsets, eval_store.tokenizer_dir)
    masked = write_token_store(tmp_path / "masked", *args, loss_mask=mask, **kwargs)
    result = evaluate_store(eval_model, masked, seq_len=seq_len, progress=False)
    direct = _direct(eval_model, masked, seq_len, carries)
    n_carried = sum(v[1] for v in direct.values())
    assert 0 < result["overall"]["tokens"] == n_carried == carries.sum() < mask.sum()
    assert result["overall"]["loss"] == pytest.approx(
        sum(v[0] for v in direct.values()) / n_carried, rel=1e-5
    )
    assert result["overall"]["bytes"] == sum(v[2] for v in direct.values())
    silent = write_token_store(tmp_path / "silent", *args, loss_mask=mask & False, **kwargs)
    with pytest.raises(UserError, match="no token that carries loss under its loss mask"):
        evaluate_store(eval_model, silent, seq_len=seq_len, progress=False)


def test_bits_per_byte_equals_direct_computation(eval_store, eval_model):
    seq_len = 48
    result = evaluate_store(eval_model, eval_store, seq_len=seq_len, batch_size=4, progress=False)
    direct = _direct(eval_model, eval_store, seq_len)
    nats = sum(v[0] for v in direct.values())
    n_bytes = sum(v[2] for v in direct.values())
    assert result["overall"]["bytes"] == n_bytes
    assert result["overall"]["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, 1e-5)
    names = eval_store.domain_names
    assert set(result["domains"]) == set(names)
    for index, name in enumerate(names):
        nats_d, count, bytes_d = direct[index]
        assert result["domains"][name]["bytes"] == bytes_d
        assert result["domains"][name]["bits_per_byte"] == pytest.approx(
            nats_d / math.log(2) / bytes_d, rel=1e-5
        )
    # Batching does not change the answer.
    again = evaluate_store(eval_model, eval_store, seq_len=seq_len, batch_size=1, progress=False)
    assert again["overall"]["loss"] == pytest.approx(result["overall"]["loss"], rel=1e-5)


def test_eval_cli_writes_json_and_markdown(tmp_path, eval_store, eval_checkpoint, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(eval_checkpoint), "--tokens", str(eval_store.path), "--seq-len", "32"]
    assert rho_command("eval", [*argv, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| domain | tokens | bytes | loss | perplexity | bits/byte |" in printed
    assert "| overall |" in printed and "| math |" in printed and "| prose |" in printed
    record = json.loads((out / "eval.json").read_text())
    result = record["loss"]["tokens"]
    assert result["seq_len"] == 32 and result["model"] == str(eval_checkpoint)
    assert set(result["domains"]) == {"math", "prose"}
    assert result["overall"]["perplexity"] == pytest.approx(math.exp(result["overall"]["loss"]))
    assert "## Held-out loss: tokens" in (out / "eval.md").read_text()


def test_eval_cli_refuses_a_checkpoint_with_another_tokenizer(tmp_path, eval_store):
    docs = make_docs(30, seed=9, min_words=4, max_words=29, words=EVAL_WORDS)
    corpus = write_texts(tmp_path / "other.jsonl", docs)
    other = tokenize_corpus([str(corpus)], tmp_path / "other", train_vocab=300, progress=False)
    ckpt = tmp_path / "ckpt"
    build_model("tiny", eval_store.vocab_size).save_pretrained(ckpt)
    other.tokenizer().save_pretrained(ckpt)
    with pytest.raises(UserError, match="another tokenizer"):
        rho_command("eval", ["--model", str(ckpt), "--tokens", str(eval_store.path), "--quiet"])
