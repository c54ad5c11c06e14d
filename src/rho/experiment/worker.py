"""A worker of `rho experiment`'s pool (rho.experiment.engine): ``python -m
rho.experiment.worker`` reads stages from stdin, one a line (``OUT<tab>STAGE``: the run
directory and the stage), runs each with its output in ``OUT/logs/STAGE.log``, and answers
``ok OUT<tab>STAGE`` or ``failed OUT<tab>STAGE`` on stdout. It imports torch and transformers
once for all its stages, and reads each run's config the pool wrote (a ladder's sizes share
the workers).

With ``--nproc_per_stage K`` > 1 a training or scoring stage runs under torchrun instead: K
processes of ``python -m rho.experiment.worker --stage OUT STAGE``, every rank's output in the
stage's log, each rank on its own GPU (LOCAL_RANK among the worker's) or its share of the
worker's threads."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from rho import distributed as dist
from rho.errors import UserError
from rho.experiment.engine import CONFIG_FILE, LOGS, NPROC_ENV
from rho.experiment.plan import Kind, Stage
from rho.experiment.runner import Runner, quiet_transformers
from rho.experiment.settings import ExperimentConfig
from rho.io.files import read_json, write_text_atomic
from rho.scoring.windows import default_device

THREADS_ENV = "RHO_STAGE_THREADS"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The stages that train or score a model, run under torchrun with --nproc_per_stage K > 1.
DISTRIBUTED = frozenset({Kind.BASE, Kind.PROXY, Kind.REFERENCE, Kind.SCORE, Kind.EMBED, Kind.ARM})


@contextmanager
def output_to(log: Path):
    """Point this process's stdout and stderr (file descriptors too: torch and tqdm write
    there) at ``log`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", encoding="utf-8") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_one(runner: Runner, key: str, log: Path, nproc: int = 1) -> bool:
    if nproc > 1 and under_torchrun(runner.plan[key]):
        return run_ranks(runner.out, key, log, nproc)
    with output_to(log):
        try:
            runner.load_recorded()
            runner.results[key] = runner.run_stage(key, runner.plan[key])
            return True
        except UserError as err:  # the user's to fix: the pool says it as a run in one process
            print(f"rho: error: {err}")
            write_text_atomic(log.with_suffix(".error"), str(err))
            return False
        except Exception:  # the log keeps the traceback; the pool names the stage and its log
            traceback.print_exc()
            return False


def under_torchrun(stage: Stage) -> bool:
    """A stage that trains or scores (a base or proxy only when it is pretrained here)."""
    return stage.kind in DISTRIBUTED and (stage.cached or stage.kind not in (Kind.BASE, Kind.PROXY))


def run_ranks(out: Path, key: str, log: Path, nproc: int) -> bool:
    """The stage as ``nproc`` processes under torchrun, every rank's output in ``log``; True if
    every rank finished (rank 0 then wrote the record)."""
    threads = int(os.environ.get(THREADS_ENV, "0")) or os.cpu_count() or 1
    share = str(max(1, threads // nproc))  # on a CPU the ranks share the worker's threads
    env = dict(os.environ, OMP_NUM_THREADS=share, MKL_NUM_THREADS=share, **{THREADS_ENV: share})
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    stage = ["-m", "rho.experiment.worker", "--stage", str(out), key]
    with open(log, "a", encoding="utf-8") as f:
        done = subprocess.run(
            [*launch, "--nproc_per_node", str(nproc), *stage],
            preexec_fn=die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=f,
            env=env,
        )
    return done.returncode == 0


def die_with_parent() -> None:
    """On Linux, SIGKILL this process when its parent dies: a worker killed mid-stage (kill -9)
    takes its torchrun and the ranks with it, which would otherwise finish the stage and write
    its record behind the rerun that redoes it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def set_threads() -> None:
    threads = int(os.environ.get(THREADS_ENV, "0"))
    if threads:
        torch.set_num_threads(threads)


def run_rank(out: Path, key: str) -> int:
    """One rank of a stage under torchrun: every rank runs the stage's builder (DDP training,
    shared scoring batches); rank 0 writes the record (rho.experiment.stages)."""
    die_with_parent()  # torchrun's
    set_threads()
    quiet_transformers()
    device = default_device()  # cuda:LOCAL_RANK, or the CPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_from_env(device)
    with dist.process_group_closed():
        print(f"rank {dist.rank()} of {dist.world_size()}: {key}", flush=True)
        runner = Runner(ExperimentConfig(**read_json(out / CONFIG_FILE)), out)
        runner.load_recorded()
        runner.run_stage(key, runner.plan[key])
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--stage":
        return run_rank(Path(argv[1]), argv[2])
    set_threads()
    quiet_transformers()
    nproc = int(os.environ.get(NPROC_ENV, "1"))
    answers = os.fdopen(os.dup(1), "w", buffering=1)  # stdout itself goes to the stage logs
    runners: dict[str, Runner] = {}  # one per run directory: a ladder's sizes share the workers
    for line in sys.stdin:
        job = line.rstrip("\n")
        out, key = job.split("\t")
        if out not in runners:
            runners[out] = Runner(ExperimentConfig(**read_json(Path(out) / CONFIG_FILE)), Path(out))
        ok = run_one(runners[out], key, Path(out) / LOGS / f"{key}.log", nproc)
        answers.write(f"{'ok' if ok else 'failed'} {job}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
