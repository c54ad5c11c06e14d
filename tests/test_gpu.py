"""The CUDA path in bf16: loss, memory bound, scoring and training (skipped without CUDA).

``RHO_TEST_DEVICE=cpu pytest -m gpu tests/test_gpu.py`` runs the same tests (but the CUDA
allocator's) on the CPU in bf16, to check the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from rho.data.batches import WindowCollator, WindowDataset
from rho.models import build_model
from rho.scoring.score import score_store
from rho.selection.loss import CHUNK_TOKENS, slm_loss, token_losses
from rho.training.trainer import SelectiveTrainer, SelectiveTrainingArguments

DEVICE = os.environ.get("RHO_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
    ),
]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="measures CUDA memory")


def test_bf16_slm_loss_matches_fp32_on_cpu():
    torch.manual_seed(0)
    logits = 2 * torch.randn(4, 256, 4096)
    targets = torch.randint(0, 4096, (4, 256))
    targets[0, :10] = -100
    ref_loss = 8 + torch.randn(4, 256)
    ref_loss[1, :5] = float("nan")

    cpu_logits = logits.clone().requires_grad_()
    cpu = slm_loss(cpu_logits, targets, ref_loss, ratio=0.6)
    cpu.loss.backward()
    dev_logits = logits.to(DEVICE, torch.bfloat16).requires_grad_()
    dev = slm_loss(dev_logits, targets.to(DEVICE), ref_loss.to(DEVICE), ratio=0.6)
    dev.loss.backward()

    assert dev.token_loss.dtype == torch.float32 and dev_logits.grad.dtype == torch.bfloat16
    gap = (dev.token_loss.cpu() - cpu.token_loss).abs().max().item()
    assert gap < 0.1  # bf16 rounding of logits of size ~8
    assert dev.loss.item() == pytest.approx(cpu.loss.item(), abs=0.02)

    # The same number of tokens; any token selected differently sits within the gap of the cut.
    selected, dev_selected = cpu.selected, dev.selected.cpu()
    assert dev_selected.sum() == selected.sum()
    scores = cpu.token_loss.detach() - ref_loss
    cut = scores[selected].min()
    changed = selected ^ dev_selected
    assert changed.float().mean() < 0.01
    assert ((scores[changed] - cut).abs() <= 2 * gap + 1e-6).all()

    # Gradients: equal where both selected, exactly zero where neither did.
    grad, dev_grad = cpu_logits.grad, dev_logits.grad.float().cpu()
    both, neither = selected & dev_selected, ~(selected | dev_selected)
    torch.testing.assert_close(dev_grad[both], grad[both], rtol=0.05, atol=1e-7)
    assert (dev_grad[neither] == 0).all() and (grad[neither] == 0).all()


@needs_cuda
@pytest.mark.parametrize("chunk", [512, CHUNK_TOKENS])
def test_token_losses_peak_cuda_memory_grows_with_the_chunk(chunk):
    """(8, 1024, 32000) bf16 logits: the step holds the logits, their bf16 gradient and a few
    float32 chunks, never a float32 copy of the whole logits (1 GiB here)."""
    vocab = 32000
    logits = torch.randn(8, 1024, vocab, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, vocab, (8, 1024), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    token_losses(logits, targets, chunk_tokens=chunk).sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    logits_bytes = logits.numel() * 2
    chunk_bytes = chunk * vocab * 4
    assert peak <= 2 * logits_bytes + 4 * chunk_bytes + (64 << 20), (peak, chunk_bytes)


def test_score_store_bf16_matches_fp32_on_cpu(token_store, model_dir, tmp_path):
    kw = dict(seq_len=64, batch_size=8, progress=False)
    fp32 = score_store(
        str(model_dir), token_store, tmp_path / "fp32", dtype="float32", device="cpu", **kw
    )
    bf16 = score_store(
        str(model_dir), token_store, tmp_path / "bf16", dtype="bfloat16", device=DEVICE, **kw
    )
    a = np.asarray(fp32.ref_loss, dtype=np.float32)
    b = np.asarray(bf16.ref_loss, dtype=np.float32)
    assert bf16.meta["score_dtype"] == "bfloat16" and bf16.complete
    assert (np.isnan(a) == np.isnan(b)).all()
    diff = np.abs(a - b)[~np.isnan(a)]
    assert diff.mean() < 0.02 and diff.max() < 0.2, (diff.mean(), diff.max())


@pytest.mark.parametrize("reference", ["offline", "online"])
def test_selective_trainer_bf16_steps(reference, token_store, model_dir, tmp_path):
    seq_len = 64
    losses, ref_model = None, None
    if reference == "offline":
        losses = score_store(
            str(model_dir),
            token_store,
            tmp_path / "losses",
            seq_len,
            batch_size=8,
            dtype="bfloat16",
            device=DEVICE,
            progress=False,
        )
    else:
        ref_model = build_model("tiny", token_store.vocab_size, seed=1)
    model = build_model("tiny", token_store.vocab_size, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    args = SelectiveTrainingArguments(
        ratio=0.6,
        output_dir=str(tmp_path / "out"),
        bf16=True,
        use_cpu=DEVICE == "cpu",
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SelectiveTrainer(
        model=model,
        args=args,
        train_dataset=WindowDataset(token_store, seq_len, losses),
        data_collator=WindowCollator(seq_len, pad_id=token_store.eos_id),
        ref_model=ref_model,
    )
    trainer.train()

    assert next(model.parameters()).device.type == torch.device(DEVICE).type
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for log in logs:
        assert math.isfinite(log["loss"]) and math.isfinite(log["excess_mean"])
        assert log["selected_fraction"] == pytest.approx(0.6, abs=0.01)
    moved = [
        not torch.equal(a, p.detach().cpu())
        for a, p in zip(before, model.parameters(), strict=True)
    ]
    assert all(moved)


@needs_cuda
def test_an_experiment_config_trains_in_bf16_on_the_gpu(tmp_path):
    """`training: {bf16: true}` in a config reaches every run's TrainingArguments on CUDA."""
    import subprocess
    import sys

    config = tmp_path / "bf16.yaml"
    config.write_text("training: {bf16: true}\narms: clm,slm\nseeds: [0]\n")
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "rho", "demo", "--quick", "--config", str(config),
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = sorted(out.rglob("training_args.bin"))
    assert saved, "no run saved its TrainingArguments"
    for path in saved:
        args = torch.load(path, weights_only=False)  # our own run's file
        assert args.bf16 and not args.use_cpu, path


