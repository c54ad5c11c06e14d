"""A worker of `rho experiment`'s pool (rho.experiment.engine): ``python -m
rho.experiment.worker OUT`` reads stage names from stdin, one a line, runs each with its output
in ``OUT/logs/STAGE.log``, and answers ``ok STAGE`` or ``failed STAGE`` on stdout. It imports
torch and transformers once for all its stages, and reads the config the pool wrote."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from rho.experiment.engine import CONFIG_FILE, LOGS
from rho.experiment.runner import Runner, quiet_transformers
from rho.experiment.settings import ExperimentConfig
from rho.io.files import read_json


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


def run_one(runner: Runner, key: str, log: Path) -> bool:
    with output_to(log):
        try:
            runner.load_recorded()
            runner.results[key] = runner.run_stage(key, runner.plan[key])
            return True
        except Exception:  # the log keeps the traceback; the pool names the stage and its log
            traceback.print_exc()
            return False


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    threads = int(os.environ.get("RHO_STAGE_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    quiet_transformers()
    answers = os.fdopen(os.dup(1), "w", buffering=1)  # stdout itself goes to the stage logs
    runner = Runner(ExperimentConfig(**read_json(out / CONFIG_FILE)), out)
    for line in sys.stdin:
        key = line.strip()
        ok = run_one(runner, key, out / LOGS / f"{key}.log")
        answers.write(f"{'ok' if ok else 'failed'} {key}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
