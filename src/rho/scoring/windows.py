"""Windows: the shift between the store's alignment and the model's, and running a model over
windows of a TokenStore.

Two alignments of a per-token value over a window of ids ``x``:
- the store's (a LossStore, a dataset row): index t describes token ``x[t]`` (its loss given
  ``x[:t]``), NaN at t = 0, where there is no context;
- the model's: index t describes what ``logits[t]`` predicts, token ``x[t + 1]``; the last
  index has no target.
``to_model`` and ``to_store`` convert between them; nothing else shifts by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rho.errors import UserError
from rho.io.reading import read_slice
from rho.io.store import n_windows, window_bounds
from rho.selection.output_layer import model_token_losses

IGNORE = -100  # the ignored target id (Hugging Face's and torch's convention)


def to_model(values: torch.Tensor, fill: float | int) -> torch.Tensor:
    """Store alignment -> model alignment along the last dim: drop index 0, ``fill`` the end.
    Labels become targets (``fill=IGNORE``), stored losses become per-target ones (NaN)."""
    return F.pad(values[..., 1:], (0, 1), value=fill)


def to_store(values: torch.Tensor, fill: float | int = float("nan")) -> torch.Tensor:
    """Model alignment -> store alignment along the last dim: ``fill`` index 0, drop the end."""
    return F.pad(values[..., :-1], (1, 0), value=fill)


@torch.inference_mode()
def window_losses(model, ids: torch.Tensor, loss_impl: str = "auto") -> torch.Tensor:
    """(B, L) token ids -> (B, L) float32 losses in the store's alignment: NaN at position 0,
    else the loss of token t given the tokens before it in the window (the alignment rule).
    ``loss_impl``: the output layer's path (``rho.selection.output_layer``)."""
    return to_store(model_token_losses(model, {"input_ids": ids}, to_model(ids, IGNORE), loss_impl))


@torch.inference_mode()
def window_losses_and_entropies(model, ids: torch.Tensor, loss_impl: str = "auto") -> torch.Tensor:
    """(B, L) token ids -> (2, B, L) float32: the losses of ``window_losses`` and, from the same
    chunks of the same forward pass, the entropy of the distribution that predicted each token
    (store alignment: NaN at position 0)."""
    targets = to_model(ids, IGNORE)
    values = model_token_losses(model, {"input_ids": ids}, targets, loss_impl, entropy=True)
    return torch.stack([to_store(v) for v in values])


def batch_windows(n_tokens: int, seq_len: int, batch_size: int) -> list[range]:
    """Fixed batches of window indices; a partial last window gets a batch of its own, so every
    batch is one rectangle of ids and its losses do not depend on who scores it or when."""
    total = n_windows(n_tokens, seq_len)
    full = n_tokens // seq_len
    batches = [range(s, min(s + batch_size, full)) for s in range(0, full, batch_size)]
    if total > full:
        batches.append(range(full, total))
    return batches


def window_ids(tokens: np.ndarray, seq_len: int, windows: Sequence[int]) -> np.ndarray:
    """(len(windows), L) int64 ids of windows of equal length (one read for a range)."""
    if isinstance(windows, range) and windows.step == 1 and len(windows):
        first, _ = window_bounds(windows.start, seq_len, len(tokens))
        _, end = window_bounds(windows.stop - 1, seq_len, len(tokens))
        return read_slice(tokens, first, end).astype(np.int64).reshape(len(windows), -1)
    rows = [read_slice(tokens, *window_bounds(int(w), seq_len, len(tokens))) for w in windows]
    return np.stack(rows).astype(np.int64)


def iter_window_losses(
    model,
    tokens: np.ndarray,
    seq_len: int,
    batches: Iterable[Sequence[int]],
    device: torch.device,
    entropy: bool = False,
    loss_impl: str = "auto",
) -> Iterator[tuple[Sequence[int], np.ndarray]]:
    """Run ``model`` over each batch of windows of the token array: yields (batch, its
    (len(batch), L) float32 losses in the store's alignment; with ``entropy``, (2, len(batch), L):
    losses and entropies). ``loss_impl``: see ``rho.selection.output_layer``. Used by score, eval
    and
    analyze."""
    for batch in batches:
        ids = torch.from_numpy(window_ids(tokens, seq_len, batch)).to(device)
        run = window_losses_and_entropies if entropy else window_losses
        yield batch, run(model, ids, loss_impl).float().cpu().numpy()


def losses_of_windows(model, ids: np.ndarray, batch_size: int, device) -> np.ndarray:
    """(W, L) ids already in memory -> (W, L) float32 losses, ``batch_size`` windows at a time."""
    out = np.empty(ids.shape, dtype=np.float32)
    for start in range(0, len(ids), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(ids[start : start + batch_size]))
        out[start : start + batch_size] = window_losses(model, batch.to(device)).float().cpu()
    return out


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def max_positions(model) -> int | None:
    """How many positions the model can take (None when the config does not say)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return limit if isinstance(limit, int) else None


def check_positions(model, seq_len: int, option: str = "--seq-len") -> None:
    """Models with learned positions crash past their table: refuse up front."""
    limit = max_positions(model)
    if limit is not None and seq_len > limit:
        raise UserError(f"{option} {seq_len} exceeds the model's {limit} positions")


def parse_device(name: str | None, flag: str = "--device"):
    """``--device`` as a torch.device that exists on this machine (None: the best one)."""
    import torch

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"{flag} {name!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", lambda: False)()
    if not available:
        raise UserError(f"{flag} {name}: this machine has no {device.type} device")
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise UserError(f"{flag} {name}: there are only {count} {device.type} devices")
    return device