# --- The output layer's loss paths (rho.selection.linear_ce, rho.selection.output_layer)
# --------------------------


def bf16_slm_step(model, ids, targets, ref, impl):
    """(per-token losses, selection, gradients) of one SLM loss step by ``impl``."""
    from rho.selection.output_layer import forward_outputs, resolve_loss_impl

    model.zero_grad(set_to_none=True)
    _, source = forward_outputs(model, {"input_ids": ids}, resolve_loss_impl(impl, model))
    result = slm_loss(source, targets, ref, ratio=0.6)
    result.loss.backward()
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters()}
    return result.token_loss.detach().cpu(), result.selected.cpu(), grads


@pytest.mark.parametrize("impl", ["chunked", "liger", "cce"])
def test_loss_impls_match_the_full_logits_in_bf16(impl):
    """Each path's per-token losses, selection and gradients against the full logits', in
    bf16 (liger and cce: CUDA, when installed)."""
    if impl != "chunked":
        pytest.importorskip({"liger": "liger_kernel", "cce": "cut_cross_entropy"}[impl])
        if DEVICE != "cuda":
            pytest.skip("fused libraries run on CUDA only")
    model = build_model("tiny", 32000, seed=0).to(DEVICE, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32000, (4, 256), generator=g)
    targets = torch.cat([ids[:, 1:], torch.full((4, 1), -100)], dim=1)
    targets[0, :16] = -100
    ref = (torch.rand(4, 256, generator=g) * 10).to(DEVICE)
    ids, targets = ids.to(DEVICE), targets.to(DEVICE)
    full = bf16_slm_step(model, ids, targets, ref, "full")
    ours = bf16_slm_step(model, ids, targets, ref, impl)
    torch.testing.assert_close(ours[0], full[0], atol=0.05, rtol=0.01)
    assert ours[1].sum() == full[1].sum() and not ours[1][targets.cpu() == -100].any()
    assert (ours[1] ^ full[1]).float().mean() < 0.01  # only ties near the cut may differ
    for name, grad in full[2].items():
        scale = grad.abs().max().item() + 1e-12
        assert (ours[2][name] - grad).abs().max().item() <= 0.1 * scale, name


@needs_cuda
def test_chunked_slm_step_peak_memory_at_128k_vocabulary():
    """Llama 3's vocabulary, batch 4 x 2048, bf16: the chunked path's step needs under a fifth
    of the full logits path's extra memory (the logits, their float32 chunks and gradient)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=128256, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).to("cuda", torch.bfloat16)
    ids = torch.randint(0, 128256, (4, 2048), device="cuda")
    targets = torch.cat([ids[:, 1:], torch.full((4, 1), -100, device="cuda")], dim=1)
    ref = torch.rand(4, 2048, device="cuda") * 10
    peaks = {}
    for impl in ("chunked", "full", "chunked"):  # the first chunked step warms up
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        bf16_slm_step(model, ids, targets, ref, impl)
        torch.cuda.synchronize()
        peaks[impl] = torch.cuda.max_memory_allocated() - before
    print(f"peak over the model: full {peaks['full'] >> 20} MiB, chunked {peaks['chunked'] >> 20}")
    assert peaks["chunked"] <= 0.2 * peaks["full"], peaks
