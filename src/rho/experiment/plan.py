"""The plan of one `rho experiment` run: every stage, in order, with its key and the stages it
reads, computed from the config alone before anything runs.

A stage's key is the hash of the config fields it declares (rho.experiment.settings: each
field names its stages; an arm adds its own ``reads``), of the keys of the stages it reads, and
of its identity (arm, seed, pool). A rerun redoes exactly the stages whose key changed, and a
test changes every field in turn against a hand-written table of who reads it.

Each arm seed trains on windows drawn for it, and only those are scored or embedded: a draw of
``pool`` budgets of windows from its source (the corpus or the curated mix; seeded, so clm,
slm and slm-random of one seed share their windows and order), then, by arm, reference scores
of the draw, pruning by them, or prototype pruning of its embeddings (then scores of what was
kept). The stages an arm seed is charged for before training are listed in its ``charges``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from rho.experiment.arms import ARMS, Arm
from rho.experiment.settings import FILE_FIELDS, ExperimentConfig
from rho.models import PRESETS


def stage_key(**parts) -> str:
    """A stable hash of JSON-able settings (paths as strings, keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # data | mix | base | proxy | sample | reference | draw | score | prune | embed | ...
    key: str
    after: tuple[str, ...] = ()  # the stages whose results it reads
    arm: str | None = None
    seed: int | None = None  # an arm's data seed, or a reference's seed
    reference_seed: int | None = None  # the reference whose scores an arm reads
    save: bool = False  # keep checkpoints (for the analyses)
    cached: bool = False  # lives in the shared cache (the pretrained base)
    pool: float | None = None  # a draw's size, in budgets of windows
    source: str | None = None  # a draw's: corpus | mix; a reference's: base | proxy | self
    entropy: bool = False  # a score stage also stores the reference's entropy
    windows: str | None = None  # the stage whose windows it reads (scores, prunes, trains on)
    scores: str | None = None  # the stage whose reference losses it reads
    charges: tuple[str, ...] = ()  # one-off stages charged to an arm seed


def pretrains_base(cfg: ExperimentConfig) -> bool:
    return cfg.base in PRESETS and not cfg.from_scratch


def shares_reference_runs(cfg: ExperimentConfig) -> bool:
    """The scoring references are the reference arm's runs (whether or not that arm runs):
    both are the base fine-tuned on the curated data for the arms' budget."""
    return cfg.ref_tokens in (0, cfg.train_tokens)


def reference_name(cfg: ExperimentConfig, source: str, seed: int) -> str:
    if source in ("proxy", "self"):
        return f"{source}-ref-seed{seed}"
    return f"reference-seed{seed}" if shares_reference_runs(cfg) else f"ref-seed{seed}"


def plan(cfg: ExperimentConfig, inputs: dict) -> dict[str, Stage]:
    """name -> Stage, in the order they run. ``inputs`` is the data stage's file hashes
    (rho.experiment.prepare.inputs_key)."""
    stages: dict[str, Stage] = {}

    def add(name, kind, stage, after=(), extra_reads=(), links=None, **identity) -> Stage:
        """A stage keyed by the fields ``stage`` declares, what it reads and its identity;
        ``links`` (windows, scores, charges) name stages already in ``after`` or charged."""
        if name in stages:
            return stages[name]
        fields = cfg.fields_read(stage, extra_reads)
        if stage == "data":  # files count by content (``inputs``), not by where they lie
            fields = {k: v for k, v in fields.items() if k not in FILE_FIELDS}
        key = stage_key(
            stage=kind,
            fields=fields,
            after=[stages[a].key for a in after],
            **{k: v for k, v in identity.items() if k != "cached"},
        )
        kept = {k: v for k, v in identity.items() if k in Stage.__dataclass_fields__}
        stages[name] = Stage(name, kind, key, tuple(after), **kept, **(links or {}))
        return stages[name]

    add("data", "data", "data", inputs=inputs)
    arms = cfg.arm_list
    if any(ARMS[a].data == "mix" for a in arms):
        add("mix", "mix", "mix", after=("data",))
    if pretrains_base(cfg):
        key = add("base", "base", "base", after=("data",), cached=True).key
        stages["base"] = Stage(f"base-{key}", "base", key, ("data",), cached=True)
    else:  # a given model (by name) or a fresh preset: nothing to pretrain
        add("base", "base", "base", base=cfg.base)
    base = ("data", "base")
    if any(ARMS[a].proxy for a in arms):  # the proxy arms' references start from their own base
        if cfg.reference_base in PRESETS and not cfg.from_scratch:
            key = add("proxy", "proxy", "proxy", after=("data",)).key
            stages["proxy"] = Stage(f"base-{key}", "proxy", key, ("data",), cached=True)
        else:  # a given model or a fresh preset
            key = stage_key(stage="proxy", base=cfg.reference_base, scratch=cfg.from_scratch)
            stages["proxy"] = Stage("proxy", "proxy", key)

    def reference(source: str, r: int) -> str:
        """A scoring reference: the base (or the proxy) fine-tuned on the curated data, or the
        base trained on a seeded sample of the corpus (self)."""
        start = ("data", "proxy") if source == "proxy" else base
        if source == "self":
            sample = add(f"self-sample-seed{r}", "sample", "sample", after=("data",), seed=r)
            start = (*base, sample.name)
        name = reference_name(cfg, source, r)
        fields = "self-reference" if source == "self" else "reference"
        return add(name, "reference", fields, after=start, seed=r, source=source).name

    if "reference" in arms and shares_reference_runs(cfg):
        for r in cfg.reference_seeds_used:
            reference("base", r)

    def draw(arm: Arm, seed: int) -> str:
        source = "mix" if arm.data == "mix" else "corpus"
        pool = arm.pool(cfg)
        name = f"draw{'-mix' if source == 'mix' else ''}-x{pool:.3g}-seed{seed}"
        after = ("data", "mix") if source == "mix" else ("data",)
        return add(name, "draw", "draw", after=after, seed=seed, pool=pool, source=source).name

    def score(ref: str, windows: str) -> str:
        source = stages[ref].source
        who = {"base": "ref", "proxy": "proxy", "self": "self"}[source]
        name = f"score-{who}{stages[ref].seed}-{windows}"
        # A self-reference's scores hold its next-token entropy too (slm-entropy reads it).
        return add(name, "score", "score", after=(ref, windows), entropy=source == "self",
                   links={"windows": windows}).name  # fmt: skip

    def pipeline(arm: Arm, seed: int) -> tuple[str, str | None, list[str]]:
        """(the stage of the windows it trains on, of their scores, what it is charged)."""
        windows = draw(arm, seed)
        scores, charges = None, []
        ref = None
        if arm.uses_reference:
            ref = reference(arm.reference, cfg.reference_for(seed))
            charges += [ref] + (["proxy"] if arm.proxy and stages["proxy"].cached else [])
        if arm.data == "pruned":
            scored = score(ref, windows)
            windows = add(f"prune-{scored.removeprefix('score-')}", "prune", "prune",
                          after=(scored,), links={"windows": scored}).name  # fmt: skip
            scores = windows  # the kept windows' losses carry over
            charges += [scored, windows]
        elif arm.data == "proto":
            embedded = add(f"embed-{windows}", "embed", "embed", after=(*base, windows),
                           links={"windows": windows}).name  # fmt: skip
            windows = add(f"proto-{windows}", "proto", "proto", after=(embedded, windows),
                          links={"windows": windows}).name  # fmt: skip
            charges += [embedded, windows]
        if ref is not None and scores is None:
            scores = score(ref, windows)
            charges.append(scores)
        return windows, scores, charges

    first = cfg.seeds[0]
    for name in arms:
        arm = ARMS[name]
        if arm.data == "curated":
            if shares_reference_runs(cfg):
                continue  # the reference arm is the reference runs themselves
            for seed in cfg.seeds_of(name):
                add(f"{name}-seed{seed}", "arm", "arms", after=base, extra_reads=arm.reads,
                    arm=name, seed=seed)  # fmt: skip
            continue
        for seed in cfg.seeds_of(name):
            windows, scores, charges = pipeline(arm, seed)
            after = [*base, windows] + ([scores] if scores and scores != windows else [])
            add(
                f"{name}-seed{seed}",
                "arm",
                "arms",
                after=after,
                extra_reads=arm.reads,
                links={"windows": windows, "scores": scores, "charges": tuple(charges)},
                arm=name,
                seed=seed,
                reference_seed=cfg.reference_for(seed) if arm.uses_reference else None,
                save=seed == first and name in ("clm", "slm"),  # checkpoints for the analyses
            )

    if cfg.analyze:
        after = [f"clm-seed{first}"]
        if "slm" in arms:
            after += [f"slm-seed{first}", stages[f"slm-seed{first}"].scores]
        add("analyses", "analyses", "analyses", after=after)
    return stages
