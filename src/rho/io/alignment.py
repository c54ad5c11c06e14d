"""The alignment rule, written here once and used by scoring, training, pruning and analysis
(rho.io.store imports it, so its users may import it from there)."""

from __future__ import annotations

import math

import numpy as np

from rho.errors import UserError
from rho.io.reading import read_slice

# The token stream is cut into non-overlapping windows of seq_len tokens from position 0 (the last
# one may be shorter). ref_loss[i] = -log p(tokens[i] | tokens[window_start .. i-1]); it is NaN at
# each window start, where there is no context.


def n_windows(n_tokens: int, seq_len: int) -> int:
    """Number of windows covering the stream (the last may be partial)."""
    if seq_len < 2:
        raise UserError(f"seq_len must be at least 2, got {seq_len}")
    return math.ceil(n_tokens / seq_len)


def window_bounds(window: int, seq_len: int, n_tokens: int) -> tuple[int, int]:
    """[start, end) of a window in the token stream."""
    start = window * seq_len
    return start, min(start + seq_len, n_tokens)


def window_starts(n_tokens: int, seq_len: int) -> np.ndarray:
    """Bool per token: True where a window starts (no context, NaN reference loss)."""
    mask = np.zeros(n_tokens, dtype=bool)
    mask[::seq_len] = True
    return mask


# Instruction data (a TokenStore with a loss mask, one conversation per document): a token carries
# loss, and is scored, only where the mask marks it AND its conversation starts inside its window.
# The tail of a conversation that began in an earlier window carries none there: its prompt is
# not in the window's context, and a response is not learnt without its prompt. Every reference
# loss and entropy outside these positions is NaN.


def loss_positions(
    loss_mask: np.ndarray, doc_offsets: np.ndarray, start: int, end: int, seq_len: int
) -> np.ndarray:
    """Bool per token of [start, end), ``start`` a window start: the tokens that carry loss under
    the rule above."""
    if start % seq_len:
        raise ValueError(f"{start} is not a window start for seq_len {seq_len}")
    positions = np.arange(start, end)
    window_first = np.arange(start, end, seq_len)
    # the first conversation start at or after each window's start (doc_offsets ends at n_tokens)
    first_doc = np.asarray(doc_offsets)[np.searchsorted(doc_offsets, window_first)]
    in_tail = positions < first_doc[(positions - start) // seq_len]
    return read_slice(loss_mask, start, end).astype(bool, copy=False) & ~in_tail
