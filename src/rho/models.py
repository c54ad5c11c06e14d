"""Models: tiny Llama-architecture presets built from configs (never downloaded), and loading.

Presets take their vocabulary from the tokenizer; sizes below are for a 4k vocabulary with tied
embeddings, except ``100m`` and the GPU ladder's ``gpu-*`` (a 32k vocabulary: docs/ladder-gpu.yaml).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.utils import logging as hf_logging

from rho.errors import UserError

PRESETS: dict[str, dict] = {
    # name: LlamaConfig fields (hidden, layers, heads, MLP width)
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "300k": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192),
    "1m": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384),
    "5m": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=768),
    "20m": dict(
        hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1376
    ),
    "100m": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048
    ),
    # the GPU ladder (docs/ladder-gpu.yaml): about 20M, 60M and 150M at a 32k vocabulary
    "gpu-20m": dict(
        hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1024
    ),
    "gpu-60m": dict(
        hidden_size=640, num_hidden_layers=8, num_attention_heads=10, intermediate_size=1728
    ),
    "gpu-150m": dict(
        hidden_size=896, num_hidden_layers=12, num_attention_heads=14, intermediate_size=2432
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def preset_config(name: str, vocab_size: int, max_positions: int = 2048):

    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        **PRESETS[name],
    )


def build_model(name: str, vocab_size: int, seed: int = 0, max_positions: int = 2048):
    """A freshly initialised preset model; the same seed gives the same weights."""

    config = preset_config(name, vocab_size, max_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_model_source(name_or_path: str | Path) -> bool:
    """Fail at once for a local-looking path that is not there (a hub lookup would retry for
    seconds). Returns True when a local model's weights are only pickles (*.bin), no
    safetensors."""
    path, name = Path(name_or_path), str(name_or_path)
    if not path.exists():
        first = Path(path.parts[0]) if path.parts else path
        if path.is_absolute() or name.startswith(".") or len(path.parts) > 2 or first.is_dir():
            raise UserError(f"model {name!r} is not a local directory (and not a hub name)")
        return False
    return path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("*.bin"))


def load_model(
    name_or_path: str | Path,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    allow_missing_weights: bool = False,
):
    """Any AutoModelForCausalLM from a directory or hub name (safetensors preferred). Pickle
    weights go through torch's weights_only loader (an unsafe pickle raises UnpicklingError,
    which the CLI reports as a refusal); loading them prints a one-line warning. Weights the
    model needs but the files lack (they would stay at random initial values) are refused
    unless ``allow_missing_weights``."""

    from safetensors import SafetensorError  # truncated or garbage weights: one line

    pickled = check_model_source(name_or_path)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the weight-loading bar: one line of output per load
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: rho checks the loading info itself
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(name_or_path),
            dtype=parse_dtype(dtype),
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except (OSError, ValueError, SafetensorError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load model {str(name_or_path)!r}: {first_line}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    check_loaded_weights(name_or_path, info, allow_missing_weights)
    if pickled:
        print(
            f"rho: warning: {name_or_path} holds pickle weights (*.bin), not safetensors: loaded "
            "with torch's weights_only loader (save the model with safetensors to avoid this)",
            file=sys.stderr,
        )
    return model


def check_loaded_weights(name_or_path, info: dict, allow_missing: bool) -> None:
    """Refuse a model whose files lack weights, or hold some of the wrong shape (transformers
    only reports them and leaves those weights at random values)."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in
                        info.get("mismatched_keys") or [])  # fmt: skip
    if mismatched:
        raise UserError(
            f"model {name_or_path}: {len(mismatched)} weights have the wrong shape "
            f"({', '.join(mismatched[:3])}...): wrong config for these weights?"
        )
    if missing and not allow_missing:
        raise UserError(
            f"model {name_or_path} lacks {len(missing)} weights ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): they would be random; pass "
            "--allow_missing_weights (rho train) or --allow-missing-weights (rho score) if meant"
        )
    if missing:
        print(
            f"rho: warning: {name_or_path} lacks {len(missing)} weights: left at their initial "
            "values (--allow-missing-weights)",
            file=sys.stderr,
        )


def model_vocab_size(model) -> int:
    embeddings = model.get_input_embeddings()
    return int(embeddings.num_embeddings)


def check_vocab(model, vocab_size: int, what: str = "the model") -> None:
    """A model must have an embedding row for every id the tokenizer can produce."""
    if model_vocab_size(model) < vocab_size:
        raise UserError(
            f"{what} has a vocabulary of {model_vocab_size(model)}, smaller than the tokenizer's "
            f"{vocab_size}: token ids would be out of range (wrong tokenizer or model?)"
        )


@torch.no_grad()
def model_fingerprint(model) -> str:
    """Cheap identity of the weights (shapes and two sums per tensor), computed on their device."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().double()
        h.update(f"{name}{tuple(t.shape)}{t.sum().item():.10e}{t.abs().sum().item():.10e}".encode())
    return h.hexdigest()


def count_parameters(model, embeddings: bool = True) -> int:
    """Unique parameters (tied weights counted once)."""
    seen = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    if not embeddings:
        total -= model.get_input_embeddings().weight.numel()
    return total


def check_not_same_model(model, ref_model) -> None:
    """A public port's bug: the 'reference' was the training model itself, so excess ≈ 0."""
    if ref_model is model:
        raise UserError("the reference model is the training model itself: excess loss would be 0")
    learner = {p.data_ptr() for p in model.parameters()}
    if any(p.data_ptr() in learner for p in ref_model.parameters()):
        raise UserError("the reference model shares weights with the training model")
    if model_fingerprint(ref_model) == model_fingerprint(model):
        raise UserError(
            "the reference model has the same weights as the training model: excess loss would "
            "be 0 (train the reference on curated data first)"
        )
