"""The chunked linear cross-entropy path (rho.selection.linear_ce, rho.selection.output_layer)
against the full-logits
path: the same per-token losses, entropies, selection and gradients (float32, 1e-5) for tiny
Llama, Qwen2, Mistral, GPT-NeoX and Gemma2 models built from configs; heads with a bias or a
logit scale; refusals in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import SEQ, rho_command, targs, train_logs
from torch import nn
from torch.utils.data import Subset
from transformers import TrainerCallback

from rho.errors import UserError
from rho.io.store import LossStore
from rho.selection.linear_ce import Head, HeadInputs
from rho.selection.loss import slm_loss, token_entropy, token_losses
from rho.selection.output_layer import (
    forward_hidden,
    head_forward,
    model_token_losses,
    resolve_loss_impl,
)
from rho.training.options import ModelDataArguments
from rho.training.runs import OPTIONS_FILE
from rho.training.train import build_trainer

VOCAB = 97
SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=2),
    "mistral": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**SMALL),  # untied head
    "gemma2": lambda: transformers.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=8),
}


def tiny(arch: str, **extra) -> nn.Module:
    config = CONFIGS[arch]() if arch in CONFIGS else getattr(transformers, arch)(**SMALL)
    config.vocab_size = VOCAB
    for key, value in extra.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    targets = torch.cat([ids[:, 1:], torch.full((3, 1), -100)], dim=1)
    targets[0, :4] = -100  # prompt / padding
    ref = torch.rand(3, 12, generator=g) * 5
    ref[1, 2:5] = float("nan")  # unscored by the reference
    return ids, targets, ref


def both_paths(model, ids, targets, ref, ratio=0.6, **kw):
    """(full result, chunked result, full grads, chunked grads) of one SLM loss step."""
    results, grads = [], []
    for chunked in (False, True):
        model.zero_grad()
        if chunked:
            _, source = head_forward(model, {"input_ids": ids}, "chunked")
            source.chunk = 5  # several chunks, a partial last one
        else:
            source = model(input_ids=ids).logits
        result = slm_loss(source, targets, ref, ratio=ratio, **kw)
        result.loss.backward()
        results.append(result)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return (*results, *grads)


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("ratio", [0.6, 1.0])
def test_chunked_slm_equals_full_logits(arch, ratio):
    model = tiny(arch)
    ids, targets, ref = batch()
    full, chunked, full_grads, chunked_grads = both_paths(model, ids, targets, ref, ratio)
    torch.testing.assert_close(chunked.token_loss, full.token_loss.detach(), atol=1e-5, rtol=0)
    assert torch.equal(chunked.selected, full.selected)
    assert not chunked.selected[targets == -100].any()  # padding is never selected
    assert chunked.sums["n_selected"] == full.sums["n_selected"]
    torch.testing.assert_close(chunked.loss, full.loss, atol=1e-5, rtol=0)
    assert full_grads.keys() == chunked_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert resolve_loss_impl("chunked", model) == "chunked"


def test_normaliser_and_empty_selection_through_the_chunked_path():
    model = tiny("llama")
    ids, targets, ref = batch()
    full, chunked, *_ = both_paths(model, ids, targets, ref, normalizer=100.0)
    torch.testing.assert_close(chunked.loss, full.loss, atol=1e-6, rtol=0)
    none = torch.full_like(targets, -100)
    model.zero_grad()
    _, source = head_forward(model, {"input_ids": ids}, "chunked")
    empty = slm_loss(source, none, ratio=0.6, score="learner")
    empty.loss.backward()  # 0.0 that still backpropagates
    assert empty.loss.item() == 0.0 and model.lm_head.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_scoring_losses_and_entropies_equal_full_logits(arch):
    model = tiny(arch)
    ids, targets, _ = batch()
    logits = model(input_ids=ids).logits
    losses, entropies = model_token_losses(
        model, {"input_ids": ids}, targets, "chunked", entropy=True
    )
    torch.testing.assert_close(losses, token_losses(logits, targets), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropies, token_entropy(logits), atol=1e-5, rtol=0)
    only = model_token_losses(model, {"input_ids": ids}, targets, "chunked")
    assert torch.equal(only, losses)


def test_head_with_bias_and_logit_scale_is_reproduced():
    model = tiny("CohereConfig", logit_scale=0.25)
    old = model.lm_head
    model.lm_head = nn.Linear(old.in_features, old.out_features, bias=True)
    nn.init.normal_(model.lm_head.bias)
    assert resolve_loss_impl("auto", model) == "chunked"
    assert resolve_loss_impl("chunked", model) == "chunked"
    ids, targets, ref = batch()
    full, chunked, full_grads, chunked_grads = both_paths(model, ids, targets, ref)
    torch.testing.assert_close(chunked.token_loss, full.token_loss.detach(), atol=1e-5, rtol=0)
    for name in ("lm_head.bias", "lm_head.weight", "model.embed_tokens.weight"):
        torch.testing.assert_close(chunked_grads[name], full_grads[name], atol=1e-5, rtol=1e-4)


def test_unknown_post_processing_is_refused_in_one_line():
    model = tiny("llama")

    def double(module, args, output):
        output["logits"] = output.logits * 2
        return output

    model.register_forward_hook(double)
    with pytest.raises(UserError, match="post-processing rho does not know.*--loss_impl full"):
        resolve_loss_impl("chunked", model)
    assert resolve_loss_impl("auto", model) == "full"  # auto falls back to the logits


def test_a_model_without_a_linear_head_is_refused():
    model = tiny("llama")
    model.lm_head = nn.Sequential(model.lm_head)
    with pytest.raises(UserError, match="no linear output layer"):
        resolve_loss_impl("chunked", model)
    with pytest.raises(UserError, match="unknown --loss_impl 'fast'"):
        resolve_loss_impl("fast", model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
@pytest.mark.parametrize("impl", ["liger", "cce"])
def test_fused_libraries_are_refused_without_cuda_or_package(impl):
    with pytest.raises(UserError, match=f"--loss_impl {impl} (needs the|runs on CUDA only)"):
        resolve_loss_impl(impl, tiny("llama"))


def test_hidden_states_capture_skips_the_output_matmul_and_restores_the_layer():
    model = tiny("gpt_neox")
    ids, _, _ = batch()
    outputs, hidden = forward_hidden(model, {"input_ids": ids})
    assert outputs.logits.shape == (3, 12, 0) and hidden.shape == (3, 12, 32)
    assert "forward" not in vars(model.get_output_embeddings())  # the class's forward again
    head = Head(model.get_output_embeddings().weight)  # embed_out in transformers 4.x
    torch.testing.assert_close(head.logits(hidden), model(input_ids=ids).logits)
    assert HeadInputs(hidden, head).token_losses(ids).shape == ids.shape


# --- Through the trainer and rho score ------------------------------------------------------------


class FirstGrads(TrainerCallback):
    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = self.grads or {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("selection", ["token", "none"])
def test_trainer_step_and_records_are_the_same_through_either_path(stores, tmp_path, selection):
    """Accumulation 2 x batch 2, ratio 0.6: the step's gradient and the selection statistics
    are the full-logits path's; rho_options.json records the path asked for and the one used."""
    grads, logs = {}, {}
    for impl in ("full", "auto"):
        data = ModelDataArguments(
            tokens=str(stores.tokens), preset="tiny", ref_losses=str(stores.losses)
        )
        args = targs(
            tmp_path / impl, selection=selection, loss_impl=impl, per_device_train_batch_size=2,
            gradient_accumulation_steps=2, save_strategy="no",
        )  # fmt: skip
        trainer = build_trainer(data, args)
        trainer.train_dataset = Subset(trainer.train_dataset, range(4))
        capture = FirstGrads()
        trainer.add_callback(capture)
        trainer.train()
        grads[impl], logs[impl] = capture.grads, train_logs(tmp_path / impl)[0]
        trainer.save_model()
        recorded = json.loads((tmp_path / impl / OPTIONS_FILE).read_text())["loss_impl"]
        used = "full" if impl == "full" else "chunked"
        assert recorded == {"asked": impl, "learner": used, "reference": None}
    for name, grad in grads["full"].items():
        torch.testing.assert_close(grads["auto"][name], grad, atol=1e-6, rtol=1e-4, msg=name)
    for key in ("selected_fraction", "loss_all", "loss_selected"):
        assert logs["auto"][key] == pytest.approx(logs["full"][key], abs=1e-5), key


