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
from itertools import islice

import numpy as np
from tqdm.auto import tqdm

from rho.data.corpus import Document, Source
from rho.data.token_parts import Encoded, Encoder, backend_of
from rho.data.tokenizer_setup import vocab_size_of
from rho.errors import UserError
from rho.io.files import one_line
from rho.io.reading import sha256_file
from rho.io.schema import ChatRecord, parse_json, validate
from rho.io.store import TokenStore, smallest_token_dtype, write_token_store

RESPONSE_ROLE = "assistant"
MESSAGES_FIELD = "messages"
# The roles chat templates know; any other (a typo such as "asistant") is refused, not silently
# made prompt.
ROLES = ("system", "developer", "user", RESPONSE_ROLE, "tool", "function", "ipython")
ENCODE_BATCH = 256  # conversations per batch
_MARK = "RHOxRESPONSExMARK"  # letters only: no template escapes or splits it
JSONL = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")

Span = tuple[int, int]  # [start, end) characters


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
    for k, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise UserError(
                f"{where}: message {k + 1}: unknown role {m['role']!r} (one of {', '.join(ROLES)})"
            )
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


def encode(encoder: Encoder, convs: list[Conversation], render_fn) -> Encoded:
    """The conversations' ids (EOS after each) and loss mask: a token carries loss when its
    characters overlap a response span (rho.data.token_parts marks them as it marks noise spans,
    encoding a long text in pieces); each EOS when its conversation ends with a response."""
    docs = []
    for conv in convs:
        text, spans = render(conv, render_fn)
        docs.append(Document(text, conv.domain, spans))
    got = encoder.encode(docs)
    mask = got.marks if got.marks is not None else np.zeros(len(got.ids), dtype=bool)
    mask[np.cumsum(got.lengths) - 1] = [c.messages[-1]["role"] == RESPONSE_ROLE for c in convs]
    return Encoded(got.ids, got.lengths, mask)


# --- The stage (rho.data.tokenize dispatches --format messages here)
# -----------------------------------


def plain_texts(sources: list[Source]) -> Iterator[str]:
    """The conversations as a tokenizer trained by rho sees them (it has no chat template)."""
    return (render_plain(c.messages) for c in read_conversations(sources))


def tokenize_conversations(sources, out, work, tok, overwrite, progress) -> TokenStore:
    """Conversations -> TokenStore with ``loss_mask.npy``, encoded with ``tok`` (saved in
    ``work``/tokenizer) into ``work`` (scratch), then written to ``out``. Refused when no token
    carries loss (no assistant turn anywhere: nothing to learn)."""
    if tok.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token: conversations cannot be separated")
    vocab_size = vocab_size_of(tok)
    encoder = Encoder(backend_of(tok) or tok, tok.eos_token_id, smallest_token_dtype(vocab_size))
    lengths, domains, names, n_loss = _encode_all(sources, work, encoder, renderer(tok), progress)
    if not lengths:
        raise UserError("the corpus is empty: no conversation in the inputs")
    if not n_loss:
        raise UserError(
            f"no token carries loss: no conversation has an {RESPONSE_ROLE!r} turn, so there is "
            "nothing to learn"
        )
    tokens = np.memmap(work / "tokens.raw", dtype=encoder.dtype, mode="r")
    mask = np.memmap(work / "mask.raw", dtype=bool, mode="r")
    has_domains = names != ["default"]
    template = "chat template" if has_chat_template(tok) else "plain"
    store = write_token_store(
        out,
        tokens,
        np.concatenate([[0], np.cumsum(lengths)]),
        work / "tokenizer",
        vocab_size=vocab_size,
        eos_id=tok.eos_token_id,
        doc_domains=np.asarray(domains) if has_domains else None,
        domain_names=names if has_domains else None,
        loss_mask=mask,
        sources=[_source_entry(s, template) for s in sources],
        overwrite=overwrite,
    )
    del tokens, mask
    return store


def _encode_all(sources, work, encoder: Encoder, render_fn, progress):
    """Every conversation into ``work``/tokens.raw and mask.raw, a batch at a time. Returns
    (tokens per conversation, domain code per conversation, domain names, loss tokens)."""
    lengths, domains, names, n_loss = [], [], {}, 0
    bar = tqdm(desc="tokenize", unit="conv", disable=None if progress else True)
    with open(work / "tokens.raw", "wb") as raw, open(work / "mask.raw", "wb") as masks:
        convs = read_conversations(sources)
        while batch := list(islice(convs, ENCODE_BATCH)):
            got = encode(encoder, batch, render_fn)
            raw.write(got.ids.data)
            masks.write(got.marks.data)
            lengths.extend(got.lengths.tolist())
            n_loss += int(got.marks.sum())
            domains.extend(names.setdefault(c.domain or "default", len(names)) for c in batch)
            bar.update(len(batch))
    bar.close()
    return lengths, domains, list(names), n_loss


def _source_entry(source: Source, template: str) -> dict:
    path = source.path
    sha = sha256_file(path) if path.is_file() else None
    return {"path": str(path), "domain": source.domain, "sha256": sha, "format": "messages",
            "template": template}  # fmt: skip


def first_conversation(sources: list[Source]) -> Conversation | None:
    """The first conversation of the inputs (None when there is none): checked before any work."""
    return next(read_conversations(sources), None)
