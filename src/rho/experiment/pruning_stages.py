"""`rho experiment`'s offline-pruning stages, built for the runner (rho.experiment.runner's
``BUILDERS``): the drawn windows pruned by their reference scores, embedded by the base, and
pruned by prototypes."""

from __future__ import annotations

from pathlib import Path

from rho.errors import UserError
from rho.experiment.cost import embed_flops
from rho.experiment.plan import Stage
from rho.experiment.records import Embedded, Windows
from rho.io.store import TokenStore
from rho.models import PRESETS, count_parameters, load_model
from rho.pruning.prune import prune_store
from rho.scoring.embed import embed_units


def build_prune(runner, stage: Stage, directory: Path) -> Windows:
    v = runner.cfg.view("prune")
    scored = runner.results[stage.windows]
    report = prune_store(
        scored.store,
        scored.losses,
        directory / "pruned",
        keep=v.prune_keep,
        unit="window",
        by="reference",
        progress=False,
    )
    return Windows(
        tokens=str(directory / "pruned" / "tokens"),
        losses=str(directory / "pruned" / "ref_losses"),
        windows=report["units_kept"],
    )


def build_embed(runner, stage: Stage, directory: Path) -> Embedded:
    """The drawn windows embedded by the base: the mean of a hidden state."""
    v = runner.cfg.view("embed")
    model_dir = runner.model("base")
    if model_dir in PRESETS:
        raise UserError(
            "the prototype arms embed with a trained model: not with "
            "--from_scratch (give a model --base)"
        )
    store = TokenStore(runner.results[stage.windows].tokens)
    model = load_model(model_dir)
    embed_units(
        model,
        model_dir,
        store,
        "window",
        v.seq_len,
        directory / "embeddings",
        layer=v.embed_layer,
    )
    return Embedded(
        embeddings=str(directory / "embeddings"),
        model=model_dir,
        layer=v.embed_layer,
        embedded_tokens=store.n_tokens,
        flops=embed_flops(v.embed_layer, count_parameters(model), store.n_tokens),
    )


def build_proto(runner, stage: Stage, directory: Path) -> Windows:
    v = runner.cfg.view("proto")
    store = TokenStore(runner.results[stage.windows].tokens)
    embedded = runner.results[stage.after[0]]
    options = {
        "embed_model": embedded.model,
        "embeddings": embedded.embeddings,
        "layer": embedded.layer,
        "seq_len": v.seq_len,
        "keep_from": v.proto_from,
        "dedup": v.proto_dedup or None,
        "seed": 0,
    }
    report = prune_store(
        store,
        None,
        directory / "pruned",
        keep=v.proto_keep,
        unit="window",
        by="prototype",
        progress=False,
        prototype=options,
    )
    return Windows(
        tokens=str(directory / "pruned" / "tokens"),
        windows=report["units_kept"],
        dropped_by_dedup=report.get("dropped_by_dedup"),
        clusters=report.get("clusters"),
    )
