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
A laddered arm (--budgets, --ladder_arms) has one more stage per seed and fraction below 1
(``clm-b0.25-seed0``: the fraction is in its identity), on the same windows, scores and charges.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum

from rho.experiment import environment
from rho.experiment.arms import ARMS, Arm
from rho.experiment.settings import FILE_FIELDS, ExperimentConfig
from rho.models import PRESETS


def stage_key(**parts) -> str:
    """A stable hash of JSON-able settings (paths as strings, keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Kind(StrEnum):
    """What a stage does (its value is hashed into its key, so it never changes)."""

    DATA = "data"
    MIX = "mix"
    BASE = "base"
    PROXY = "proxy"
    SAMPLE = "sample"
    REFERENCE = "reference"
    DRAW = "draw"
    SCORE = "score"
    PRUNE = "prune"
    EMBED = "embed"
    PROTO = "proto"
    ARM = "arm"
    ANALYSES = "analyses"


@dataclass(frozen=True)
class Stage:
    name: str
    kind: Kind
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
    budget: float | None = None  # a ladder run's fraction of the arms' budget (None: all of it)


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


def arm_stage(arm: str, seed: int, budget: float = 1.0) -> str:
    """An arm seed's training stage; below budget 1, its run on the ladder (--budgets)."""
    return f"{arm}-seed{seed}" if budget == 1.0 else f"{arm}-b{budget!r}-seed{seed}"


BASE = ("data", "base")  # what every stage that starts from the base reads


def plan(cfg: ExperimentConfig, inputs: dict) -> dict[str, Stage]:
    """name -> Stage, in the order they run. ``inputs`` is the data stage's file hashes
    (rho.experiment.prepare.inputs_key)."""
    planner = Planner(cfg)
    planner.add("data", Kind.DATA, "data", inputs=inputs)
    arms = [ARMS[name] for name in cfg.arm_list]
    if any(arm.data == "mix" for arm in arms):
        planner.add("mix", Kind.MIX, "mix", after=("data",))
    planner.base()
    if any(arm.proxy for arm in arms):  # the proxy arms' references start from their own base
        planner.proxy()
    if "reference" in cfg.arm_list and shares_reference_runs(cfg):
        for r in cfg.reference_seeds_used:
            planner.reference("base", r)
    for arm in arms:
        planner.arm(arm)
    if cfg.analyze:
        planner.analyses()
    return planner.stages


