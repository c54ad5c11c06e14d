"""What the `rho analyze` commands share: which windows to analyse, the domain of a position,
loading a checked model and scoring windows with each checkpoint, checking a count, and showing
token text on one line.
"""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import torch

from rho.errors import UserError
from rho.models import check_vocab, load_model
from rho.scoring.windows import check_positions, default_device, losses_of_windows

# --- Windows and positions ---------------------------------------------------------------------


def full_window_indices(n_tokens: int, seq_len: int, limit: int | None = None) -> np.ndarray:
    """Indices of full windows, evenly spread over the store when more than ``limit``."""
    full = n_tokens // seq_len
    if full == 0:
        raise UserError(
            f"the store holds {n_tokens} tokens, fewer than one window of {seq_len}: "
            "use a smaller --seq-len or a larger store"
        )
    if limit is None or limit >= full:
        return np.arange(full)
    return np.unique(np.linspace(0, full - 1, max(1, limit)).round().astype(np.int64))


def domains_at(tokens, positions: np.ndarray) -> list[str] | None:
    """The domain name of the document holding each token position (None: no domains)."""
    if tokens.doc_domains is None:
        return None
    docs = np.searchsorted(tokens.doc_offsets, np.asarray(positions), side="right") - 1
    names = tokens.domain_names
    return [names[int(code)] for code in np.asarray(tokens.doc_domains)[docs]]


# --- Models and their losses -------------------------------------------------------------------


def device_from(name: str | None) -> torch.device:
    """The ``--device`` option: the named device, else the best one available."""
    return torch.device(name) if name else default_device()


def load_checked_model(path: Path, vocab_size: int, dtype: str, device, seq_len: int | None = None):
    """A model from a directory, refused when its vocabulary (or, given ``seq_len``, its
    positions) cannot cover the tokens it will score; in eval mode on ``device``."""
    if not Path(path).exists():
        raise UserError(f"model {path} does not exist")
    model = load_model(path, dtype)
    check_vocab(model, vocab_size, f"the model {path}")
    if seq_len is not None:
        check_positions(model, seq_len)
    return model.to(device).eval()


def losses_per_checkpoint(
    paths: list[Path], ids: np.ndarray, vocab_size: int, batch_size: int, dtype: str, device
) -> np.ndarray:
    """(C, W, L): every checkpoint's losses on the same (W, L) windows, one model at a time."""
    check_ids(ids, vocab_size)
    result = []
    for path in paths:
        model = load_checked_model(path, vocab_size, dtype, device, ids.shape[1])
        result.append(losses_of_windows(model, ids, batch_size, device))
        del model
        gc.collect()
    return np.stack(result)


# --- Checks ------------------------------------------------------------------------------------


def check_ids(ids: np.ndarray, vocab_size: int) -> None:
    """Ids read from a TokenStore are rows of a model of its vocabulary: a damaged store may
    hold any (checked here on the windows read, not on the whole store)."""
    top = int(ids.max()) if ids.size else 0
    if top >= vocab_size:
        raise UserError(
            f"the windows analysed hold token id {top}, outside the store's vocabulary of "
            f"{vocab_size} (corrupted store?)"
        )


def check_positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"{name} must be positive, got {value}")


# --- Showing text ------------------------------------------------------------------------------


def show(text: str, collapse: bool = False) -> str:
    """Text made visible on one line: newline ⏎, tab ⇥; ``collapse`` squeezes runs of spaces
    and drops the replacement character of a partial UTF-8 sequence cut at the context's edge."""
    text = text.replace("\n", "⏎").replace("\t", "⇥")
    if collapse:
        text = re.sub(r" {2,}", " ", text.replace("\ufffd", ""))
    return text


def token_label(before: str, token: str, after: str) -> str:
    """A plot label: the token (spaces as ␣) and a short context around it."""
    shown = show(token).replace(" ", "␣") or "∅"
    context = show(before, True)[-16:] + "⟦" + shown + "⟧" + show(after, True)[:8]
    return f"{shown!s}   in  “{context.strip()}”"


def print_files(files: list[Path]) -> None:
    """The closing lines of every analysis: where its outputs are."""
    print("files:")
    for file in files:
        print(f"  {file}")
