"""Instruction data: chat conversations -> a TokenStore whose loss mask marks the response tokens
(`rho tokenize --format messages`).

Input: JSONL, one conversation per line, ``{"messages": [{"role": ..., "content": ...}, ...]}``
(TRL's conversational format), with an optional ``domain``. Each conversation is one document
of the store, ending with EOS like every document.

Rendering: the tokenizer's chat template when it has one; otherwise the plain fallback, one
``"<role>: <content>\\n"`` line per message (what a tokenizer trained by rho sees: it has no
template).

The loss mask (True = the token carries loss): the tokens whose characters overlap an assistant
turn as the renderer writes it after its role header, that is the content and the end-of-turn
text that follows it (the template's end-of-turn marker, the fallback's newline), so the model
learns to end its turn; the role header and every other message are prompt. The EOS that ends a
conversation carries loss when the conversation ends with an assistant turn.

Where a turn is: the conversation up to that turn is rendered twice, once as it is and once with
the content replaced by a marker (``_MARK``); the text before the marker is the header and the
text after it the end of the turn, so a template that trims or rewrites the content is still
located exactly. A template that renders a turn differently once later turns follow (e.g. one
that drops earlier reasoning) cannot be aligned and is refused in one line.

Windows that start mid-conversation follow rho.store's rule (``loss_positions``).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from rho.corpus import Source
from rho.errors import UserError
from rho.files import one_line, sha256_file
from rho.schema import ChatRecord, parse_json, validate
from rho.store import TokenStore, smallest_token_dtype, write_token_store

RESPONSE_ROLE = "assistant"
MESSAGES_FIELD = "messages"
ENCODE_BATCH = 256  # conversations per tokenizer call
_MARK = "RHOxRESPONSExMARK"  # letters only: no template escapes or splits it
JSONL = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")

Span = tuple[int, int]


@dataclass
class Conversation:
    messages: list[dict[str, str]]  # role and content only
    domain: str | None
    where: str  # path:line, for errors


def read_conversations(sources: list[Source]) -> Iterator[Conversation]:
    """Every conversation of the JSONL sources, checked (one line naming path:line if not)."""
    for source in sources:
        path = source.path
        if not path.name.endswith(JSONL):
            raise UserError(f"{path}: --format messages reads .jsonl files (one conversation each)")
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                for number, raw in enumerate(f, 1):
                    if raw.strip():
                        yield _conversation(raw, f"{path}:{number}", source.domain)
        except (OSError, EOFError, zlib.error) as err:  # also a corrupted or truncated .gz
            raise UserError(f"{path}: cannot read ({one_line(err)})") from None


def _conversation(raw: bytes, where: str, domain: str | None) -> Conversation:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{where}: text is not valid UTF-8 (byte {err.start})") from None
    record = parse_json(text, where)
    if not isinstance(record, dict) or MESSAGES_FIELD not in record:
        raise UserError(f"{where}: no {MESSAGES_FIELD!r} field (a list of role/content messages)")
    checked = validate(ChatRecord, record, where)
    messages = [{"role": m.role, "content": m.content} for m in checked.messages]
    for m in messages:
        try:  # a lone surrogate escape would break the tokenizer and the meta.json later
            m["content"].encode("utf-8")
            m["role"].encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{where}: a message holds a lone surrogate, not text") from None
    return Conversation(messages, domain or checked.domain, where)


# --- Rendering and locating the responses ---------------------------------------------------------


def render_plain(messages: list[dict[str, str]]) -> str:
    """The fallback for a tokenizer without a chat template: ``<role>: <content>`` lines."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def renderer(tok) -> Callable[[list[dict[str, str]]], str]:
    """The tokenizer's chat template (as text, no generation prompt), else ``render_plain``."""
    if not has_chat_template(tok):
        return render_plain

    def template(messages: list[dict[str, str]]) -> str:
        text = tok.apply_chat_template(messages, tokenize=False)
        if not isinstance(text, str):
            raise TypeError(f"the chat template gave a {type(text).__name__}, not text")
        return text

    return template


def render(conv: Conversation, render_fn) -> tuple[str, list[Span]]:
    """A conversation's text and the character spans of its assistant turns (content and end of
    turn, header excluded); see the module docstring."""

    def run(messages):
        try:
            return render_fn(messages)
        except Exception as err:  # noqa: BLE001 (jinja raises many kinds for a refused chat)
            raise UserError(
                f"{conv.where}: the chat template refused this conversation ({one_line(err, 120)})"
            ) from None

    text = run(conv.messages)
    spans = []
    for i, message in enumerate(conv.messages):
        if message["role"] != RESPONSE_ROLE:
            continue
        upto = run(conv.messages[: i + 1])
        probe = run([*conv.messages[:i], {**message, "content": _MARK}])
        parts = probe.split(_MARK)
        if len(parts) != 2 or _MARK in message["content"]:
            raise UserError(f"{conv.where}: turn {i + 1}: cannot locate the assistant's content")
        header, end_of_turn = parts
        located = (
            upto.startswith(header)
            and upto.endswith(end_of_turn)
            and len(header) + len(end_of_turn) <= len(upto)
        )
        if not located or not text.startswith(upto):
            raise UserError(
                f"{conv.where}: turn {i + 1}: the chat template renders this turn differently "
                "once later turns follow (or around its content), so its response tokens cannot "
                "be located"
            )
        spans.append((len(header), len(upto)))
    return text, spans


