"""Model x TokenStore -> LossStore: every token's reference loss (and, with ``--entropy``, the
entropy of the reference's next-token distribution, from the same forward pass), computed once,
offline. Of a TokenStore with a loss mask (instruction data) only the tokens that carry loss are
scored (rho.io.store.loss_positions); every other value is NaN.

Windows are scored in fixed batches (batch b holds windows [b*B, (b+1)*B); the last, partial
window is a batch of its own), so a batch's losses do not depend on which process scored it or
when. That makes the store resumable (finished batches are recorded in ``progress/``) and the
same whether one process or many (``torchrun``: batch b goes to rank b mod world) wrote it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rho import distributed as dist
from rho.errors import UserError
from rho.io.files import check_not_input, output_lock
from rho.io.store import LossStore, TokenStore, n_windows
from rho.models import load_model, model_fingerprint, parse_dtype
from rho.scoring import loss_writer
from rho.scoring.windows import batch_windows, check_positions, default_device, iter_window_losses
from rho.selection.output_layer import resolve_loss_impl
from rho.testhook import hold

# How often finished batches are recorded (seconds); tests set 0 to record after every batch.
SAVE_EVERY_S = float(os.environ.get("RHO_SCORE_SAVE_EVERY_S", "5"))


@dataclass
class ScoreSummary:
    tokens: int
    mean_loss: float
    seconds: float
    tokens_per_s: float

    def __str__(self) -> str:
        return (
            f"scored {self.tokens:,} tokens in {self.seconds:.1f}s "
            f"({self.tokens_per_s:,.0f} tok/s), mean loss {self.mean_loss:.4f}"
        )


def score_store(
    model,
    tokens: str | Path | TokenStore,
    out: str | Path,
    seq_len: int,
    *,
    batch_size: int = 16,
    dtype: str | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
    allow_missing_weights: bool = False,
    entropy: bool = False,
    loss_impl: str = "auto",
) -> LossStore:
    """Score every token of ``tokens`` with ``model`` (a path, hub name or loaded model) into a
    LossStore at ``out``. Reruns resume; under torchrun the ranks share the batches. ``entropy``:
    also store the reference's next-token entropy of every token (``ref_entropy.npy``).

    ``dtype``: float32, bfloat16 or float16; default float32 for a path, or the loaded model's
    own dtype. A loaded model is moved to ``device`` and put in eval mode. A model directory
    lacking some weights is refused unless ``allow_missing_weights``. ``loss_impl``: how the
    output layer runs (``rho.selection.output_layer``; auto: chunked, never the whole logits)."""
    tokens = tokens if isinstance(tokens, TokenStore) else TokenStore(tokens)
    out, device = _check_options(tokens, Path(out), seq_len, batch_size, device)
    dist.init_from_env(device)
    model, model_name, dtype = _load(model, dtype, trust_remote_code, allow_missing_weights)
    tokens.check_model_vocab(model)
    check_positions(model, seq_len, "--seq-len")
    model.to(device).eval()
    resolve_loss_impl(loss_impl, model)  # a path that cannot run: one line before any work

    meta = loss_writer.loss_store_meta(
        tokens,
        seq_len,
        batch_size,
        model=model_name,
        entropy=entropy,
        model_hash=model_fingerprint(model),
        score_dtype=dtype,
    )
    with output_lock(out) if dist.rank() == 0 else contextlib.nullcontext():
        create = lambda: loss_writer.create_or_resume(tokens, out, meta, overwrite)  # noqa: E731
        dist.checked(create, device=device)
        dist.barrier()
        meta = loss_writer.read_meta(out)
        if meta.get("complete"):
            if dist.rank() == 0 and progress:
                print(f"{out} is already complete")
            return LossStore(out, tokens, seq_len)
        # A resumed store keeps the batch size it was started with: batches must stay the same.
        if int(meta["batch_size"]) != batch_size and dist.rank() == 0 and progress:
            print(f"{out}: resuming with its batch size {meta['batch_size']}", file=sys.stderr)
        batches = batch_windows(tokens.n_tokens, seq_len, int(meta["batch_size"]))
        run = _Run(model, tokens, out, meta, device, progress, loss_impl)
        scored, seconds = _score_batches(run, batches)
        _finish(run, batches, scored, seconds)
    return LossStore(out, tokens, seq_len)


def _check_options(tokens: TokenStore, out: Path, seq_len: int, batch_size: int, device):
    """(out, the device): every option a user can get wrong, refused in one line."""
    n_windows(tokens.n_tokens, seq_len)  # seq_len >= 2
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    check_not_input(out, [tokens.path], "--out")
    from rho.io.disk import check_output_path  # one line for a bad device or out
    from rho.scoring.windows import parse_device

    check_output_path(out)
    return out, parse_device(device) if device is not None else default_device()


def _finish(run: _Run, batches: list, scored: int, seconds: float) -> None:
    """After every rank's batches: check them all, finish the store, print the summary."""
    out, meta, device = run.out, run.meta, run.device
    dist.barrier()
    # Every rank checks (no rank waits alone at the last barrier if something is missing).
    if not loss_writer.done_batches(out, meta, len(batches)).all():
        raise RuntimeError(f"{out}: some batches were not scored; rerun to finish")
    scored = int(dist.all_reduce_sum(torch.tensor([scored], device=device)).item())
    finished = {}
    dist.checked(
        lambda: finished.update(
            loss_writer.finish(out, meta, run.tokens.n_tokens, len(batches), run.tokens)
        ),
        device=device,
    )  # finish refuses mostly-NaN losses: every rank raises, none waits at the barrier
    if dist.rank() == 0 and run.progress:
        tok_s = scored / max(seconds, 1e-9)
        print(ScoreSummary(scored, finished["mean_loss"], seconds, tok_s))
    dist.barrier()


