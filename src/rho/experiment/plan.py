"""The plan of one `rho experiment` run: every stage, in order, with its key and the stages it
reads, computed from the config alone before anything runs.

A stage's key is the hash of the config fields it declares (rho.experiment.settings: each
field names its stages; an arm adds its own ``reads``), of the keys of the stages it reads, and
of its identity (arm, seed). A rerun redoes exactly the stages whose key changed, and a test
changes every field in turn against a hand-written table of who reads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from rho.experiment.arms import ARMS
from rho.experiment.settings import FILE_FIELDS, ExperimentConfig
from rho.models import PRESETS


def stage_key(**parts) -> str:
    """A stable hash of JSON-able settings (paths as strings, keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # data | mix | base | proxy | reference | score | prune | embed | proto | arm | ...
    key: str
    after: tuple[str, ...] = ()  # the stages whose results it reads
    arm: str | None = None
    seed: int | None = None  # an arm's data seed, or a reference's seed
    reference_seed: int | None = None  # the reference whose scores an arm reads
    save: bool = False  # keep checkpoints (for the analyses)
    cached: bool = False  # lives in the shared cache (the pretrained base)


def pretrains_base(cfg: ExperimentConfig) -> bool:
    return cfg.base in PRESETS and not cfg.from_scratch


def proto_stage(reference_seed: int | None) -> str:
    """The prototype-pruned corpus's stage: with a reference's losses carried over, or none."""
    return "proto" if reference_seed is None else f"proto-ref{reference_seed}"


def plan(cfg: ExperimentConfig, inputs: dict) -> dict[str, Stage]:
    """name -> Stage, in the order they run. ``inputs`` is the data stage's file hashes
    (rho.experiment.prepare.inputs_key)."""
    stages: dict[str, Stage] = {}

    def add(name, kind, stage, after=(), extra_reads=(), **identity) -> Stage:
        fields = cfg.fields_read(stage, extra_reads)
        if stage == "data":  # files count by content (``inputs``), not by where they lie
            fields = {k: v for k, v in fields.items() if k not in FILE_FIELDS}
        key = stage_key(
            stage=kind,
            fields=fields,
            after=[stages[a].key for a in after],
            **{k: v for k, v in identity.items() if k != "cached"},
        )
        fields = {k: v for k, v in identity.items() if k in Stage.__dataclass_fields__}
        stages[name] = Stage(name, kind, key, tuple(after), **fields)
        return stages[name]

    add("data", "data", "data", inputs=inputs)
    arms = cfg.arm_list
    if "clm-mix" in arms:
        add("mix", "mix", "mix", after=("data",))
    if pretrains_base(cfg):
        key = add("base", "base", "base", after=("data",), cached=True).key
        stages["base"] = Stage(f"base-{key}", "base", key, ("data",), cached=True)
    else:  # a given model (by name) or a fresh preset: nothing to pretrain
        add("base", "base", "base", base=cfg.base)
    base = ("data", "base")
    start = base  # where the references start: the base, or a proxy of their own
    if cfg.reference_base is not None:
        if cfg.reference_base in PRESETS and not cfg.from_scratch:
            key = add("proxy", "proxy", "proxy", after=("data",)).key
            stages["proxy"] = Stage(f"base-{key}", "proxy", key, ("data",), cached=True)
        else:  # a given model or a fresh preset
            key = stage_key(stage="proxy", base=cfg.reference_base, scratch=cfg.from_scratch)
            stages["proxy"] = Stage("proxy", "proxy", key)
        start = ("data", "proxy")

    # Which references each use needs: scores for the seeds of arms that read them, pruning
    # for the seeds of pruned arms (nothing is scored or pruned that no arm reads).
    scored, pruned = set(), set()
    for name in arms:
        if ARMS[name].uses_reference:
            refs = {cfg.reference_for(seed) for seed in cfg.seeds_of(name)}
            scored |= refs
            pruned |= refs if "prune" in ARMS[name].overhead else set()
    references = cfg.reference_seeds_used if "reference" in arms else sorted(scored)
    for r in references:
        add(f"reference-seed{r}", "reference", "reference", after=start, seed=r)
        if r in scored:
            add(f"score-ref{r}", "score", "score", after=(f"reference-seed{r}",), seed=r)
        if r in pruned:
            add(f"prune-ref{r}", "prune", "prune", after=(f"score-ref{r}",), seed=r)

    # Prototype pruning: embed the corpus once with the references' start, then choose the
    # windows (with a reference's losses carried over for an arm that also reads them).
    proto_arms = [a for a in arms if ARMS[a].data == "proto"]
    if proto_arms:
        add("embed", "embed", "embed", after=start)
    for name in proto_arms:
        for seed in cfg.seeds_of(name):
            ref = cfg.reference_for(seed) if ARMS[name].uses_reference else None
            proto = proto_stage(ref)
            if proto not in stages:
                after = ("embed",) if ref is None else ("embed", f"score-ref{ref}")
                add(proto, "proto", "proto", after=after, seed=ref)

    first = cfg.seeds[0]
    for name in arms:
        arm = ARMS[name]
        if arm.data == "curated":  # the reference arm is the reference runs themselves
            continue
        for seed in cfg.seeds_of(name):
            after = list(base)
            ref = cfg.reference_for(seed) if arm.uses_reference else None
            if arm.data == "mix":
                after.append("mix")
            if arm.data == "proto":
                after.append(proto_stage(ref))
            elif ref is not None:
                after.append(f"prune-ref{ref}" if arm.data == "pruned" else f"score-ref{ref}")
            save = seed == first and name in ("clm", "slm")  # checkpoints for the analyses
            add(
                f"{name}-seed{seed}",
                "arm",
                "arms",
                after=after,
                extra_reads=arm.reads,
                arm=name,
                seed=seed,
                reference_seed=ref,
                save=save,
            )

    if cfg.analyze:
        after = [f"clm-seed{first}"] + ([f"slm-seed{first}"] if "slm" in arms else [])
        add("analyses", "analyses", "analyses", after=after)
    return stages
