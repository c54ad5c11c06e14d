"""`rho prune`: offline pruning of whole documents or windows (rho.pruning.prune)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from rho import distributed as dist
from rho.commands.parser import Command
from rho.errors import UserError
from rho.pruning.prune import BYS, UNITS, prune_store
from rho.scoring.windows import parse_device
from rho.training.options import option

PROTOTYPE = "--by prototype (embeddings, k-means with faiss, SemDeDup)"  # its --help section
# The --by prototype options' defaults, applied with --by prototype only: given with another
# --by, any of them is a mistake (so in the dataclass each defaults to None: not given).
PROTOTYPE_DEFAULTS = {"embed_layer": -1, "batch_size": 16, "keep_from": "hard", "seed": 0}


def prototype_option(help: str, default=None, **metadata):
    """An option of --by prototype: its own section of `--help`."""
    return option(help, default, group=PROTOTYPE, **metadata)


@dataclass
class PruneOptions:
    """Drop the least useful documents or windows before training."""

    tokens: str = option("TokenStore to prune")
    out: str = option("output directory (tokens/, ref_losses/)")
    losses: str | None = option(
        "its reference LossStore (required except for --by prototype)", None
    )
    base_losses: str | None = option("a base model's LossStore (for --by excess)", None)
    keep: float = option("fraction of units kept", 0.5)
    unit: str = option("what is kept or dropped whole", "document", choices=UNITS)
    by: str | None = option(
        "excess: mean base − reference (CoLoR-Filter); reference: lowest mean reference loss; "
        "reference-entropy: lowest mean reference entropy; reference+entropy: best mean rank "
        "average of reference loss and entropy (both need --losses from `rho score --entropy`); "
        "prototype: distance of the unit's embedding to its k-means centroid (D4) (default: "
        "excess when --base-losses is given, else reference)",
        None,
        choices=BYS,
    )
    ref_model: str | None = option("reference model to re-score pruned documents", None)
    overwrite: bool = option("replace an earlier --out", False)
    embed_model: str | None = prototype_option(
        "causal LM whose last hidden state, mean-pooled over a unit's tokens, embeds it"
    )
    embed_layer: int | None = prototype_option(
        "which hidden state embeds a unit: -1 the last (default), 0 the input token embeddings "
        "(a lookup: no forward pass), k the k-th layer's output"
    )
    embeddings: str | None = prototype_option(
        "embedding store to write, resume or reuse (default: beside --tokens, named by unit, "
        "seq_len and model hash)"
    )
    seq_len: int | None = prototype_option(
        "window length for --unit window (default: the losses'); for documents, the most tokens "
        "embedded: longer documents are truncated (default: the model's positions)"
    )
    batch_size: int | None = prototype_option("units per forward pass (default: 16)")
    clusters: int | None = prototype_option(
        "k of k-means (default: round(sqrt(units)), at least 2)"
    )
    keep_from: str | None = prototype_option(
        "hard: keep the units farthest from their centroid (abundant data); easy: nearest "
        "(default: hard)",
        choices=("hard", "easy"),
    )
    dedup: float | None = prototype_option(
        "SemDeDup first: inside each cluster drop a unit whose cosine similarity to an earlier "
        "one is at least this, in (0, 1] (e.g. 0.95); --keep stays a fraction of all units "
        "(fewer are kept if fewer survive)"
    )
    seed: int | None = prototype_option("k-means seed (default: 0)")
    device: str | None = prototype_option("cpu, cuda, cuda:1 ... for embedding (default: best)")

    def __post_init__(self):
        mine = [f.name for f in fields(self) if f.metadata.get("group") == PROTOTYPE]
        given = [name for name in mine if getattr(self, name) is not None]
        if self.ranked_by != "prototype" and given:
            raise UserError(f"--{given[0].replace('_', '-')} is an option of --by prototype")
        for name, default in PROTOTYPE_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, default)

    @property
    def ranked_by(self) -> str:
        return self.by or ("excess" if self.base_losses else "reference")


def main(options: PruneOptions) -> int:
    prototype = None
    if options.ranked_by == "prototype":
        prototype = {
            "embed_model": options.embed_model,
            "layer": options.embed_layer,
            "embeddings": options.embeddings,
            "seq_len": options.seq_len,
            "batch_size": options.batch_size,
            "k": options.clusters,
            "keep_from": options.keep_from,
            "dedup": options.dedup,
            "seed": options.seed,
            "device": parse_device(options.device) if options.device else None,
        }
    with dist.process_group_closed():
        report = prune_store(
            options.tokens,
            options.losses,
            options.out,
            keep=options.keep,
            unit=options.unit,
            by=options.ranked_by,
            base_losses=options.base_losses,
            ref_model=options.ref_model,
            overwrite=options.overwrite,
            prototype=prototype,
        )
    if report:
        print(json.dumps(report, indent=2))
    return 0


COMMAND = Command((PruneOptions,), main)
