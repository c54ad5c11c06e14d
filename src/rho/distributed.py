"""Rank and world helpers over torch.distributed (launched by torchrun or accelerate).

Selection that must not depend on the number of processes ranks the scores of all ranks
together: ``gather_rows`` brings every rank's rows to every rank, in rank order, so each rank can
select over the global batch and keep its own slice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from rho.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def rank_from_env() -> int:
    """This process's global rank as torchrun set it (0 when not launched by torchrun); usable
    before the process group exists."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def process_group_closed() -> Iterator[None]:
    """Destroy the process group when the block ends, however it ends (success, error, Ctrl-C):
    a group left for interpreter exit can abort a finished rank ("terminate called without an
    active exception"), so a successful run would look failed."""
    try:
        yield
    finally:
        if is_distributed():
            # A gloo worker frees a finished collective's tensors under the GIL, and the group's
            # destructor (run when DDP's reducer lets go, after this block) joins the workers
            # holding the GIL: a rank that got there first hung at exit (py-spy). Let them finish.
            time.sleep(0.05)
            dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group torchrun describes in the environment (no-op for one process).
    On GPUs, NCCL carries CUDA tensors and gloo CPU ones (a rank's flags, pickled objects)."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = "cpu:gloo,cuda:nccl" if device is not None and device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """Concatenate every rank's tensor along dim 0 (rank order) and return this rank's slice.

    Rows may differ in number between ranks; the trailing dims must match.
    """
    if not is_distributed():
        return tensor, slice(0, tensor.shape[0])
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    biggest = max(counts)
    padded = torch.zeros((biggest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    start = sum(counts[: rank()])
    whole = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
    return whole, slice(start, start + tensor.shape[0])


class RankFailed(UserError):
    """Another rank failed (its own error is printed by that rank). ``bad_input``: every failure
    was a UserError (bad input, nothing worth resuming)."""

    def __init__(self, message: str, bad_input: bool):
        super().__init__(message)
        self.bad_input = bad_input


def checked(fn, *, everywhere: bool = False, device: torch.device | None = None):
    """Run ``fn`` on rank 0 (or on every rank with ``everywhere``) and return its result (None
    where it did not run). If it raises on any rank, every rank raises: that rank its own error,
    the others ``RankFailed``, so no rank waits forever at the next collective for a rank that
    has left."""
    error, result = None, None
    if everywhere or rank() == 0:
        try:
            result = fn()
        except Exception as err:
            error = err
    if is_distributed():
        flags = torch.zeros((world_size(), 2), device=device)  # per rank: failed, bad input
        if error is not None:
            flags[rank()] = torch.tensor([1.0, float(isinstance(error, UserError))])
        flags = all_reduce_sum(flags).cpu()
        failed = [r for r in range(world_size()) if flags[r, 0] > 0]
        if failed and error is None:
            names = ", ".join(map(str, failed))
            bad_input = bool((flags[failed, 1] > 0).all())
            raise RankFailed(f"rank {names} failed (its error is printed above)", bad_input)
    if error is not None:
        raise error
    return result


def from_rank0(fn):
    """Run ``fn`` on rank 0 alone (as ``checked``) and give every rank its result (picklable)."""
    result = checked(fn)
    if is_distributed():
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result
