"""Held-out loss: mean loss, perplexity and bits per byte of a model on a TokenStore, overall and
per domain, and the UTF-8 bytes each token id stands for.

``evaluate_store`` follows the alignment rule of store.py: the TokenStore is cut into
non-overlapping ``seq_len`` windows from position 0 and the first token of each window, which has
no context, is not counted; of a store with a loss mask (instruction data) only the tokens that
carry loss count (rho.io.store.loss_positions), as in training. It reports the mean loss (nats per
token), perplexity and bits per byte = total nats / ln 2 / total UTF-8 bytes of the scored
tokens, overall and per domain (each token belongs to its document's domain). Special tokens such
as EOS count 0 bytes; their loss is counted, as predicting where a document ends is part of
modelling the text.
"""

from __future__ import annotations

import json
import math
import re
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from rho.errors import UserError
from rho.io.files import one_line
from rho.io.reading import read_slice
from rho.io.store import TokenStore, should_have_value, window_bounds, window_chunk
from rho.models import load_model, parse_dtype
from rho.scoring.windows import batch_windows, check_positions, default_device, iter_window_losses

LN2 = math.log(2.0)


# --- Bytes per token ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet (each byte 0..255 shown as a printable char)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_types(tokenizer) -> set[str]:
    """Types of the fast tokenizer's decoder (nested Sequence decoders included)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return set()
    found, todo = set(), [decoder]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "type" in node:
                found.add(str(node["type"]))
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def byte_lengths(tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """UTF-8 bytes of each token id's text when decoded on its own (int64, one per id).

    Byte-level BPE tokens map back to their exact bytes (a token holding half of a multi-byte
    character counts its half); SentencePiece pieces count ``▁`` as a space and ``<0xNN>`` as one
    byte; special tokens (EOS, padding) count 0.
    """
    size = int(vocab_size if vocab_size is not None else len(tokenizer))
    table = np.zeros(size, dtype=np.int64)
    kinds = _decoder_types(tokenizer)
    byte_level = "ByteLevel" in kinds
    to_byte = _unicode_to_byte()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {
        i: t for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items() if i < size
    }
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    for i, piece in enumerate(pieces):
        if piece is None or i in special or (i in added and added[i].special):
            continue
        if i in added:  # added tokens are stored as plain text, not in the byte alphabet
            table[i] = len(added[i].content.encode("utf-8"))
        elif byte_level:
            table[i] = sum(1 if ch in to_byte else len(ch.encode("utf-8")) for ch in piece)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            table[i] = 1
        else:
            if "WordPiece" in kinds and piece.startswith("##"):
                piece = piece[2:]
            table[i] = len(piece.replace("▁", " ").encode("utf-8"))
    return table


# --- The model and its tokenizer ------------------------------------------------------------------


def prepare_model(model, dtype: str | None, trust_remote_code: bool = False):
    """(name, model): a path or hub name is loaded (float32 unless ``dtype``); a module is cast
    only if asked."""
    if isinstance(model, (str, Path)):
        return str(model), load_model(model, dtype or "float32", trust_remote_code)
    if dtype is not None:
        model = model.to(parse_dtype(dtype))
    return type(model).__name__, model


def check_same_tokenizer(model_path: str, store: TokenStore) -> None:
    """A checkpoint saved with its tokenizer must use the store's vocabulary (ids would mean
    other text otherwise)."""
    path = Path(model_path)
    if not ((path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()):
        return
    try:
        theirs = AutoTokenizer.from_pretrained(path).get_vocab()
    except (OSError, ValueError, TypeError):
        return
    except Exception as err:  # noqa: BLE001 (tokenizers raises plain Exception for bad files)
        raise UserError(
            f"{model_path}: its tokenizer is unreadable ({one_line(err, 120)})"
        ) from None
    if theirs != store.tokenizer().get_vocab():
        raise UserError(
            f"{model_path} was saved with another tokenizer than {store.path}: token ids would "
            "not mean the same text"
        )


# --- Held-out loss per domain ---------------------------------------------------------------------


def _domain_of(store: TokenStore, first: int, end: int) -> np.ndarray:
    """Domain index of tokens [first, end) (all 0 when the store has no domains)."""
    if store.doc_domains is None:
        return np.zeros(end - first, dtype=np.int64)
    docs = np.searchsorted(store.doc_offsets, np.arange(first, end), side="right") - 1
    return np.asarray(store.doc_domains[docs], dtype=np.int64)


def check_carries_loss(store: TokenStore, seq_len: int) -> None:
    """A store whose loss mask leaves no token to evaluate is one line (a pass over the mask,
    in blocks, before any model runs)."""
    if store.loss_mask is None:
        return
    step = window_chunk(seq_len)
    for start in range(0, store.n_tokens, step):
        if should_have_value(start, min(start + step, store.n_tokens), seq_len, store).any():
            return
    raise UserError(
        f"{store.path} has no token that carries loss under its loss mask at --seq-len "
        f"{seq_len}: nothing to evaluate"
    )


def _metrics(nats: float, tokens: int, n_bytes: int) -> dict:
    loss = nats / tokens if tokens else math.nan
    return {
        "tokens": int(tokens),
        "bytes": int(n_bytes),
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "bits_per_byte": nats / LN2 / n_bytes if n_bytes else math.nan,
    }


def evaluate_store(
    model,
    tokens: str | Path | TokenStore,
    seq_len: int = 256,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    *,
    dtype: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict:
    """Loss, perplexity and bits per byte of ``model`` (a loaded model, directory or hub name) on
    every window of a TokenStore, overall and per domain. Returns a JSON-ready dict."""
    store = tokens if isinstance(tokens, TokenStore) else TokenStore(tokens)
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    name, model = prepare_model(model, dtype, trust_remote_code)
    store.check_model_vocab(model)
    check_positions(model, min(seq_len, store.n_tokens), "--seq-len")
    check_carries_loss(store, seq_len)
    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    table = byte_lengths(store.tokenizer(), store.vocab_size)

    names = store.domain_names if store.doc_domains is not None else []
    n_dom = max(1, len(names))
    nats = np.zeros(n_dom, dtype=np.float64)
    counts = np.zeros(n_dom, dtype=np.int64)
    n_bytes = np.zeros(n_dom, dtype=np.int64)
    start = time.perf_counter()
    bar = tqdm(total=store.n_tokens, desc="eval", unit="tok", unit_scale=True, disable=not progress)
    batches = batch_windows(store.n_tokens, seq_len, batch_size)
    for windows, losses in iter_window_losses(model, store.tokens, seq_len, batches, device):
        first = window_bounds(windows[0], seq_len, store.n_tokens)[0]
        end = window_bounds(windows[-1], seq_len, store.n_tokens)[1]
        ids = read_slice(store.tokens, first, end).astype(np.int64)
        losses = losses.reshape(-1).astype(np.float64)
        scored = should_have_value(first, end, seq_len, store)  # window starts: no context
        domains = _domain_of(store, first, end)[scored]
        nats += np.bincount(domains, weights=losses[scored], minlength=n_dom)
        counts += np.bincount(domains, minlength=n_dom)
        n_bytes += np.bincount(domains, weights=table[ids[scored]], minlength=n_dom).astype(
            np.int64
        )
        bar.update(end - first)
    bar.close()
    return {
        "model": name,
        "tokens": str(store.path),
        "token_hash": store.content_hash,
        "seq_len": int(seq_len),
        "n_tokens": store.n_tokens,
        "overall": _metrics(nats.sum(), counts.sum(), n_bytes.sum()),
        "domains": {
            domain: _metrics(nats[i], counts[i], n_bytes[i]) for i, domain in enumerate(names)
        },
        "seconds": round(time.perf_counter() - start, 3),
    }
