"""How `rho experiment` runs its plan: in this process, one stage after another (one worker),
or by a pool of worker processes that run every stage whose inputs are recorded, at once.

A worker (rho.experiment.worker) is a long-lived process, pinned to its devices
(``CUDA_VISIBLE_DEVICES``) or given its share of the cores as threads; it is handed one stage at
a time and writes the stage's log to ``OUT/logs/STAGE.log``; with ``--nproc_per_stage K`` it
runs each training and scoring stage under torchrun, as K processes (DDP) on its own K GPUs. A
stage's record is written last (rho.experiment.stages), so what a killed or failed worker leaves
is redone by the next run, and a stage's outputs do not depend on which worker ran it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rho.errors import UserError
from rho.io.files import write_json_atomic
from rho.training.options import option

CONFIG_FILE = "experiment.json"  # the config the workers read
LOGS = "logs"
NPROC_ENV = "RHO_NPROC_PER_STAGE"  # a worker's processes per training and scoring stage


@dataclass
class EngineOptions:
    """Where and how many stages run at once; none of it changes a stage's result."""

    workers: int = option(
        default=0,
        stages=(),
        help="stages run at once, each in its own worker process (0: one per visible GPU; on "
        "a CPU one)",
    )
    stage_threads: int = option(
        default=0,
        stages=(),
        help="CPU threads per stage (0: the cores shared among the workers)",
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
        count = self.workers or max(1, len(visible_devices()) // self.nproc_per_stage)
        check_devices(count, self.nproc_per_stage, len(visible_devices()))
        return count

    def threads(self) -> int:
        return self.stage_threads or max(1, (os.cpu_count() or 1) // self.worker_count())

    @property
    def in_process(self) -> bool:
        """One worker and nothing else asked for: run the stages here, as one process."""
        return self.worker_count() == 1 and not self.stage_threads and self.nproc_per_stage == 1

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


class Worker:
    """One worker process and the stage it is running."""

    def __init__(self, out: Path, slot: int, threads: int, devices: list[str], nproc: int = 1):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env["RHO_STAGE_THREADS"] = str(threads)
        env[NPROC_ENV] = str(nproc)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        self.slot, self.stage, self.started = slot, None, 0.0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rho.experiment.worker", str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the pool, which stops its workers
        )

    def start(self, name: str) -> None:
        self.stage, self.started = name, time.perf_counter()
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()

    def result(self) -> bool:
        """Wait for the stage to end: True if it finished (its record written)."""
        line = self.process.stdout.readline()
        return line.strip() == f"ok {self.stage}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()


def devices_of(slot: int, nproc: int, visible: list[str]) -> list[str]:
    """A worker's own GPUs among the ``visible`` ones: one per process of its stages (none on a
    CPU)."""
    return visible[slot * nproc : (slot + 1) * nproc]


def run_pool(runner, engine: EngineOptions) -> None:
    """Run ``runner``'s plan by a pool of workers: each stage once every stage it reads is
    recorded, in the plan's order among those ready."""
    out = runner.out
    write_json_atomic(out / CONFIG_FILE, runner.cfg.as_dict())
    (out / LOGS).mkdir(exist_ok=True)
    count, threads, nproc = engine.worker_count(), engine.threads(), engine.nproc_per_stage
    engine.check_batch(runner.cfg)
    runner.load_recorded()
    visible = visible_devices()
    workers = [
        Worker(out, slot, threads, devices_of(slot, nproc, visible), nproc) for slot in range(count)
    ]
    each = f"{threads} threads" + (f", {nproc} processes per training stage" if nproc > 1 else "")
    tqdm.write(f"  {count} workers, {each} each; logs in {out / LOGS}")
    try:
        Pool(runner, workers).run()
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    finally:
        for worker in workers:
            worker.close()


class Pool:
    """Hands ready stages to idle workers until every stage is recorded or one fails."""

    def __init__(self, runner, workers: list[Worker]):
        self.runner, self.workers = runner, workers
        self.todo = [key for key in runner.plan if key not in runner.results]
        self.failed: list[str] = []

    def ready(self) -> str | None:
        running = {w.stage for w in self.workers if w.stage}
        for key in self.todo:
            stage = self.runner.plan[key]
            if key not in running and all(a in self.runner.results for a in stage.after):
                return key
        return None

    def run(self) -> None:
        while self.todo:
            idle = [w for w in self.workers if w.stage is None]
            key = self.ready() if idle and not self.failed else None
            if key is not None:
                idle[0].start(key)
                tqdm.write(f"  {key} ... (worker {idle[0].slot})")
                continue
            busy = [w for w in self.workers if w.stage is not None]
            if not busy:
                break
            self.wait(busy)
        if self.failed:
            key = self.failed[0]
            log = self.runner.out / LOGS / f"{key}.log"
            raise UserError(f"stage {key} failed: see its log, {log}")

    def wait(self, busy: list[Worker]) -> None:
        """Wait for one busy worker's stage to end and take its record."""
        import selectors

        with selectors.DefaultSelector() as sel:
            for w in busy:
                sel.register(w.process.stdout, selectors.EVENT_READ, w)
            worker = sel.select()[0][0].data
        key, ok = worker.stage, worker.result()
        seconds = time.perf_counter() - worker.started
        worker.stage = None
        found = self.runner.recorded(key) if ok else None
        if found is None:
            self.failed.append(key)
            tqdm.write(f"  {key}: failed after {seconds:.0f} s")
            return
        self.runner.results[key] = found
        self.todo.remove(key)
        tqdm.write(f"  {key}: done in {seconds:.0f} s")
