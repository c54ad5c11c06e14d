"""`rho experiment --executor ray`: the plan's stages as Ray tasks (``pip install 'rho[ray]'``).

Ray is the distributed engine: rho hands it every ready stage (a stage whose inputs are
recorded) as a task asking for its CPUs (``--stage_threads``) and, where the cluster has GPUs,
one GPU, and waits on the tasks (``ray.wait``). A task runs its stage in a Ray worker process
as a local worker does (rho.experiment.worker.run_one: its log in ``OUT/logs/STAGE.log``, its
record written last), so every node must have rho installed and share the run directory. A
task is not retried: a stage whose worker died fails, and the next run redoes it.
"""

from __future__ import annotations

from pathlib import Path

from rho.errors import UserError
from rho.experiment.console import Console
from rho.experiment.engine import (
    CONFIG_FILE,
    LOGS,
    REFRESH_S,
    EngineOptions,
    Job,
    Schedule,
    prepare,
)

_runners: dict[str, object] = {}  # a Ray worker process's Runner per run directory


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'rho[ray]'") from None
    return ray


def run_stage(out: str, key: str, threads: int, plan: dict, nproc: int = 1) -> bool:
    """A Ray task: run stage ``key`` of the experiment in ``out`` in this Ray worker process
    (torch, transformers and the config loaded once per process; a training or scoring stage
    under torchrun as ``nproc`` processes on the task's GPUs when it is above 1). The driver's
    ``plan`` is the one run: a node whose torch or device differ would key the cached base
    otherwise."""
    import torch

    from rho.experiment.worker import run_one

    if out not in _runners:
        _runners[out] = runner_of(Path(out))
    runner = _runners[out]
    runner.plan = plan
    torch.set_num_threads(threads)
    return run_one(runner, key, Path(out) / LOGS / f"{key}.log", nproc)


def runner_of(out: Path):
    """The Runner a worker builds: the config the driver wrote into ``out``."""
    from rho.experiment.runner import Runner, quiet_transformers
    from rho.experiment.settings import ExperimentConfig
    from rho.io.files import read_json

    quiet_transformers()
    return Runner(ExperimentConfig(**read_json(out / CONFIG_FILE)), out)


def connect(ray, engine: EngineOptions) -> None:
    """Join the cluster at --ray_address, or start a local Ray with --workers x
    --stage_threads CPUs (and this machine's GPUs)."""
    options = dict(log_to_driver=False, configure_logging=False)
    if engine.ray_address:
        ray.init(address=engine.ray_address, **options)
    else:
        cpus = engine.worker_count() * engine.threads()
        ray.init(num_cpus=cpus, include_dashboard=False, **options)


def run_ray(runners: list, engine: EngineOptions) -> None:
    """Run the ``runners``' plans as Ray tasks until every stage is recorded or one fails (the
    tasks already running then finish); Ctrl-C cancels them."""
    ray = import_ray()
    console = Console(prepare(runners))
    connect(ray, engine)
    try:
        hand_over(ray, runners, engine, console)
    finally:
        console.close()
        ray.shutdown()


def hand_over(ray, runners: list, engine: EngineOptions, console: Console) -> None:
    """Each ready stage to Ray as a task; each ended task's record taken."""
    # a cluster's nodes are not this machine: its share of our cores means nothing there
    threads = (engine.stage_threads or 1) if engine.ray_address else engine.threads()
    cluster = ray.cluster_resources()
    nproc = engine.nproc_per_stage
    for runner in runners:
        engine.check_batch(runner.cfg)
    gpus = nproc if cluster.get("GPU", 0) else 0
    task = ray.remote(run_stage).options(num_cpus=threads, num_gpus=gpus, max_retries=0)
    console.line(
        f"  Ray: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; each stage "
        f"{threads} CPUs, {gpus} GPUs; logs in {console.logs}"
    )
    schedule, pending = Schedule(runners, console), {}
    plans = {runner.out: ray.put(runner.plan) for runner in runners}
    try:
        while True:
            while (job := schedule.next("ray")) is not None:
                out = job.runner.out
                pending[task.remote(str(out), job.key, threads, plans[out], nproc)] = job
            if not pending:
                break
            ended, _ = ray.wait(list(pending), num_returns=1, timeout=REFRESH_S)
            for ref in ended:
                end(ray, schedule, pending.pop(ref), ref)
            console.show(schedule.names())
    except BaseException:  # Ctrl-C above all: no task outlives the run
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    schedule.check()


def end(ray, schedule: Schedule, job: Job, ref) -> None:
    try:
        ok = ray.get(ref)
    except ray.exceptions.RayError:  # its worker died (the log has what it wrote)
        schedule.end(job, False, "stopped: its Ray worker died")
        return
    schedule.end(job, ok)