class Planner:
    """Builds the plan: each method adds one kind of stage (after those it reads) to
    ``stages``, in the order they run, and returns its name."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.stages: dict[str, Stage] = {}

    def add(self, name, kind, fields_of, after=(), extra_reads=(), links=None, **identity) -> str:
        """A stage keyed by the fields ``fields_of`` declares (rho.experiment.settings), what it
        reads and its identity; ``links`` (windows, scores, charges) name stages already in
        ``after`` or charged. A stage already planned is reused."""
        if name in self.stages:
            return name
        fields = self.cfg.fields_read(fields_of, extra_reads)
        if fields_of == "data":  # files count by content (``inputs``), not by where they lie
            fields = {k: v for k, v in fields.items() if k not in FILE_FIELDS}
        key = stage_key(
            stage=kind,
            fields=fields,
            after=[self.stages[a].key for a in after],
            **{k: v for k, v in identity.items() if k != "cached"},
        )
        kept = {k: v for k, v in identity.items() if k in Stage.__dataclass_fields__}
        self.stages[name] = Stage(name, kind, key, tuple(after), **kept, **(links or {}))
        return name

    def base(self) -> None:
        """A preset pretrained on --base_data (cached across run directories by its key), or a
        given model or a fresh preset: nothing to pretrain."""
        if pretrains_base(self.cfg):
            self.cache(self.add("base", Kind.BASE, "base", after=("data",), cached=True))
        else:
            self.add("base", Kind.BASE, "base", base=self.cfg.base)

    def proxy(self) -> None:
        """The proxy references' smaller base, pretrained (and cached) like the base."""
        cfg = self.cfg
        if cfg.reference_base in PRESETS and not cfg.from_scratch:
            self.cache(self.add("proxy", Kind.PROXY, "proxy", after=("data",)))
        else:  # a given model or a fresh preset
            key = stage_key(stage="proxy", base=cfg.reference_base, scratch=cfg.from_scratch)
            self.stages["proxy"] = Stage("proxy", Kind.PROXY, key)

    def cache(self, name: str) -> None:
        """Make a pretrained stage a shared cache entry, named by its key: other run
        directories with the same key find it. The key holds what changes the model's bytes
        beyond its settings and data (torch's and transformers' versions, the device type), so
        a model pretrained under others is pretrained again, never reused."""
        stage = self.stages[name]
        key = stage_key(settings=stage.key, built_with=environment.build_key())
        self.stages[name] = Stage(f"base-{key}", stage.kind, key, stage.after, cached=True)

    def reference(self, source: str, r: int) -> str:
        """A scoring reference: the base (or the proxy) fine-tuned on the curated data, or the
        base trained on a seeded sample of the corpus (self)."""
        start = ("data", "proxy") if source == "proxy" else BASE
        if source == "self":
            sample = self.add(
                f"self-sample-seed{r}", Kind.SAMPLE, "sample", after=("data",), seed=r
            )
            start = (*BASE, sample)
        fields = "self-reference" if source == "self" else "reference"
        return self.add(
            reference_name(self.cfg, source, r),
            Kind.REFERENCE,
            fields,
            after=start,
            seed=r,
            source=source,
        )

    def draw(self, arm: Arm, seed: int) -> str:
        source = "mix" if arm.data == "mix" else "corpus"
        pool = arm.pool(self.cfg)
        name = f"draw{'-mix' if source == 'mix' else ''}-x{pool:.3g}-seed{seed}"
        after = ("data", "mix") if source == "mix" else ("data",)
        return self.add(name, Kind.DRAW, "draw", after=after, seed=seed, pool=pool, source=source)

    def score(self, ref: str, windows: str) -> str:
        source = self.stages[ref].source
        who = {"base": "ref", "proxy": "proxy", "self": "self"}[source]
        name = f"score-{who}{self.stages[ref].seed}-{windows}"
        # A self-reference's scores hold its next-token entropy too (slm-entropy reads it).
        return self.add(
            name,
            Kind.SCORE,
            "score",
            after=(ref, windows),
            entropy=source == "self",
            links={"windows": windows},
        )

    def pruned(self, arm: Arm, ref: str | None, windows: str) -> tuple[str, str | None, list]:
        """Offline pruning of the drawn ``windows``: by reference loss or by prototypes. Returns
        the stage of the windows kept, of their scores (if pruned by them), the stages charged."""
        if arm.data == "pruned":
            scored = self.score(ref, windows)
            kept = self.add(
                f"prune-{scored.removeprefix('score-')}",
                Kind.PRUNE,
                "prune",
                after=(scored,),
                links={"windows": scored},
            )
            return kept, kept, [scored, kept]  # the kept windows' losses carry over
        embedded = self.add(
            f"embed-{windows}",
            Kind.EMBED,
            "embed",
            after=(*BASE, windows),
            links={"windows": windows},
        )
        kept = self.add(
            f"proto-{windows}",
            Kind.PROTO,
            "proto",
            after=(embedded, windows),
            links={"windows": windows},
        )
        return kept, None, [embedded, kept]

    def pipeline(self, arm: Arm, seed: int) -> tuple[str, str | None, list[str]]:
        """(the stage of the windows an arm seed trains on, of their scores, what it is
        charged)."""
        windows, scores, charges, ref = self.draw(arm, seed), None, [], None
        if arm.uses_reference:
            ref = self.reference(arm.reference, self.cfg.reference_for(seed))
            charges += [ref] + (["proxy"] if arm.proxy and self.stages["proxy"].cached else [])
        if arm.data in ("pruned", "proto"):
            windows, scores, pruning = self.pruned(arm, ref, windows)
            charges += pruning
        if ref is not None and scores is None:
            scores = self.score(ref, windows)
            charges.append(scores)
        return windows, scores, charges

    def arm(self, arm: Arm) -> None:
        """Every seed of an arm, trained from the base on its windows (the reference arm, when
        its runs are the scoring references, is those runs)."""
        cfg, first = self.cfg, self.cfg.seeds[0]
        if arm.data == "curated" and shares_reference_runs(cfg):
            return
        for seed in cfg.seeds_of(arm.name):
            name = arm_stage(arm.name, seed)
            if arm.data == "curated":
                self.add(
                    name,
                    Kind.ARM,
                    "arms",
                    after=BASE,
                    extra_reads=arm.reads,
                    arm=arm.name,
                    seed=seed,
                )
                continue
            windows, scores, charges = self.pipeline(arm, seed)
            after = [*BASE, windows] + ([scores] if scores and scores != windows else [])
            # the ladder's runs train on the same windows and scores, for their share of steps
            for budget in [1.0, *cfg.laddered(arm.name)]:
                self.add(
                    arm_stage(arm.name, seed, budget),
                    Kind.ARM,
                    "arms",
                    after=after,
                    extra_reads=arm.reads,
                    links={"windows": windows, "scores": scores, "charges": tuple(charges)},
                    arm=arm.name,
                    seed=seed,
                    reference_seed=cfg.reference_for(seed) if arm.uses_reference else None,
                    # checkpoints: the analyses'
                    save=seed == first and arm.name in ("clm", "slm") and budget == 1.0,
                    **({} if budget == 1.0 else {"budget": budget}),
                )

    def analyses(self) -> None:
        first = self.cfg.seeds[0]
        after = [f"clm-seed{first}"]
        if "slm" in self.cfg.arm_list:
            after += [f"slm-seed{first}", self.stages[f"slm-seed{first}"].scores]
        self.add("analyses", Kind.ANALYSES, "analyses", after=after)