def response_mask(offsets: np.ndarray, spans: list[Span]) -> np.ndarray:
    """Bool per token: does its [start, end) character span overlap any response span?"""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(offsets), dtype=bool)
    for a, b in spans:
        mask |= (offsets[:, 0] < b) & (offsets[:, 1] > a)
    return mask


def encode(tok, convs: list[Conversation], render_fn, dtype) -> list[tuple[np.ndarray, ...]]:
    """(ids with EOS appended, loss mask) per conversation."""
    rendered = [render(c, render_fn) for c in convs]
    encoded = tok(
        [text for text, _ in rendered],
        add_special_tokens=False,  # a template writes its own BOS and markers into the text
        return_offsets_mapping=True,
        verbose=False,
    )
    out = []
    for i, conv in enumerate(convs):
        mask = response_mask(encoded["offset_mapping"][i], rendered[i][1])
        ends_with_response = conv.messages[-1]["role"] == RESPONSE_ROLE
        ids = np.asarray([*encoded["input_ids"][i], tok.eos_token_id], dtype=dtype)
        out.append((ids, np.append(mask, ends_with_response)))
    return out


# --- The stage (rho.tokenize dispatches --format messages here) -----------------------------------


def tokenize_conversations(
    sources, out, work, tokenizer, train_vocab, text_field, workers, overwrite, progress
) -> TokenStore:
    """Conversations -> TokenStore with ``loss_mask.npy``, in ``work`` (scratch) then ``out``.
    The signature is rho.tokenize's stage's; ``text_field`` and ``workers`` are refused other
    than their defaults."""
    from rho.tokenize import load_tokenizer, train_tokenizer

    if text_field != "text":
        raise UserError(f"--format messages reads the {MESSAGES_FIELD!r} field: drop --text-field")
    if workers != 1:
        raise UserError("--format messages encodes in one process: drop --workers")
    if train_vocab is not None:  # a trained tokenizer has no template: train on what it will see
        texts = (render_plain(c.messages) for c in read_conversations(sources))
        tok = train_tokenizer(texts, train_vocab, work / "tokenizer")
    else:
        tok = load_tokenizer(tokenizer)
        tok.save_pretrained(work / "tokenizer")
    if tok.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token: conversations cannot be separated")
    vocab_size = max(len(tok), max(tok.get_vocab().values(), default=0) + 1)
    dtype = smallest_token_dtype(vocab_size)
    render_fn = renderer(tok)
    lengths, domains, names = [], [], {}
    bar = tqdm(desc="tokenize", unit="conv", disable=None if progress else True)
    batch: list[Conversation] = []
    with open(work / "tokens.raw", "wb") as raw, open(work / "mask.raw", "wb") as masks:

        def flush():
            for conv, (ids, mask) in zip(batch, encode(tok, batch, render_fn, dtype), strict=True):
                ids.tofile(raw)
                mask.tofile(masks)
                lengths.append(len(ids))
                domains.append(names.setdefault(conv.domain or "default", len(names)))
            bar.update(len(batch))
            batch.clear()

        for conv in read_conversations(sources):
            batch.append(conv)
            if len(batch) == ENCODE_BATCH:
                flush()
        flush()
    bar.close()
    if not lengths:
        raise UserError("the corpus is empty: no conversation in the inputs")
    tokens = np.memmap(work / "tokens.raw", dtype=dtype, mode="r")
    mask = np.memmap(work / "mask.raw", dtype=bool, mode="r")
    domain_names = list(names)
    has_domains = domain_names != ["default"]
    store = write_token_store(
        out,
        tokens,
        np.concatenate([[0], np.cumsum(lengths)]),
        work / "tokenizer",
        vocab_size=vocab_size,
        eos_id=tok.eos_token_id,
        doc_domains=np.asarray(domains) if has_domains else None,
        domain_names=domain_names if has_domains else None,
        loss_mask=mask,
        sources=[
            {
                "path": str(s.path),
                "domain": s.domain,
                "sha256": sha256_file(s.path) if s.path.is_file() else None,
                "format": "messages",
                "template": "chat template" if has_chat_template(tok) else "plain",
            }
            for s in sources
        ],
        overwrite=overwrite,
    )
    del tokens, mask
    return store


def first_conversation(sources: list[Source]) -> Conversation | None:
    """The first conversation of the inputs (None when there is none): checked before any work."""
    return next(read_conversations(sources), None)
