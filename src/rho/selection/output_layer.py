"""Which loss path runs a model's output layer (``--loss_impl``), and the model side of the
chunked one (``rho.selection.linear_ce``): the last hidden states of any AutoModelForCausalLM, its
output
layer as a ``Head``, and a one-off check that the two reproduce the model's own logits.

- ``full``: the model's logits, then ``rho.selection.loss.token_losses`` (chunked float32 upcast
only);
- ``chunked``: hidden states -> ``HeadInputs``: rho's pure-torch chunked linear cross-entropy;
- ``liger`` / ``cce``: the same, with Liger-Kernel's fused linear cross-entropy or Apple's Cut
  Cross-Entropy doing the per-token and summed losses (CUDA, when installed);
- ``auto``: ``chunked`` (bench/bench_vocab.py measured it no slower than ``full`` on a CPU at
  every vocabulary tried, 2k to 256k), or ``full`` for a model whose logits the chunked path
  cannot reproduce.
"""

from __future__ import annotations

import importlib.util
import weakref

import torch
from torch import nn

from rho.errors import UserError
from rho.selection.linear_ce import Head, HeadInputs
from rho.selection.loss import token_entropy, token_losses
from rho.selection.select import check_choice

LOSS_IMPLS = ("auto", "chunked", "full", "liger", "cce")
LOSS_IMPL_HELP = (
    "the output layer's loss path: chunked (never the whole batch x sequence x vocabulary "
    "logits; the output layer's backward at the selected tokens only), full (the model's "
    "logits), liger or cce (Liger-Kernel's or Cut Cross-Entropy's fused linear cross-entropy: "
    "CUDA, when installed), auto (chunked, or full for a model whose logits the chunked path "
    "cannot reproduce)"
)
LOSS_IMPL_FIELD = {"help": LOSS_IMPL_HELP, "choices": LOSS_IMPLS}  # its dataclass metadata
_PACKAGES = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}
_RESOLVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {asked: used}


def unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def output_head(model: nn.Module) -> Head:
    """The model's output layer with the post-processing its config declares."""
    model = unwrap(model)
    layer, config = model.get_output_embeddings(), model.config
    scale = float(getattr(config, "logit_scale", None) or 1.0)  # Cohere
    if getattr(config, "logits_scaling", None):  # Granite divides
        scale /= float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return Head(layer.weight, getattr(layer, "bias", None), scale, softcap)


def forward_hidden(model: nn.Module, inputs: dict):
    """(the model's outputs with empty (B, T, 0) logits, the hidden states its output layer
    got). Through the model's own forward (DDP's hooks, autocast), with the output layer's
    matmul skipped: rho's loss path applies it chunk by chunk."""
    layer, captured = unwrap(model).get_output_embeddings(), []

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        captured.append(hidden)
        return hidden[..., :0]

    own = vars(layer).get("forward")  # an instance's own forward (accelerate's hooks): kept
    layer.forward = capture
    try:
        outputs = model(**inputs)
    finally:
        if own is None:
            del layer.forward
        else:
            layer.forward = own
    if len(captured) != 1:
        raise UserError(
            f"{type(unwrap(model)).__name__} called its output layer {len(captured)} times in "
            "one forward: use --loss_impl full"
        )
    return outputs, captured[0]


def head_problem(model: nn.Module) -> str | None:
    """Why the chunked path cannot reproduce the model's logits, or None. Checked on a short
    forward (16 tokens, eval mode): head(hidden states) against the model's own logits."""
    inner = unwrap(model)
    layer = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(getattr(layer, "weight", None), torch.Tensor):
        return f"{type(inner).__name__} has no linear output layer (get_output_embeddings())"
    head = output_head(inner)
    config = inner.config  # a model with learned positions may have fewer than 16
    n = min(
        16, getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 16)
    )
    ids = torch.arange(n, device=head.weight.device)[None] % head.weight.shape[0]
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            full = inner(input_ids=ids, use_cache=False).logits.float()
            ours = head.logits(forward_hidden(inner, {"input_ids": ids, "use_cache": False})[1])
    except UserError as err:
        return str(err).removesuffix(": use --loss_impl full")
    finally:
        inner.train(was_training)
    tol = 1e-4 if head.weight.dtype == torch.float32 else 3e-2
    if ours.shape != full.shape or not torch.allclose(ours, full, rtol=tol, atol=tol):
        return (
            f"{type(inner).__name__}'s logits are not its output layer applied to its last "
            "hidden states (a post-processing rho does not know)"
        )
    return None


