"""Instruction data: `rho tokenize --format messages` (rho.data.chat), the loss mask beside the
tokens,
the rule for windows that start mid-conversation (rho.io.store.loss_positions), and what scoring and
training do with it: prompts are never scored, never selected and get no gradient."""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import torch_threads, write_jsonl
from transformers import AutoTokenizer, TrainerCallback

from rho.cli import main
from rho.data.chat import Conversation, render, render_plain
from rho.data.token_parts import token_noise
from rho.data.tokenize import tokenize_corpus
from rho.errors import UserError
from rho.io.inspect_store import describe
from rho.io.store import LossStore, TokenStore, loss_positions, window_starts
from rho.models import build_model
from rho.pruning.prune import prune_store
from rho.scoring.loss_writer import finite_fraction
from rho.scoring.score import score_store
from rho.selection.loss import slm_loss
from rho.training.options import ModelDataArguments
from rho.training.train import build_trainer
from rho.training.trainer import DUMP_ENV, SelectiveTrainingArguments

SEQ = 64
pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = "the a cat dog sat ran on under mat tree bird sang quick brown fox jumps over lazy".split()


def conversations(n: int, seed: int = 0) -> list[dict]:
    """Chats of 1-2 exchanges, a system prompt now and then, some ending with the user."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    records = []
    for i in range(n):
        messages = [{"role": "system", "content": "be brief"}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 2)):
            messages.append({"role": "user", "content": text(2, 8) + "?"})
            messages.append({"role": "assistant", "content": text(2, 10) + "."})
        if i % 5 == 4:
            messages.append({"role": "user", "content": "thanks"})
        records.append({"messages": messages})
    return records


def convo(*pairs: tuple[str, str]) -> Conversation:
    return Conversation([{"role": r, "content": c} for r, c in pairs], None, "x.jsonl:1")


# --- Rendering and masks, by hand ------------------------------------------------------------


def test_plain_rendering_and_response_spans_by_hand():
    conv = convo(("user", "hi?"), ("assistant", "yo."), ("user", "ok"), ("assistant", "b"))
    text, spans = render(conv, render_plain)
    assert text == "user: hi?\nassistant: yo.\nuser: ok\nassistant: b\n"
    # after "assistant: " (header): the content and the newline that ends the turn
    assert [text[a:b] for a, b in spans] == ["yo.\n", "b\n"]
    assert spans == [(21, 25), (45, 47)]


def test_template_spans_follow_the_template_even_when_it_trims():
    def template(messages):  # a chat template that trims content and closes turns with </s>
        return "".join(f"<{m['role']}>{m['content'].strip()}</s>" for m in messages)

    text, spans = render(convo(("user", " q "), ("assistant", "  a b  ")), template)
    assert text == "<user>q</s><assistant>a b</s>"
    assert [text[a:b] for a, b in spans] == ["a b</s>"]

    def rewrites_history(messages):  # earlier answers are dropped once a later turn follows
        shown = [m for m in messages[:-1] if m["role"] != "assistant"] + messages[-1:]
        return "".join(f"<{m['role']}>{m['content']}" for m in shown)

    conv = convo(("user", "q"), ("assistant", "a"), ("user", "r"))
    with pytest.raises(UserError, match="x.jsonl:1: turn 2: the chat template renders"):
        render(conv, rewrites_history)


def test_the_mask_marks_tokens_overlapping_a_response_span():
    offsets = [(0, 4), (4, 5), (5, 9), (9, 10), (10, 10)]  # marked as noise spans are
    assert token_noise(offsets, [(5, 10)], 10).tolist() == [False, False, True, True, False]
    assert token_noise(offsets, [(3, 6)], 10).tolist() == [True, True, True, False, False]
    assert token_noise(offsets, [], 10).tolist() == [False] * 5


def test_loss_positions_leave_out_conversations_begun_in_an_earlier_window():
    offsets = np.array([0, 5, 12, 20])  # conversations [0, 5), [5, 12), [12, 20)
    mask = np.ones(20, dtype=bool)
    mask[[1, 6]] = False  # two prompt tokens
    got = loss_positions(mask, offsets, 0, 20, 4)
    # windows [0,4) [4,8) [8,12) [12,16) [16,20): token 4 ends the conversation begun at 0;
    # window [8,12) holds only the tail of the one begun at 5, [16,20) of the one begun at 12
    expected = np.array([1, 0, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(loss_positions(mask, offsets, 8, 16, 4), expected[8:16])
    with pytest.raises(ValueError, match="window start"):
        loss_positions(mask, offsets, 2, 20, 4)


# --- Tokenizing: round trips and the mask's alignment -------------------------------------------


@pytest.fixture(scope="module")
def chat_jsonl(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", conversations(120))


@pytest.fixture(scope="module")
def chat_store(tmp_path_factory, chat_jsonl) -> TokenStore:
    out = tmp_path_factory.mktemp("chatstore") / "tokens"
    args = ["tokenize", chat_jsonl, "--format", "messages", "--train-tokenizer", "400"]
    assert main([str(a) for a in [*args, "--out", out]]) == 0
    return TokenStore(out)


def runs_of(tokenizer, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """The decoded text of each run of consecutive masked-in tokens."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [tokenizer.decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def assistant_turns(record: dict, end: str) -> list[str]:
    """What the mask must cover, one string per run: each assistant content plus its end of turn;
    the document's EOS joins the last run when the conversation ends with the assistant."""
    messages = record["messages"]
    runs = [m["content"] + end for m in messages if m["role"] == "assistant"]
    if messages[-1]["role"] == "assistant":
        runs[-1] += "<|endoftext|>"
    return runs