def _load(model, dtype: str | None, trust_remote_code: bool, allow_missing_weights: bool):
    """(model, its name, its dtype name): a path or hub name is loaded, a module is cast."""
    if isinstance(model, (str, Path)):
        model_name = str(model)
        if not Path(model).exists() and (Path(model).is_absolute() or model_name.startswith(".")):
            raise UserError(f"model directory {model} does not exist")  # not a hub name either
        dtype = dtype or "float32"
        loaded = load_model(model, dtype, trust_remote_code, allow_missing_weights)
        return loaded, model_name, dtype
    if dtype is None:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return model.to(parse_dtype(dtype)), type(model).__name__, dtype


@dataclass
class _Run:
    """What one scoring run works with."""

    model: torch.nn.Module
    tokens: TokenStore
    out: Path
    meta: dict
    device: torch.device
    progress: bool
    loss_impl: str


def _score_batches(run: _Run, batches: list) -> tuple[int, float]:
    """This rank's unfinished batches (batch b goes to rank b mod world), written and recorded
    as they finish; returns (tokens scored, seconds)."""
    model, tokens, out, meta, device = run.model, run.tokens, run.out, run.meta, run.device
    done = loss_writer.done_batches(out, meta, len(batches))
    mine = np.zeros(len(batches), dtype=bool)
    mine[dist.rank() :: dist.world_size()] = True
    todo = np.flatnonzero(mine & ~done).tolist()
    record_file = loss_writer.progress_file(out, meta, dist.rank(), dist.world_size())
    my_done = done & mine
    n_todo = sum(_token_count(batches[b], meta["seq_len"], tokens.n_tokens) for b in todo)
    bar = tqdm(
        total=n_todo,
        desc="score",
        unit="tok",
        unit_scale=True,
        disable=True if not run.progress or dist.rank() else None,  # None: on a terminal only
    )
    seq_len, entropy = meta["seq_len"], bool(meta.get("has_entropy"))
    losses = loss_writer.LossFile(*(out / name for name in loss_writer.value_files(meta)))
    start = last_save = time.perf_counter()
    try:
        mine = [batches[b] for b in todo]
        stream = iter_window_losses(
            model, tokens.tokens, seq_len, mine, device, entropy, run.loss_impl
        )
        for b, (batch, values) in zip(todo, stream, strict=True):
            first = batch.start * seq_len
            rows = values.reshape(2 if entropy else 1, -1)
            keep = tokens.loss_positions(first, first + rows.shape[1], seq_len)
            if keep is not None:  # instruction data: prompt tokens get no score
                rows[:, ~keep] = np.nan
            losses.write(first, *rows)
            my_done[b] = True
            bar.update(rows.shape[1])
            if time.perf_counter() - last_save >= SAVE_EVERY_S:
                losses.record(record_file, my_done)
                last_save = time.perf_counter()
                hold("score.recorded")  # tests only: interrupted exactly here
    except KeyboardInterrupt:
        losses.record(record_file, my_done)  # Ctrl-C: keep every finished batch, resume here
        raise
    finally:
        bar.close()
    losses.record(record_file, my_done)
    losses.close()
    return n_todo, time.perf_counter() - start


def _token_count(windows: range, seq_len: int, n_tokens: int) -> int:
    return min(windows.stop * seq_len, n_tokens) - windows.start * seq_len
