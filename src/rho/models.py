"""Models: tiny Llama-architecture presets built from configs (never downloaded), and loading.

Presets take their vocabulary from the tokenizer; sizes below are for a 4k vocabulary with tied
embeddings, except ``100m`` (32k vocabulary, for GPU measurements).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from rho.errors import UserError

PRESETS: dict[str, dict] = {
    # name: LlamaConfig fields (hidden, layers, heads, MLP width)
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "1m": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384),
    "5m": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=768),
    "20m": dict(
        hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1376
    ),
    "100m": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def preset_config(name: str, vocab_size: int, max_positions: int = 2048):
    from transformers import LlamaConfig

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
    from transformers import AutoModelForCausalLM

    config = preset_config(name, vocab_size, max_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(name_or_path: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """Any AutoModelForCausalLM from a directory or hub name (safetensors preferred)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            str(name_or_path), dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load model {str(name_or_path)!r}: {first_line}") from None


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