def test_messages_round_trip_with_the_plain_fallback(chat_store, chat_jsonl):
    store, tok = chat_store, chat_store.tokenizer()
    records = [json.loads(line) for line in chat_jsonl.read_text().splitlines()]
    assert store.n_docs == len(records) and store.meta["has_loss_mask"]
    assert not tok.chat_template  # a trained tokenizer: the "<role>: content" fallback
    for i, record in enumerate(records):
        ids = np.asarray(store.tokens[store.doc_offsets[i] : store.doc_offsets[i + 1]])
        mask = np.asarray(store.loss_mask[store.doc_offsets[i] : store.doc_offsets[i + 1]])
        assert tok.decode(ids) == render_plain(record["messages"]) + "<|endoftext|>"
        # byte-level BPE glues the space after "assistant:" to the first word of the content
        assert runs_of(tok, ids, mask) == [" " + t for t in assistant_turns(record, "\n")]
        assert mask[-1] == (record["messages"][-1]["role"] == "assistant")  # the EOS
    text = describe(store.path)
    assert "loss mask: yes" in text and "response tokens" in text


def test_messages_round_trip_with_a_chat_template(tmp_path, chat_store, chat_jsonl):
    tok = AutoTokenizer.from_pretrained(chat_store.tokenizer_dir)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] | trim }}{{ eos_token }}\n"
        "{% endfor %}"
    )
    tok.save_pretrained(tmp_path / "tok")
    store = tokenize_corpus(
        [str(chat_jsonl)], tmp_path / "t", tokenizer=tmp_path / "tok", format="messages",
        progress=False,
    )  # fmt: skip
    tok = store.tokenizer()
    assert tok.chat_template
    for i, line in enumerate(chat_jsonl.read_text().splitlines()[:40]):
        record = json.loads(line)
        ids = np.asarray(store.tokens[store.doc_offsets[i] : store.doc_offsets[i + 1]])
        mask = np.asarray(store.loss_mask[store.doc_offsets[i] : store.doc_offsets[i + 1]])
        assert tok.decode(ids) == tok.apply_chat_template(record["messages"], tokenize=False) + (
            "<|endoftext|>"
        )
        # the header "<assistant>\n" is prompt; content, end-of-turn EOS and newline are response
        assert runs_of(tok, ids, mask) == assistant_turns(record, "<|endoftext|>\n")
    assert store.meta["sources"][0]["template"] == "chat template"


