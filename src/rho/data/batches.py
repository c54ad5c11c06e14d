"""Training windows: TokenStore (+ LossStore) -> {"input_ids", "labels", "input_length",
"ref_loss", "ref_entropy"} batches.

The windows are the alignment rule's (store.py), so ``ref_loss[t]`` is the reference loss of
``input_ids[t]`` given the window before it (``ref_entropy[t]`` the entropy of the distribution
that predicted it). Every batch is padded to ``seq_len`` (labels -100, reference values NaN) so
batches on every rank have one shape and can be ranked together. Of a TokenStore with a loss
mask (instruction data), the tokens that carry no loss (prompts; rho.io.store.loss_positions) get
label -100 here, so no loss, selection or count ever sees them; ``input_length`` still counts
them as input (the compute they cost).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from rho.errors import UserError
from rho.io.store import LossStore, TokenStore

BATCH_BYTES_PER_TOKEN = 8 + 8 + 4 + 4  # input_ids, labels (int64), ref_loss, ref_entropy
# Batch entries the model's forward does not take.
NOT_MODEL_INPUTS = ("labels", "ref_loss", "ref_entropy", "input_length")


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_fits_memory(n_bytes: int, what: str) -> None:
    """Refuse, in one line and before allocating, what cannot fit in the memory left."""
    free = available_memory()
    if free is not None and n_bytes > free:
        raise UserError(
            f"{what} needs about {n_bytes / 2**30:,.1f} GiB, more than the "
            f"{free / 2**30:,.1f} GiB of memory available"
        )


class WindowDataset(Dataset):
    """Window ``i`` of a TokenStore, with its reference losses when a LossStore is given (and
    their entropies with ``entropy``), and which tokens carry loss when the store has a loss
    mask."""

    def __init__(
        self,
        tokens: TokenStore,
        seq_len: int,
        losses: LossStore | None = None,
        entropy: bool = False,
    ):
        if losses is not None:
            losses.check_matches(tokens, seq_len)
        if entropy:
            if losses is None:
                raise ValueError("entropy comes from a LossStore: give losses")
            losses.require_entropy("ranking tokens by the reference's entropy")
        # A window is padded to seq_len; its float32 logits are the least a forward allocates.
        per_token = tokens.vocab_size * 4 + BATCH_BYTES_PER_TOKEN
        check_fits_memory(seq_len * per_token, f"seq_len {seq_len:,}")
        self.tokens, self.seq_len, self.losses = tokens, seq_len, losses
        self.entropy = entropy

    def __len__(self) -> int:
        return self.tokens.n_windows(self.seq_len)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        item = {"input_ids": self.tokens.window(index, self.seq_len)}
        carries_loss = self.tokens.window_loss_positions(index, self.seq_len)
        if carries_loss is not None:
            item["loss_mask"] = carries_loss
        if self.losses is not None:
            item["ref_loss"] = self.losses.window(index)
            item["ref_store"] = str(self.losses.path)  # named if its values are refused
        if self.entropy:
            item["ref_entropy"] = self.losses.window_entropy(index)
        return item


class WindowCollator:
    """Stack windows into tensors, padding each to ``seq_len``; labels are the input ids
    (the trainer shifts them), -100 on padding and on tokens a loss mask leaves out;
    ``input_length``: each row's tokens before padding."""

    def __init__(self, seq_len: int, pad_id: int = 0):
        self.seq_len, self.pad_id = seq_len, pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        n, length = len(items), self.seq_len
        check_fits_memory(n * length * BATCH_BYTES_PER_TOKEN, f"a batch of {n} x {length:,} tokens")
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        labels = torch.full((n, length), -100, dtype=torch.long)
        input_length = torch.zeros(n, dtype=torch.long)
        for row, item in enumerate(items):
            ids = torch.as_tensor(np.asarray(item["input_ids"]), dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            if "loss_mask" in item:  # no label where no loss is taken
                ids = torch.where(torch.as_tensor(np.asarray(item["loss_mask"])), ids, -100)
            labels[row, : len(ids)] = ids
            input_length[row] = len(ids)
        batch = {"input_ids": input_ids, "labels": labels, "input_length": input_length}
        for key in ("ref_loss", "ref_entropy"):
            if key in items[0]:
                values = torch.full((n, length), float("nan"))
                for row, item in enumerate(items):
                    values[row, : len(item[key])] = torch.as_tensor(item[key])
                check_reference(values, labels, key, items[0].get("ref_store"))
                batch[key] = values
        return batch


def check_reference(values: torch.Tensor, labels: torch.Tensor, key: str, store) -> None:
    """Refuse a batch whose targets (every labelled token but the first of a window, which has
    no context) carry no finite reference value: the selection would keep nothing and the step
    train on nothing. A finished LossStore holds at least 90% finite values
    (rho.scoring.loss_writer),
    so this is a store corrupted since, whatever share it records."""
    targets = labels[:, 1:] != -100
    if targets.any() and not torch.isfinite(values[:, 1:][targets]).any():
        what = "losses" if key == "ref_loss" else "entropies"
        raise UserError(
            f"{store or 'the LossStore'}: a training batch has no finite reference {what} at "
            f"any of its {int(targets.sum()):,} target tokens (corrupted since it was scored? "
            "check it with `rho inspect --verify`)"
        )