def test_rho_score_stores_the_same_losses_and_entropies_either_path(stores, tmp_path):
    values = {}
    for impl in ("full", "chunked"):
        out = tmp_path / impl
        argv = ["--model", str(stores.ref_dir), "--tokens", str(stores.tokens), "--out", str(out)]
        argv += ["--seq-len", SEQ, "--device", "cpu", "--entropy", "--loss-impl", impl]
        assert rho_command("score", argv) == 0
        store = LossStore(out)
        values[impl] = np.stack([np.asarray(store.ref_loss), np.asarray(store.ref_entropy)])
    np.testing.assert_allclose(values["chunked"], values["full"], atol=2e-3, equal_nan=True)


def test_bad_loss_impl_is_one_line(stores, tmp_path):
    with pytest.raises(UserError, match="unknown --loss_impl 'fused'"):
        targs(tmp_path, loss_impl="fused")


def test_bf16_autocast_step_is_close_to_the_full_logits():
    """The trainer's bf16 (autocast over float32 weights): bf16 matmuls, float32 gradients."""
    model = tiny("llama")
    ids, targets, ref = batch()
    with torch.autocast("cpu", torch.bfloat16):
        full, chunked, full_grads, chunked_grads = both_paths(model, ids, targets, ref)
    torch.testing.assert_close(chunked.token_loss, full.token_loss.detach(), atol=0.05, rtol=0)
    for name, grad in full_grads.items():
        assert chunked_grads[name].dtype == torch.float32
        gap = (chunked_grads[name] - grad).abs().max()
        assert gap <= 0.05 * grad.abs().max() + 1e-6, name


def test_an_output_layer_called_twice_in_a_forward_is_refused():
    model = tiny("llama")

    def again(module, args, output):
        module.lm_head(torch.zeros(1, 32))  # e.g. a multi-token-prediction head

    model.register_forward_hook(again)
    with pytest.raises(UserError, match="called its output layer 2 times.*--loss_impl full"):
        resolve_loss_impl("chunked", model)
    assert resolve_loss_impl("auto", model) == "full"
    assert "forward" not in vars(model.lm_head)
