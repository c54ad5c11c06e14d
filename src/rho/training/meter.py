"""A run's compute, as a TrainerCallback (after OLMo-core's speed monitor and flop meter): the
cumulative counters of all ranks that the trainer feeds once per optimizer step, each step's wall
time, and the compute logs they give (docs/ARCHITECTURE.md, "Compute"). The counters are saved
with every checkpoint (rho_compute.json) and restored on resume."""

from __future__ import annotations

import time

from transformers import TrainerCallback

# Cumulative counters (all ranks) behind the compute logs.
COUNTERS = (
    "candidate_windows",
    "windows_trained",
    "tokens_trained",
    "candidate_tokens",
    "ref_tokens",
    "train_seconds",
)


def train_flops(n_params: int, tokens: int) -> int:
    """A token trained costs 6·N FLOPs (forward and backward)."""
    return 6 * n_params * tokens


def forward_flops(n_params: int, tokens: int) -> int:
    """A token forwarded without a gradient (scored, embedded, a candidate) costs 2·N FLOPs."""
    return 2 * n_params * tokens


class ComputeMeter(TrainerCallback):
    """FLOPs by the 6N (train) and 2N (forward only) rules: ``n_params`` is the learner's,
    ``n_ref_params`` the online reference's (0: none)."""

    def __init__(self, n_params: int, n_ref_params: int = 0):
        self.n_params, self.n_ref_params = n_params, n_ref_params
        self.counters: dict = {}
        self.reset()
        self._started: float | None = None

    def reset(self, saved: dict | None = None) -> None:
        """Zero, or continue from a checkpoint's saved counters."""
        self.counters = {**dict.fromkeys(COUNTERS, 0), "train_seconds": 0.0, **(saved or {})}

    def start_step(self) -> None:
        """A step starts when its batches are fetched (candidate forwards count as training)."""
        self._started = time.perf_counter()

    def count(self, **values: float) -> None:
        for key, value in values.items():
            self.counters[key] += int(value)

    def on_step_end(self, args, state, control, **kwargs):
        # after the optimizer step, before any evaluation or checkpoint: those fall outside
        if self._started is not None:
            self.counters["train_seconds"] += time.perf_counter() - self._started
            self._started = None

    def logs(self) -> dict:
        """The run's cumulative compute so far."""
        c = self.counters
        return {
            "candidate_windows": c["candidate_windows"],
            "windows_trained": c["windows_trained"],
            "flops_train": train_flops(self.n_params, c["tokens_trained"]),
            "flops_candidates": forward_flops(self.n_params, c["candidate_tokens"]),
            "flops_ref_online": forward_flops(self.n_ref_params, c["ref_tokens"]),
            "train_seconds": round(c["train_seconds"], 3),
        }
