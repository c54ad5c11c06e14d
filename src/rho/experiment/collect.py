"""results.json from a finished plan: every arm seed's run (and its runs on the budget
ladder), the references, the draws, the pretrained base and proxy, what each arm is charged
before training, and the verdict (rho.experiment.facts), as one ``Results``."""

from __future__ import annotations

import numpy as np

from rho.experiment.environment import environment
from rho.experiment.facts import summarise
from rho.experiment.plan import Kind, Stage, arm_stage
from rho.experiment.records import (
    ArmRun,
    DataSummary,
    Draw,
    Embedded,
    Overhead,
    Pretrained,
    Record,
    Reference,
    Results,
    Scores,
    Trained,
)
from rho.experiment.settings import ExperimentConfig
from rho.training.meter import forward_flops

BASE_SEED = 0  # the base is one model, pretrained once
WHAT = {
    Kind.PROXY: "proxy pretraining",
    Kind.REFERENCE: "reference training",
    Kind.SCORE: "scoring the drawn windows",
    Kind.PRUNE: "pruning",
    Kind.EMBED: "embedding the drawn windows",
    Kind.PROTO: "clustering",
}


def only(plan: dict[str, Stage], results: dict[str, Record], kind: Kind) -> Record | None:
    """The record of the plan's one stage of ``kind`` (data, mix, analyses), once run."""
    names = [name for name, stage in plan.items() if stage.kind == kind]
    return results.get(names[0]) if names else None


def collect(
    cfg: ExperimentConfig, plan: dict[str, Stage], results: dict[str, Record], seconds: dict
) -> Results:
    """Every stage's record (``results``, by plan name) and seconds, as results.json."""
    data = only(plan, results, Kind.DATA)
    runs = {
        name: [arm_run(plan, results, arm_stage(name, seed)) for seed in cfg.seeds_of(name)]
        for name in cfg.arm_list
    }
    ladder = {
        name: [
            arm_run(plan, results, arm_stage(name, seed, budget))
            for budget in cfg.laddered(name)
            for seed in cfg.seeds_of(name)
        ]
        for name in cfg.arm_list
        if cfg.laddered(name)
    }
    overhead = overheads(plan, results, seconds, runs)
    of_kind = [(name, s) for name, s in plan.items() if s.kind in (Kind.REFERENCE, Kind.DRAW)]
    references = {n: reference(s, results[n]) for n, s in of_kind if s.kind == Kind.REFERENCE}
    return Results(
        config=cfg,
        data=DataSummary(
            axes=data.axes,
            decontamination=data.decontamination,
            tokens=data.tokens,
            base_overlap=data.base_overlap,
            mix=only(plan, results, Kind.MIX),
        ),
        stages={name: stage.key for name, stage in plan.items()},
        runs=runs,
        ladder=ladder,
        overhead=overhead,
        analyses=only(plan, results, Kind.ANALYSES),
        seconds={k: round(v, 1) for k, v in seconds.items()},
        references=references,
        draws={n: draw(s, results[n]) for n, s in of_kind if s.kind == Kind.DRAW},
        base=pretrained(plan, results, "base"),
        proxy=pretrained(plan, results, "proxy"),
        environment=environment(),
        summary=summarise(
            runs, data.axes, overhead, cfg, "base" in data.tokens, references, ladder
        ),
    )


def arm_run(plan: dict[str, Stage], results: dict[str, Record], name: str) -> ArmRun:
    """An arm seed's run, with the scoring reference it is charged for (its scores' model)."""
    stage = plan[name]
    scored_by = [key for key in stage.charges if plan[key].kind == Kind.REFERENCE]
    return ArmRun(
        **dict(results[stage.name]),
        seed=stage.seed,
        reference_seed=stage.reference_seed,
        reference=scored_by[0] if scored_by else None,
        windows=stage.windows,
        budget=1.0 if stage.budget is None else stage.budget,
    )


def reference(stage: Stage, run: Trained) -> Reference:
    return Reference(
        seed=stage.seed,
        source=stage.source,
        steps=run.steps,
        train_tokens=run.train_tokens,
        n_params=run.n_params,
        flops_train=run.flops_train,
        seconds_train=run.seconds_train,
        final=run.final,
    )


def draw(stage: Stage, drawn) -> Draw:
    return Draw(
        pool=stage.pool, source=stage.source, seed=stage.seed, windows=drawn.windows, of=drawn.of
    )


def pretrained(plan: dict[str, Stage], results: dict[str, Record], name: str) -> Pretrained | None:
    """The base or proxy as pretrained here (None: a given model or a fresh preset)."""
    if name not in plan or not plan[name].cached:
        return None
    run = results[name]
    return Pretrained(
        seed=BASE_SEED,
        steps=run.steps,
        warmup_steps=run.warmup_steps,
        train_tokens=run.train_tokens,
        flops_train=run.flops_train,
        n_params=run.n_params,
    )


def charge(result: Record, seconds: float) -> tuple[float, float, float]:
    """(FLOPs, tokens scored, seconds) one charged stage costs: a reference's or proxy's
    training (its training seconds: the evaluations along its run and of the final model are
    not charged, as an arm's training seconds leave out its own), 2·N_ref FLOPs per token
    scored, the embedding; pruning and clustering cost their stage's ``seconds`` only."""
    if isinstance(result, Trained):
        return result.flops_train, 0.0, result.seconds_train
    if isinstance(result, Scores):
        flops = float(forward_flops(result.n_params, result.scored_tokens))
        return flops, float(result.scored_tokens), seconds
    if isinstance(result, Embedded):
        return result.flops, 0.0, seconds
    return 0.0, 0.0, seconds


def overheads(
    plan: dict[str, Stage], results: dict[str, Record], seconds: dict, runs: dict
) -> dict[str, Overhead]:
    """What each arm is charged before its training: the plan's charges of each of its seeds
    (see ``charge``; ``seconds``: each stage's), the mean over its seeds. The base is shared
    by every arm and left out."""
    out = {}
    for name, seeds in runs.items():
        charges = [plan[arm_stage(name, run.seed)].charges for run in seeds]
        kinds = {plan[key].kind for keys in charges for key in keys}
        if not kinds:
            continue
        costs = [[charge(results[key], seconds.get(key, 0.0)) for key in keys] for keys in charges]
        flops, scored, spent = (np.mean([sum(c[i] for c in cs) for cs in costs]) for i in range(3))
        out[name] = Overhead(
            flops=float(flops),
            seconds=float(spent),
            what=" + ".join(WHAT[k] for k in WHAT if k in kinds),
            tokens_scored=float(scored) if Kind.SCORE in kinds else None,
        )
    return out
