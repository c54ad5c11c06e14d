"""`rho experiment`'s checks of what its stages will need, before any stage trains: the models
it starts from (``check_models``, when the run starts) and the size of every store a training
run or a draw reads (``check_sizes``, on the data stage's token counts, before the first
training). A mistake found after an arm has trained costs that training; here it is one line."""

from __future__ import annotations

from pathlib import Path

from rho.errors import UserError
from rho.experiment.arms import ARMS
from rho.models import PRESETS, check_model_source

# The data stage's stores that whole windows are drawn from or trained on (the held-out sets
# are evaluated, which needs no whole window).
TRAINED_STORES = {"corpus": "--corpus", "curated": "--curated", "base": "--base_data"}


def check_models(cfg) -> None:
    """The base and the proxy's start exist (or are presets pretrained on --base_data), and the
    prototype arms' embedding layer is one of the base's hidden states."""
    proto = [a for a in cfg.arm_list if ARMS[a].data == "proto"]
    if proto and cfg.from_scratch:
        raise UserError(
            f"--arms {proto[0]} embeds with a trained model: not with --from_scratch (give a "
            "model --base)"
        )
    if cfg.base in PRESETS and not cfg.from_scratch and not cfg.base_data:
        raise UserError(f"a preset --base {cfg.base} needs --base_data (or --from_scratch)")
    if cfg.base not in PRESETS:
        check_model_source(cfg.base)  # a local path that is not there (a hub name may be)
    reference = cfg.reference_base
    if reference is not None and reference not in PRESETS and not Path(reference).is_dir():
        raise UserError(
            f"--reference_base {reference!r} is neither a preset ({', '.join(PRESETS)}) nor a "
            "model directory"
        )
    if reference in PRESETS and not cfg.from_scratch and not cfg.base_data:
        raise UserError(
            f"a preset --reference_base {reference} is pretrained on --base_data: give "
            "--base_data (or --from_scratch)"
        )
    if proto:
        check_layer(cfg.embed_layer, depth(cfg.base))


def depth(model: str) -> int | None:
    """The number of layers of a preset or a local model (None: a hub name, not looked up)."""
    if model in PRESETS:
        return PRESETS[model]["num_hidden_layers"]
    if not (Path(model) / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):  # the base's own load says what is wrong with it
        return None
    return getattr(config, "num_hidden_layers", None)


def check_layer(layer: int, layers: int | None) -> None:
    if layers is not None and not -(layers + 1) <= layer <= layers:
        raise UserError(
            f"--embed_layer {layer}: the base has hidden states 0..{layers} (-1: the last)"
        )


def check_sizes(cfg, data) -> None:
    """Every store drawn from or trained on holds at least one whole window of --seq_len
    tokens (``data``: the data stage's result, its token counts by store)."""
    pretrained = {cfg.base, cfg.reference_base} & set(PRESETS) and not cfg.from_scratch
    for store, flag in TRAINED_STORES.items():
        tokens = data.tokens.get(store)
        if store == "base" and not pretrained:
            continue  # a model --base: its data is not trained on
        if tokens is not None and tokens < cfg.seq_len:
            raise UserError(
                f"{flag}: {tokens:,} tokens, shorter than one window (--seq_len {cfg.seq_len})"
            )
