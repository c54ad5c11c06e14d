"""The loss step's (and the reference entropy's) float32 working set grows with the chunk, not with
batch × sequence × vocabulary.

A TorchDispatchMode sees every tensor that aten ops create, in forward and in backward: it records
the largest float32 tensor and the peak of live float32 bytes (each owned storage counted from
its creation until its tensor is freed). Kernel-internal scratch is invisible here; the CUDA test
in test_gpu.py measures the allocator's real peak.
"""

from __future__ import annotations

import math
import tempfile
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from rho.selection.loss import token_entropy, token_losses

V = 512  # vocabulary
CHUNK = 16  # rows per chunk: CHUNK × V is far below every N × V below


class Float32Tracker(TorchDispatchMode):
    """Largest float32 tensor (elements) and peak live float32 bytes created under the mode."""

    def __init__(self):
        super().__init__()
        self.largest = self.live = self.peak = 0
        self.owned: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.owned.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
                continue
            self.largest = max(self.largest, t.numel())
            key = t.untyped_storage().data_ptr()
            if not t._is_view() and key not in self.owned:  # a new storage (not a view, in-place)
                nbytes = t.untyped_storage().nbytes()
                self.owned.add(key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, key, nbytes)
        return out


def measure(n_tokens: int, chunk: int) -> tuple[Float32Tracker, torch.Tensor, torch.Tensor]:
    """token_losses forward + backward on bf16 logits of shape (n_tokens // 8, 8, V)."""
    torch.manual_seed(0)
    full = 3 * torch.randn(n_tokens // 8, 8, V)
    logits = full.bfloat16().requires_grad_()
    targets = torch.randint(0, V, (n_tokens // 8, 8))
    targets[0, :3] = -100
    weights = torch.rand(targets.shape)
    with Float32Tracker() as tracker:
        losses = token_losses(logits, targets, chunk_tokens=chunk)
        (losses * weights).sum().backward()
        losses = losses.detach()
    # The float32 reference: the same bf16 logits upcast as a whole (what the chunks avoid).
    exact = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(exact.transpose(1, 2), targets, reduction="none")
    (ref * weights).sum().backward()
    torch.testing.assert_close(losses, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad.float(), exact.grad, rtol=1e-2, atol=1e-3)  # bf16 grad
    # Against float32 logits that were never rounded: within bf16 rounding of the logits.
    unrounded = F.cross_entropy(full.transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(losses, unrounded, rtol=0, atol=0.1)
    assert tracker.live == 0  # every float32 temporary was freed
    return tracker, losses, targets


@pytest.mark.parametrize("n_tokens", [256, 2048])
def test_float32_working_set_is_bounded_by_the_chunk(n_tokens):
    tracker, _, _ = measure(n_tokens, CHUNK)
    assert n_tokens < CHUNK * V  # so the O(N) vectors are smaller than one chunk
    # No float32 tensor larger than one chunk of logits.
    assert tracker.largest == CHUNK * V
    # Live float32 bytes: a few chunks at a time plus O(N) vectors (losses, log-sum-exp, scale);
    # the same bound for 256 and 2048 tokens, while N × V × 4 bytes grows eightfold.
    assert tracker.peak <= 4 * CHUNK * V * 4 + 8 * 4 * n_tokens


def test_the_bound_fails_when_the_chunk_covers_everything():
    """The measurement can see a whole (N, V) float32 copy: with chunk >= N there is one."""
    n_tokens = 2048
    tracker, _, _ = measure(n_tokens, chunk=n_tokens)
    assert tracker.largest == n_tokens * V
    assert tracker.peak >= n_tokens * V * 4
    assert tracker.peak > 4 * CHUNK * V * 4 + 8 * 4 * n_tokens


def test_same_losses_whatever_the_chunk():
    _, small, targets = measure(256, CHUNK)
    _, whole, _ = measure(256, chunk=256)
    torch.testing.assert_close(small, whole, rtol=0, atol=1e-6)
    assert (small[targets == -100] == 0).all()


def test_entropy_working_set_is_bounded_by_the_chunk():
    torch.manual_seed(0)
    n_tokens = 2048
    logits = (3 * torch.randn(n_tokens // 8, 8, V)).bfloat16()
    with Float32Tracker() as tracker:
        entropy = token_entropy(logits, chunk_tokens=CHUNK)
    assert tracker.largest == CHUNK * V  # never a whole (N, V) float32 copy
    # Live float32 bytes: the chunk's copy and its probabilities, plus O(N) vectors; N × V × 4
    # bytes would be 8 times the bound.
    assert tracker.peak <= 3 * CHUNK * V * 4 + 8 * 4 * n_tokens < n_tokens * V * 4
    log_p = torch.log_softmax(logits.double(), -1)
    expected = -(log_p.exp() * log_p).sum(-1).float()
    torch.testing.assert_close(entropy, expected, rtol=1e-4, atol=1e-4)  # float32 arithmetic


def test_entropy_never_changes_float32_logits_in_place():
    """It edits its own float32 copy of each chunk; float32 logits must not be that copy."""
    logits = torch.randn(4, 6, V)
    logits[0, 0, :3] = -math.inf
    before = logits.clone()
    token_entropy(logits, chunk_tokens=CHUNK)
    assert torch.equal(logits, before)


# --- the trainer hands the loss bf16 logits under --bf16 ---------------------------------------


def test_bf16_training_gives_the_loss_bf16_logits(monkeypatch):

    import rho.training.trainer as trainer_module
    from rho.data.batches import WindowCollator
    from rho.models import build_model
    from rho.selection import output_layer

    dtypes: list[torch.dtype] = []

    def spy(fn):
        def wrapped(logits, *args, **kwargs):
            dtypes.append(logits.dtype)
            return fn(logits, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(trainer_module, "slm_loss", spy(trainer_module.slm_loss))
    # the full-logits path (the chunked one never builds the logits: test_linear_ce.py)
    monkeypatch.setattr(output_layer, "token_losses", spy(output_layer.token_losses))
    ids = np.random.default_rng(0).integers(0, 100, (8, 32))
    args = trainer_module.SelectiveTrainingArguments(
        output_dir=tempfile.mkdtemp(),
        bf16=True,
        loss_impl="full",
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = trainer_module.SelectiveTrainer(
        model=build_model("tiny", 100, seed=0),
        args=args,
        train_dataset=[{"input_ids": row} for row in ids],
        data_collator=WindowCollator(32),
        ref_model=build_model("tiny", 100, seed=1),  # online: its logits go to token_losses
    )
    trainer.train()
    assert len(dtypes) == 2  # the reference's and the learner's
    assert dtypes == [torch.bfloat16, torch.bfloat16]