def resolve_loss_impl(impl: str, model: nn.Module) -> str:
    """The path ``impl`` means for ``model``: full, chunked, liger or cce; remembered per model.
    A path that cannot run (the package, CUDA, the head) is refused in one line."""
    check_choice(impl, LOSS_IMPLS, "--loss_impl")
    inner = unwrap(model)
    known = _RESOLVED.setdefault(inner, {})
    if impl not in known:
        known[impl] = _resolve(impl, inner)
    return known[impl]


def _resolve(impl: str, model: nn.Module) -> str:
    if impl == "full":
        return impl
    if impl in _PACKAGES:
        if importlib.util.find_spec(_PACKAGES[impl]) is None:
            raise UserError(f"--loss_impl {impl} needs the {_PACKAGES[impl]} package")
        if next(model.parameters()).device.type != "cuda":
            raise UserError(f"--loss_impl {impl} runs on CUDA only: use chunked on this device")
    problem = head_problem(model)
    if problem is not None:
        if impl == "auto":
            return "full"
        raise UserError(f"--loss_impl {impl}: {problem}; use --loss_impl full")
    if impl in _PACKAGES and output_head(model).scale != 1.0:
        raise UserError(f"--loss_impl {impl} has no logit scale: use --loss_impl chunked")
    return "chunked" if impl == "auto" else impl


def _liger(rows, head: Head, targets, reduction: str) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    weight = head.weight.to(rows.dtype)
    bias = None if head.bias is None else head.bias.to(rows.dtype)
    out = liger_fused_linear_cross_entropy(
        rows, weight, targets, bias, reduction=reduction, softcap=head.softcap
    )
    return out[0] if isinstance(out, tuple) else out


def _cce(rows, head: Head, targets, reduction: str) -> torch.Tensor:
    from cut_cross_entropy import linear_cross_entropy

    bias = None if head.bias is None else head.bias.to(rows.dtype)
    weight = head.weight.to(rows.dtype)
    return linear_cross_entropy(
        rows, weight, targets, bias=bias, softcap=head.softcap, reduction=reduction
    )


FUSED = {"liger": _liger, "cce": _cce}


def head_forward(model: nn.Module, inputs: dict, impl: str):
    """(the model's outputs, ``HeadInputs``) for a resolved impl other than full."""
    outputs, hidden = forward_hidden(model, inputs)
    return outputs, HeadInputs(hidden, output_head(model), fused=FUSED.get(impl))


def forward_outputs(model: nn.Module, inputs: dict, impl: str, logits_needed: bool = False):
    """(the model's outputs, its logits or, for a resolved impl other than full, its
    ``HeadInputs``): what ``rho.selection.loss.slm_loss`` takes."""
    if impl == "full" or logits_needed:
        outputs = model(**inputs)
        return outputs, outputs.logits
    return head_forward(model, inputs, impl)


@torch.no_grad()
def model_token_losses(
    model: nn.Module, inputs: dict, targets: torch.Tensor, impl: str = "auto", entropy=False
):
    """Per-target losses (and, with ``entropy``, entropies) of one forward without gradient,
    float32, by the path ``impl`` resolves to. ``inputs``: the model's keyword inputs."""
    inputs = {**inputs, "use_cache": False}  # no key/value cache: nothing is generated
    _, source = forward_outputs(model, inputs, resolve_loss_impl(impl, model))
    if isinstance(source, HeadInputs):
        return source.token_losses(targets, entropy=entropy)
    losses = token_losses(source, targets)
    return (losses, token_entropy(source)) if entropy else losses
