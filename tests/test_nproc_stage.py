"""`rho experiment --nproc_per_stage K`: every training and scoring stage under torchrun as K
processes (DDP), each worker on its own K GPUs; its results are one process's within what DDP
guarantees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    HANG_GUARD_S,
    SUBPROCESS_ENV,
    experiment_files,
    rho_command,
    run_rho,
    write_config,
)

from rho.errors import UserError
from rho.experiment.engine import EngineOptions, check_devices, devices_of

ARMS = ("clm", "slm", "proto-clm")  # token selection, and prototypes (an embed stage) beside CLM
# The stages that ran under torchrun: pretraining, the reference, scoring, embedding, the arms.
RANKED = ("base", "reference-seed0", "score-ref0-draw-x1-seed0", "embed-draw-x2-seed0") + tuple(
    f"{arm}-seed0" for arm in ARMS
)
COUNTS = ("train_tokens", "steps", "warmup_steps", "windows_read", "windows_trained", "flops_train")
TOLERANCE = 1e-3  # nats; see test_two_processes_per_stage_train_like_one


def test_workers_times_processes_must_fit_the_gpus():
    check_devices(workers=2, nproc=2, devices=4)
    with pytest.raises(UserError, match=r"--workers 2 × --nproc_per_stage 2 = 4 processes, but 3"):
        check_devices(workers=2, nproc=2, devices=3)
    check_devices(workers=4, nproc=2, devices=0)  # a CPU: the processes share its cores
    with pytest.raises(UserError, match="--nproc_per_stage must be at least 1"):
        EngineOptions(nproc_per_stage=0).worker_count()


def test_each_worker_gets_its_own_gpus_among_the_visible_ones():
    visible = ["4", "5", "6", "7"]  # as CUDA_VISIBLE_DEVICES names them
    assert [devices_of(slot, 2, visible) for slot in (0, 1)] == [["4", "5"], ["6", "7"]]
    assert [devices_of(slot, 1, visible) for slot in (0, 3)] == [["4"], ["7"]]
    assert devices_of(1, 2, []) == []  # a CPU


def test_the_processes_split_each_step_evenly(tmp_path):
    data = experiment_files(tmp_path)
    config = write_config(tmp_path / "c.yaml", data, tmp_path / "o")  # --batch_size 4
    with pytest.raises(UserError, match=r"--batch_size 4 must be a multiple .* \(3 × 1\)"):
        rho_command("experiment", ["--config", config, "--nproc_per_stage", "3"])
    assert not (tmp_path / "o" / "stages").exists()  # refused before any stage ran


@pytest.mark.slow
def test_two_processes_per_stage_train_like_one(tmp_path):
    """Under torchrun each rank trains on its share of every step's global batch (rank r the
    r-th half of the same --batch_size windows one process reads), from the same weights (DDP
    broadcasts rank 0's), and DDP averages the gradients by all-reduce: each update is
    mathematically one process's. What differs is floating point: each rank sums its half
    before the all-reduce adds the halves, and matrix products of half the rows round
    differently, so fp32 values differ in the last bits (~1e-7 relative); Adam amplifies those
    differences step by step, and they carry from stage to stage (base -> reference -> scores
    -> arms). The counts (tokens, steps, windows, FLOPs) are identical. Measured on this
    tiny config (8 steps per arm after a 76-step base): final and curve losses within 1.2e-5
    nats for clm and slm, 1.1e-4 for proto-clm; the tolerance is 1e-3 nats. A run without the
    all-reduce (each rank training on its own half) differed by ~0.4 nats.

    Not compared: slm-random, whose random scores the trainer seeds per rank, so under K
    processes it draws another (equally random) selection."""
    data = experiment_files(tmp_path)
    runs = {}
    for name, engine in (("one", []), ("two", ["--nproc_per_stage", 2, "--stage_threads", 2])):
        config = write_config(tmp_path / f"{name}.yaml", data, tmp_path / name,
                              arms=",".join(ARMS), seeds=[0])  # fmt: skip
        run = run_rho("experiment", "--config", config, *engine,
                      env={"RHO_CACHE": str(tmp_path / f"cache-{name}")})  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())["runs"]
    for arm in ARMS:
        one, two = runs["one"][arm][0], runs["two"][arm][0]
        assert {k: two[k] for k in COUNTS} == {k: one[k] for k in COUNTS}, arm
        for split, losses in one["final"].items():
            assert two["final"][split] == pytest.approx(losses, abs=TOLERANCE), (arm, split)
        for axis in one["final"]["test"]:
            assert two["curve"][axis] == pytest.approx(one["curve"][axis], abs=TOLERANCE), arm
    logs = tmp_path / "two" / "logs"
    for stage in RANKED:  # both ranks' output in the stage's log
        text = (logs / f"{stage}.log").read_text()
        assert f"rank 0 of 2: {stage}" in text and f"rank 1 of 2: {stage}" in text, stage
    assert "rank 0 of 2" not in (logs / "data.log").read_text()  # ran in the worker itself


def gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaped counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_stage_process_dies_with_its_killed_parent():
    """A worker's torchrun, and torchrun's ranks, die with their parent: a worker killed with
    kill -9 mid-stage leaves no rank to finish the stage behind the rerun that redoes it."""
    child = ("import os, time; from rho.experiment.worker import die_with_parent; "
             "die_with_parent(); print(os.getpid(), flush=True); time.sleep(3600)")  # fmt: skip
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            env=SUBPROCESS_ENV)  # fmt: skip
    pid = int(proc.stdout.readline())  # the child runs on, its parent waiting for it
    assert not gone(pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + HANG_GUARD_S  # a guard against a hang, never a clock
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(pid)
