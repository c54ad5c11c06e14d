"""`rho experiment --plan`: the plan's stages with what each reads, whether it is recorded, its
FLOPs (rho.experiment.cost) and seconds (recorded, or estimated from a probe of this device:
rho.experiment.probe), printed and written to OUT/plan.json. Nothing is trained or written
besides plan.json."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from rho.experiment.cost import Costing, Figure
from rho.experiment.plan import Kind, Stage
from rho.experiment.probe import probe
from rho.experiment.records.plan import PlannedStage, PlanRecord, Probe

PLAN_FILE = "plan.json"
LEFT_OUT = "evaluations, data preparation, pruning and the analyses add to it"


def status(runner, key: str, stage: Stage) -> str:
    """recorded (here), cached (the shared cache), given (a model: nothing to run), to run."""
    if key not in runner.results:
        return "to run"
    if stage.kind in (Kind.BASE, Kind.PROXY) and not stage.cached:
        return "given"
    return "cached" if stage.cached else "recorded"


def estimate(figure: Figure, found: Probe | None) -> float | None:
    """A stage's seconds from the probe of its model: its tokens trained and forwarded."""
    if found is None or figure.model not in found.models or figure.tokens is None:
        return None
    speed = found.models[figure.model]
    trained = figure.tokens * speed.train_token_seconds
    return trained + (figure.forward_tokens or 0) * speed.forward_token_seconds


def planned(runner, key: str, stage: Stage, figure: Figure, found: Probe | None):
    state = status(runner, key, stage)
    seconds = runner.stages.seconds.get(key) if state != "to run" else estimate(figure, found)
    return PlannedStage(
        name=key,
        kind=stage.kind.value,
        arm=stage.arm,
        seed=stage.seed,
        after=list(stage.after),
        status=state,
        model=figure.model,
        n_params=figure.n_params,
        train_tokens=figure.tokens,
        forward_tokens=figure.forward_tokens,
        flops=figure.flops,
        exact=figure.exact,
        seconds=None if seconds is None else round(seconds, 3),
        note="; ".join(figure.notes),
    )


def makespan(stages: list[PlannedStage], workers: int) -> float:
    """The stages to run, each on the first free worker once the stages it reads are done,
    in the plan's order (as the pool hands them out)."""
    free, done = [0.0] * workers, {}
    for stage in stages:
        ready = max((done.get(name, 0.0) for name in stage.after), default=0.0)
        seconds = stage.seconds or 0.0 if stage.status == "to run" else 0.0
        slot = min(range(workers), key=free.__getitem__)
        done[stage.name] = free[slot] = max(free[slot], ready) + seconds
    return max(done.values(), default=0.0)


def write_plan(runner, title: str, engine) -> PlanRecord:
    """Cost ``runner``'s plan (rho.experiment.runner.Runner), print it and write plan.json."""
    runner.load_recorded()
    costing = Costing(runner)
    figures = {key: costing.figure(stage) for key, stage in runner.plan.items()}
    todo = {key for key, stage in runner.plan.items() if status(runner, key, stage) == "to run"}
    models = {figures[key].model for key in todo if figures[key].tokens} - {None}
    cfg, found = runner.cfg, None
    if models:
        rows = cfg.batch_size // cfg.training.get("gradient_accumulation_steps", 1)
        configs = {model: costing.architecture(model) for model in sorted(models)}
        bf16 = bool(cfg.training.get("bf16", False))
        # a worker's share of the cores, or this process's threads when the stages run here
        threads = torch.get_num_threads() if engine.in_process else engine.threads()
        found = probe(configs, rows, cfg.seq_len, bf16, threads)
    stages = [planned(runner, k, s, figures[k], found) for k, s in runner.plan.items()]
    workers = engine.worker_count()
    record = PlanRecord(
        config=cfg,
        stages=stages,
        flops_total=sum(s.flops for s in stages if s.flops is not None),
        flops_to_run=sum(s.flops for s in stages if s.flops is not None and s.name in todo),
        exact=all(s.exact for s in stages),
        unknown=[s.name for s in stages if s.flops is None],
        probe=found,
        workers=workers,
        wall_seconds=None if found is None else round(makespan(stages, workers), 1),
    )
    record.write(runner.out / PLAN_FILE)
    show(record, title, runner.out)
    return record


def flops_text(stage: PlannedStage) -> str:
    if stage.flops is None:
        return "after data"
    return ("" if stage.exact else "≤") + f"{stage.flops:.3g}"


def show(record: PlanRecord, title: str, out) -> None:
    todo = [s for s in record.stages if s.status == "to run"]
    tqdm.write(
        f"== {title} --plan for {out}: {len(record.stages)} stages, {len(todo)} to run; "
        "nothing is trained =="
    )
    tqdm.write(f"  {'stage':<30} {'kind':<9} {'arm':<13} {'seed':>4}  {'status':<8} "
               f"{'FLOPs':>10} {'seconds':>8}  reads")  # fmt: skip
    for s in record.stages:
        seconds = "-" if s.seconds is None else f"{s.seconds:.1f}"
        tqdm.write(
            f"  {s.name:<30} {s.kind:<9} {s.arm or '-':<13} {'-' if s.seed is None else s.seed:>4}"
            f"  {s.status:<8} {flops_text(s):>10} {seconds:>8}  {', '.join(s.after) or '-'}"
        )
    n = len(record.unknown)
    unknown = f"; {n} stage{'s' if n > 1 else ''} after the data stage" if n else ""
    tqdm.write(
        f"  FLOPs: {record.flops_total:.3g} in all, {record.flops_to_run:.3g} to run{unknown} "
        "(6·N per token trained, 2·N per token forwarded: what the frontier charges)"
    )
    notes = sorted({n for s in record.stages for n in s.note.split("; ") if n})
    if notes:
        tqdm.write(f"  ≤ / unknown: {'; '.join(notes)}")
    if record.probe is not None:
        p, workers = record.probe, "worker" if record.workers == 1 else "workers"
        tqdm.write(
            f"  wall time ≈ {record.wall_seconds / 60:.1f} min on {record.workers} {workers}: an "
            f"estimate from a probe on {p.device} ({p.steps} training and forward steps of "
            f"{p.batch_size} × {p.seq_len} tokens per model, after a warm-up); training, "
            f"candidate, scoring and embedding steps only ({LEFT_OUT})"
        )
    tqdm.write(f"  plan: {out / PLAN_FILE}")
