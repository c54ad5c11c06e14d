"""How `rho experiment` runs its plan: in this process, one stage after another (one worker),
by a pool of worker processes that run every stage whose inputs are recorded, at once, or as
Ray tasks (rho.experiment.ray_executor).

A worker (rho.experiment.worker) is a long-lived process, pinned to its devices
(``CUDA_VISIBLE_DEVICES``) or given its share of the cores as threads; it is handed one stage at
a time and writes the stage's log to ``OUT/logs/STAGE.log``; with ``--nproc_per_stage K`` it
runs each training and scoring stage under torchrun, as K processes (DDP) on its own K GPUs. A
stage's record is written last (rho.experiment.stages), so what a killed or failed worker leaves
is redone by the next run, and a stage's outputs do not depend on which worker ran it. A failed
stage stops the launches; the stages already running finish and keep their records. Ctrl-C
stops every worker.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rho.errors import UserError
from rho.experiment.console import Console
from rho.io.files import write_json_atomic
from rho.training.options import option

CONFIG_FILE = "experiment.json"  # the config the workers read
LOGS = "logs"
NPROC_ENV = "RHO_NPROC_PER_STAGE"  # a worker's processes per training and scoring stage
CPU_WORKERS = 1  # --workers 0 without a GPU (rho demo sets 2: its measurement, in the README)
REFRESH_S = 1.0  # how often the live lines re-read the stage logs
EXECUTORS = ("local", "ray")


@dataclass
class EngineOptions:
    """Where and how many stages run at once; none of it changes a stage's result."""

    workers: int = option(
        default=0,
        stages=(),
        help=f"stages run at once, each in its own worker process (0: one per visible GPU; on "
        f"a CPU {CPU_WORKERS})",
    )
    stage_threads: int = option(
        default=0,
        stages=(),
        help="CPU threads per stage (0: the cores shared among the workers)",
    )
    executor: str = option(
        default="local",
        stages=(),
        choices=EXECUTORS,
        help="local: this machine's worker processes; ray: Ray tasks on a cluster whose nodes "
        "share the run directory (pip install 'rho[ray]')",
    )
    ray_address: str | None = option(
        default=None,
        stages=(),
        help="the Ray cluster to use (ray.init's address; default: a local Ray started for the "
        "run, with --workers x --stage_threads CPUs)",
    )
    plan: bool = option(
        default=False,
        stages=(),
        help="print the stages, their FLOPs and an estimated wall time (from a probe of a few "
        "steps on this device), write OUT/plan.json, and train nothing",
    )
    nproc_per_stage: int = option(
        default=1,
        stages=(),
        help="processes per training and scoring stage, under torchrun (DDP): on a GPU machine "
        "each its own GPU (workers × this ≤ GPUs); on a CPU they share the stage's threads",
    )

    def worker_count(self) -> int:
        if self.workers < 0:
            raise UserError(f"--workers must be at least 0, got {self.workers}")
        if self.nproc_per_stage < 1:
            raise UserError(f"--nproc_per_stage must be at least 1, got {self.nproc_per_stage}")
        gpus = len(visible_devices())
        count = self.workers or (gpus // self.nproc_per_stage if gpus else CPU_WORKERS)
        count = max(1, count)
        check_devices(count, self.nproc_per_stage, gpus)
        return count

    def threads(self) -> int:
        if self.stage_threads < 0:
            raise UserError(f"--stage_threads must be at least 0, got {self.stage_threads}")
        return self.stage_threads or max(1, (os.cpu_count() or 1) // self.worker_count())

    @property
    def in_process(self) -> bool:
        """One local worker and nothing else asked for: run the stages here, as one process."""
        return (
            self.executor == "local"
            and self.worker_count() == 1
            and not self.stage_threads
            and self.nproc_per_stage == 1
        )

    def check_batch(self, cfg) -> None:
        """A step's ``--batch_size`` windows split evenly over the processes' micro-batches."""
        nproc = self.nproc_per_stage
        accumulation = cfg.training.get("gradient_accumulation_steps", 1)
        if cfg.batch_size % (nproc * accumulation):
            raise UserError(
                f"--nproc_per_stage {nproc}: --batch_size {cfg.batch_size} must be a multiple "
                f"of the processes × gradient_accumulation_steps ({nproc} × {accumulation})"
            )


def visible_devices() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (none on a CPU)."""
    if not torch.cuda.is_available():
        return []
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named:
        return named.split(",")[: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def check_devices(workers: int, nproc: int, devices: int) -> None:
    """On a GPU machine every process of every worker has a GPU of its own (a CPU has none to
    count: the processes share its cores)."""
    if devices and workers * nproc > devices:
        raise UserError(
            f"--workers {workers} × --nproc_per_stage {nproc} = {workers * nproc} processes, "
            f"but {devices} GPUs are visible: each process needs its own"
        )


def execute(runners: list, engine: EngineOptions) -> None:
    """Run every stage of the ``runners``' plans (one run's, or a ladder's sizes') not yet
    recorded, side by side, by the workers or Ray (the first run's ready stages first)."""
    if engine.executor == "ray":
        from rho.experiment.ray_executor import run_ray

        run_ray(runners, engine)
    else:
        run_pool(runners, engine)


def prepare(runners: list) -> Path:
    """What every worker reads: each run's config file; and its logs' directory, and the stages
    recorded so far. Returns the first run's logs' directory (the workers' own logs)."""
    for runner in runners:
        write_json_atomic(runner.out / CONFIG_FILE, runner.cfg.as_dict())
        (runner.out / LOGS).mkdir(exist_ok=True)
        runner.load_recorded()
        if runner.results:
            tqdm.write(f"  {runner.out}: {len(runner.results)} of {len(runner.plan)} stages done "
                       "before (skipped)")  # fmt: skip
    return runners[0].out / LOGS


@dataclass(frozen=True, eq=False)
class Job:
    """One stage of one run: its name on the console (RUN/STAGE when several runs share the
    workers), its log, and the line a worker is handed (``OUT<tab>STAGE``)."""

    runner: object
    key: str
    name: str

    @property
    def log(self) -> Path:
        return self.runner.out / LOGS / f"{self.key}.log"

    @property
    def line(self) -> str:
        return f"{self.runner.out}\t{self.key}"


class Schedule:
    """Which stages are left, which run (since when) and which failed; the next ready stage in
    the plans' order, none once one failed."""

    def __init__(self, runners: list, console: Console):
        self.console, self.logs = console, runners[0].out / LOGS
        named = len(runners) > 1
        self.todo = [
            Job(runner, key, f"{runner.out.name}/{key}" if named else key)
            for runner in runners
            for key in runner.plan
            if key not in runner.results
        ]
        self.running: dict[Job, float] = {}
        self.failed: dict[Job, str] = {}  # stage -> why

    def next(self, where: str = "") -> Job | None:
        if self.failed:
            return None
        for job in self.todo:
            stage, results = job.runner.plan[job.key], job.runner.results
            if job not in self.running and all(a in results for a in stage.after):
                self.running[job] = time.perf_counter()
                job.log.with_suffix(".error").unlink(missing_ok=True)  # a rerun's own
                self.console.started(job.name, where, job.log)
                return job
        return None

    def end(self, job: Job, ok: bool, why: str = "failed") -> None:
        """Take the stage's record if it ``ok``-ended with one; else it failed for ``why``."""
        seconds = time.perf_counter() - self.running.pop(job)
        found = job.runner.recorded(job.key) if ok else None
        if found is None:
            self.failed[job] = why
            self.console.line(f"  {job.name}: {why} after {seconds:.0f} s")
            return
        job.runner.results[job.key] = found
        self.todo.remove(job)
        self.console.line(f"  {job.name}: done in {seconds:.0f} s")

    def names(self) -> dict[str, float]:
        """The running stages by their console names (for the live lines)."""
        return {job.name: started for job, started in self.running.items()}

    def check(self) -> None:
        """A one-line error for the first stage that failed, or for stages never run."""
        for job, why in self.failed.items():
            said = job.log.with_suffix(".error")  # a UserError the stage raised: the user's to fix
            if said.is_file():
                raise UserError(f"{said.read_text(encoding='utf-8')} (stage {job.name})")
            raise UserError(f"stage {job.name} {why}: see its log, {job.log}")
        if self.todo:
            raise UserError(
                f"every worker ended before stage {self.todo[0].name} could run: see the "
                f"workers' logs, {self.logs / 'worker-*.log'}"
            )


class Worker:
    """One worker process, the stage it is running, and its answers read so far."""

    def __init__(self, logs: Path, slot: int, threads: int, devices: list[str], nproc: int = 1):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env["RHO_STAGE_THREADS"] = str(threads)
        env[NPROC_ENV] = str(nproc)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        self.slot, self.job, self.alive, self.pending = slot, None, True, b""
        with open(logs / f"worker-{slot}.log", "ab") as log:  # its own output, not a stage's
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rho.experiment.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the pool, which stops its workers
            )

    def start(self, job: Job) -> None:
        self.job = job
        try:
            self.process.stdin.write(job.line.encode() + b"\n")
            self.process.stdin.flush()
        except OSError:  # it has died: its stage fails when its pipe reads as closed
            pass

    def answers(self) -> list[str] | None:
        """The complete lines it has written (read without blocking: its pipe is readable);
        None once its pipe is closed: the process has ended."""
        chunk = os.read(self.process.stdout.fileno(), 65536)
        if not chunk:
            self.alive = False
            return None
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        return [line.decode(errors="replace").strip() for line in lines]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def close(self) -> None:
        """Wait for it to exit: idle, its stdin closed ends its loop; stopped, SIGTERM."""
        try:
            self.process.stdin.close()
        except OSError:  # it had died: nothing reads its stdin
            pass
        self.process.wait()
        self.process.stdout.close()


def devices_of(slot: int, nproc: int, visible: list[str]) -> list[str]:
    """A worker's own GPUs among the ``visible`` ones: one per process of its stages (none on a
    CPU)."""
    return visible[slot * nproc : (slot + 1) * nproc]


def run_pool(runners: list, engine: EngineOptions) -> None:
    """Run the ``runners``' plans by a pool of workers: each stage once every stage it reads is
    recorded, in the plans' order among those ready."""
    logs = prepare(runners)
    count, threads, nproc = engine.worker_count(), engine.threads(), engine.nproc_per_stage
    for runner in runners:
        engine.check_batch(runner.cfg)
    visible = visible_devices()
    console = Console(logs)
    each = f"{threads} threads" + (f", {nproc} processes per training stage" if nproc > 1 else "")
    console.line(f"  {count} workers, {each} each; logs in {logs}")
    workers: list[Worker] = []
    try:
        workers += [
            Worker(logs, slot, threads, devices_of(slot, nproc, visible), nproc)
            for slot in range(count)
        ]
        Pool(Schedule(runners, console), workers).run()
    except BaseException:  # Ctrl-C above all: no worker outlives the run
        for worker in workers:
            worker.stop()
        raise
    finally:
        console.close()
        for worker in workers:
            worker.close()


class Pool:
    """Hands ready stages to idle live workers until every stage is recorded or one fails;
    then waits for the stages still running."""

    def __init__(self, schedule: Schedule, workers: list[Worker]):
        self.schedule, self.workers = schedule, workers

    def run(self) -> None:
        while True:
            for worker in self.workers:
                if worker.alive and worker.job is None:
                    job = self.schedule.next(f"worker {worker.slot}")
                    if job is not None:
                        worker.start(job)
            if not any(w.job for w in self.workers):
                break
            self.wait()
        self.schedule.check()

    def wait(self) -> None:
        """Take what the workers answered within REFRESH_S (a closed pipe: a dead worker,
        whose stage failed), then redraw the live lines."""
        with selectors.DefaultSelector() as sel:
            for w in self.workers:
                if w.alive:
                    sel.register(w.process.stdout, selectors.EVENT_READ, w)
            ready = [key.data for key, _ in sel.select(REFRESH_S)]
        for worker in ready:
            self.take(worker)
        self.schedule.console.show(self.schedule.names())

    def take(self, worker: Worker) -> None:
        lines = worker.answers()
        if lines is None:
            if worker.job is not None:
                job, worker.job = worker.job, None
                self.schedule.end(job, False, "stopped: its worker died")
            return
        for line in lines:
            job = worker.job
            if job is not None and line in (f"ok {job.line}", f"failed {job.line}"):
                worker.job = None
                self.schedule.end(job, line.startswith("ok "))