def test_bad_messages_are_one_line(tmp_path, chat_store, capsys):
    tok = chat_store.tokenizer_dir
    cases = [
        ({"messages": [{"role": "user"}]}, "missing messages.0.content"),
        ({"messages": [{"content": "hi"}]}, "missing messages.0.role"),
        ({"messages": "hi"}, "messages is 'hi'"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content is 3"),
        ({"text": "plain"}, "no 'messages' field"),
    ]
    for i, (record, message) in enumerate(cases):
        path = write_jsonl(tmp_path / f"bad{i}.jsonl", [conversations(1)[0], record])
        args = ["tokenize", path, "--format", "messages", "--tokenizer", tok]
        assert main([str(a) for a in [*args, "--out", tmp_path / f"o{i}"]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"bad{i}.jsonl:2" in err and message in err, err
    good = write_jsonl(tmp_path / "good.jsonl", conversations(3))
    (tmp_path / "good.txt").write_text("text")
    for extra, message in (
        (["--workers", "2"], "drop --workers"),
        (["--text-field", "body"], "drop --text-field"),
    ):
        args = ["tokenize", good, "--format", "messages", "--tokenizer", tok, *extra]
        assert main([str(a) for a in [*args, "--out", tmp_path / "w"]]) == 2
        assert message in capsys.readouterr().err
    args = ["tokenize", tmp_path / "good.txt", "--format", "messages", "--tokenizer", tok]
    assert main([str(a) for a in [*args, "--out", tmp_path / "w"]]) == 2
    assert "reads .jsonl files" in capsys.readouterr().err
    assert (
        sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith((".jsonl", ".txt"))) == []
    )


def test_messages_under_torchrun_are_refused_in_one_line(tmp_path, chat_store, capsys, monkeypatch):
    """Chat conversations do not go through the parts torchrun ranks share: every rank refuses
    (before any process group or output), none waits for the others."""
    good = write_jsonl(tmp_path / "good.jsonl", conversations(3))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    args = ["tokenize", good, "--format", "messages", "--tokenizer", chat_store.tokenizer_dir]
    assert main([str(a) for a in [*args, "--out", tmp_path / "o"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without torchrun" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl"]


# --- Scoring: only the tokens that carry loss ----------------------------------------------------


@pytest.fixture(scope="module")
def chat_losses(tmp_path_factory, chat_store):
    root = tmp_path_factory.mktemp("chatref")
    build_model("tiny", chat_store.vocab_size, seed=1).save_pretrained(root / "ref")
    with torch_threads(1):
        return score_store(root / "ref", chat_store, root / "losses", SEQ, entropy=True,
                           progress=False)  # fmt: skip


def test_scoring_a_masked_store_scores_only_the_loss_positions(chat_store, chat_losses):
    carries = loss_positions(chat_store.loss_mask, chat_store.doc_offsets, 0,
                             chat_store.n_tokens, SEQ)  # fmt: skip
    expected = carries & ~window_starts(chat_store.n_tokens, SEQ)
    for values in (chat_losses.ref_loss, chat_losses.ref_entropy):
        np.testing.assert_array_equal(np.isfinite(np.asarray(values, dtype=np.float32)), expected)
    # Most tokens are NaN by design; the finite check counts only the loss positions, so the
    # store was finished, not refused (the plain rule would see well under 90%).
    assert np.isfinite(np.asarray(chat_losses.ref_loss, dtype=np.float32)).mean() < 0.9
    assert chat_losses.complete and finite_fraction(chat_losses.ref_loss, SEQ, chat_store) == 1.0
    # The shares recorded at finish (what rho train checks) follow the same rule, and a store
    # without the record is read through with the mask of the tokens it scored.
    assert chat_losses.meta["finite_fraction"] == chat_losses.meta["entropy_finite_fraction"] == 1
    unrecorded = LossStore(chat_losses.path)
    unrecorded.meta = {k: v for k, v in unrecorded.meta.items() if "finite" not in k}
    assert unrecorded.finite_fraction(chat_store) == 1.0
    assert unrecorded.finite_fraction(chat_store, "entropies") == 1.0
    assert unrecorded.finite_fraction() < 0.9  # the plain rule: why the tokens must be given
    assert chat_losses.meta["loss_mask"] is True
    masked_out = int((~carries & ~window_starts(chat_store.n_tokens, SEQ)).sum())
    assert chat_losses.meta["n_masked_out"] == masked_out
    assert "loss mask: yes" in describe(chat_losses.path)
    # A loss position left NaN is still counted as missing.
    broken = np.array(chat_losses.ref_loss, dtype=np.float32)
    broken[np.flatnonzero(expected)[::5]] = np.nan
    assert finite_fraction(broken, SEQ, chat_store) == pytest.approx(0.8, abs=0.01)


# --- Training: prompts carry no loss, no gradient, and are never selected ------------------------


class GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})


def chat_trainer(chat_store, chat_losses, out, selection: dict):
    data = ModelDataArguments(
        tokens=str(chat_store.path), preset="tiny", ref_losses=str(chat_losses.path)
    )
    args = SelectiveTrainingArguments(
        **selection, output_dir=str(out), use_cpu=True, report_to="none",
        per_device_train_batch_size=4,
        max_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        learning_rate=1e-3, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
    )  # fmt: skip
    return build_trainer(data, args)


@pytest.mark.parametrize("selection", ["none", "token"])
def test_prompt_tokens_get_zero_gradient_and_are_never_selected(
    tmp_path, monkeypatch, chat_store, chat_losses, selection
):
    monkeypatch.setenv(DUMP_ENV, str(tmp_path / "dump"))
    trainer = chat_trainer(chat_store, chat_losses, tmp_path / "run", {"selection": selection})
    model = copy.deepcopy(trainer.model)  # the weights before the step
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    (dump,) = [np.load(f) for f in (tmp_path / "dump").glob("*.npz")]
    ids = torch.as_tensor(dump["input_ids"])
    # Which targets carry loss, from the store (the step's rows are windows of it)
    windows = {
        tuple(chat_store.window(w, SEQ).tolist()): w for w in range(chat_store.n_windows(SEQ))
    }
    rows = [windows[tuple(row.tolist())] for row in dump["input_ids"]]
    # model alignment: target t + 1 of logits t
    carries = np.stack([chat_store.window_loss_positions(w, SEQ) for w in rows])[:, 1:]
    prompt = ~carries
    assert prompt.any() and carries.any()
    selected = dump["selected"]
    assert not (selected & prompt).any()  # never selected
    valid = carries & ~np.isnan(np.stack([chat_losses.window(w) for w in rows])[:, 1:])
    if selection == "none":
        assert np.array_equal(selected, carries)  # CLM: every response token, no prompt
    else:  # SLM: the ratio is of the response tokens
        assert selected.sum() == math.ceil(0.6 * int(valid.sum()) - 1e-9)
    # The step's gradient is that of the mean loss over the selected (response) tokens alone:
    # prompt tokens contribute exactly nothing.
    logits = model(input_ids=ids).logits[:, :-1]
    losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    keep = torch.as_tensor(selected)
    (losses[keep].sum() / keep.sum()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(capture.grads[0][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # every token of the rows is input, prompt included: tokens_seen counts them all
    assert trainer.state.num_input_tokens_seen == ids.numel()


def test_slm_loss_gives_ignored_prompt_targets_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 6))
    targets[:, :3] = -100  # the prompt
    out = slm_loss(logits, targets, torch.rand(2, 6), ratio=0.5)
    out.loss.backward()
    assert not out.selected[:, :3].any() and out.selected.sum() == 3  # ceil(0.5 * 6 responses)
    assert (logits.grad[:, :3] == 0).all() and logits.grad[out.selected].abs().sum() > 0


# --- Old stores, pruning ------------------------------------------------------------------------


def test_a_token_store_from_before_loss_masks_reads_unmasked(tmp_path, token_store):
    copy_dir = tmp_path / "old"
    shutil.copytree(token_store.path, copy_dir)
    meta = json.loads((copy_dir / "meta.json").read_text())
    meta.pop("has_loss_mask")
    (copy_dir / "meta.json").write_text(json.dumps(meta))
    old = TokenStore(copy_dir)
    assert old.loss_mask is None and old.loss_positions(0, 64, 32) is None
    old.verify()  # its content hash (tokens and documents only) still holds
    assert "loss mask: no" in describe(copy_dir)


def test_a_declared_mask_that_is_missing_is_one_line(tmp_path, chat_store):
    broken = tmp_path / "t"
    shutil.copytree(chat_store.path, broken)
    (broken / "loss_mask.npy").unlink()
    with pytest.raises(UserError, match="loss_mask.npy is missing"):
        TokenStore(broken)


def test_pruned_windows_keep_the_mask_they_trained_with(tmp_path, chat_store, chat_losses):
    prune_store(chat_store, chat_losses, tmp_path / "p", keep=0.5, unit="window", progress=False)
    new = TokenStore(tmp_path / "p" / "tokens")
    carried = LossStore(tmp_path / "p" / "ref_losses", new, SEQ)
    # every kept window is a document now: the old tails must not start carrying loss
    positions = new.loss_positions(0, new.n_tokens, SEQ)
    scored = ~np.isnan(np.asarray(carried.ref_loss, dtype=np.float32))
    np.testing.assert_array_equal(scored, positions & ~window_starts(new.n_tokens, SEQ))
    assert carried.has_entropy and carried.meta["loss_mask"] is True
    # recorded over the pruned store's loss positions: rho train accepts it as it is
    assert carried.meta["finite_fraction"] == carried.meta["entropy_finite_fraction"] == 1.0


@pytest.mark.slow
def test_messages_tokenize_memory_stays_close_to_texts(tmp_path, chat_store):
    """One long assistant message takes about the memory of the same characters as plain text
    (it once took 2.1x here, 3.1x in RSS at 10 MB: the whole text's offsets as Python lists).
    Measured as Python's traced allocation peak (tracemalloc, numpy included): no clock."""
    rng = random.Random(5)
    text = " ".join(rng.choice(WORDS) for _ in range(40_000))  # ~165,000 characters
    plain = write_jsonl(tmp_path / "text.jsonl", [{"text": text}])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "go"}, {"role": "assistant", "content": text}]}])  # fmt: skip

    def peak(path, format: str, out: str) -> int:
        tracemalloc.start()
        try:
            tokenize_corpus([str(path)], tmp_path / out, tokenizer=chat_store.tokenizer_dir,
                            format=format, progress=False)  # fmt: skip
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(plain, "text", "warm-text"), peak(chat, "messages", "warm-chat")  # lazy imports
    as_text, as_messages = peak(plain, "text", "t"), peak(chat, "messages", "m")
    assert as_messages < 1.5 * as_text, (as_messages, as_text)


def test_chats_with_nothing_to_learn_are_refused_at_tokenize(tmp_path, chat_store, capsys):
    """No assistant turn anywhere, or a role typo, is one line at tokenize (it once went on to
    score and train with 0 loss tokens); no store is left."""
    tok = chat_store.tokenizer_dir
    no_answer = [{"messages": [{"role": "user", "content": "hi"}]}] * 3
    typo = [conversations(1)[0], {"messages": [{"role": "asistant", "content": "hi"}]}]
    for name, records, says in (
        ("none", no_answer, "no token carries loss: no conversation has an 'assistant' turn"),
        ("typo", typo, "typo.jsonl:2: message 1: unknown role 'asistant'"),
    ):
        path = write_jsonl(tmp_path / f"{name}.jsonl", records)
        args = ["tokenize", path, "--format", "messages", "--tokenizer", tok, "--out"]
        assert main([str(a) for a in [*args, tmp_path / f"o-{name}"]]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
        assert not (tmp_path / f"o-{name}").exists()
