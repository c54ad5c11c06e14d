"""How `rho experiment` runs its stages (rho.experiment.engine): a pool of two workers and Ray
give one worker's losses; a worker killed mid-stage, a failing stage and Ctrl-C leave only
records a rerun can trust; the console's live lines."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from helpers import (
    HANG_GUARD_S,
    experiment_files,
    hold_env,
    run_rho,
    wait_until_held,
    write_config,
    write_texts,
)

from rho.errors import UserError
from rho.experiment.console import Console, last_line
from rho.experiment.engine import Schedule
from rho.experiment.plan import Kind, Stage

SMALL = {"arms": "clm,slm", "seeds": [0], "analyze": False}
POOL = ("--workers", "2", "--stage_threads", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return experiment_files(tmp_path_factory.mktemp("engine-data"))


def config(tmp_path: Path, data: dict, name: str, **extra) -> tuple[Path, Path]:
    """A tiny experiment's config file and run directory."""
    out = tmp_path / name
    return write_config(tmp_path / f"{name}.yaml", data, out, **{**SMALL, **extra}), out


def cache_env(tmp_path: Path, **extra) -> dict:
    return {"RHO_CACHE": str(tmp_path / "cache"), **extra}


def experiment(tmp_path: Path, config_file: Path, *flags: str) -> subprocess.CompletedProcess:
    run = run_rho("experiment", "--config", config_file, *flags, env=cache_env(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def held_experiment(tmp_path, config_file, point: str, held: Path) -> subprocess.Popen:
    """`rho experiment` by two workers, stopped where a process passes ``point``."""
    return subprocess.Popen(
        [sys.executable, "-m", "rho", "experiment", "--config", str(config_file), *POOL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**hold_env(point, 1, held), **cache_env(tmp_path)},
    )


def finals(out: Path) -> dict:
    runs = json.loads((out / "results.json").read_text())["runs"]
    return {arm: [r["final"] for r in seeds] for arm, seeds in runs.items()}


def records(out: Path) -> dict:
    """Each recorded stage's stage.json: its modification time and text."""
    files = out.glob("stages/*/stage.json")
    return {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in files}


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("rho experiment: error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_two_workers_give_one_workers_losses_and_a_log_per_stage(tmp_path, data):
    one_config, one = config(tmp_path, data, "one")
    two_config, two = config(tmp_path, data, "two")
    experiment(tmp_path, one_config, "--workers", "1", "--stage_threads", "1")
    run = experiment(tmp_path, two_config, *POOL)
    assert finals(one) == finals(two)
    for out in (one, two):
        stages = [p.name for p in (out / "stages").iterdir()]
        assert "slm-seed0" in stages
        for name in stages:  # each stage's output is in its log, never on the console
            assert (out / "logs" / f"{name}.log").stat().st_size > 0, name
    assert (one / "logs" / "base.log").stat().st_size > 0  # the base, pretrained in the cache
    assert "slm-seed0: done in" in run.stdout
    assert "step/s" not in run.stdout + run.stderr  # no worker's progress bar


@pytest.mark.slow
def test_a_worker_killed_mid_stage_fails_it_and_a_rerun_redoes_only_it(tmp_path, data):
    """kill -9 to the worker whose stage is built but not recorded: the run ends with one line
    naming the stage and its log; the rerun redoes that stage and leaves every other record."""
    config_file, out = config(tmp_path, data, "run")
    held = tmp_path / "held"
    proc = held_experiment(tmp_path, config_file, "stage.slm-seed0.built", held)
    wait_until_held(held, proc)
    os.kill(int(held.read_text()), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 2
    line = error_line(stderr)
    assert "stage slm-seed0" in line and "its worker died" in line
    assert str(out / "logs" / "slm-seed0.log") in line
    assert (out / "stages" / "slm-seed0").is_dir()
    before = records(out)
    # clm-seed0 started before slm-seed0 could (slm waits for the reference's scores); a
    # started stage finishes and keeps its record.
    assert "slm-seed0" not in before and "clm-seed0" in before
    rerun = experiment(tmp_path, config_file, *POOL)
    after = records(out)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {"slm-seed0"}
    assert "slm-seed0 ..." in rerun.stdout and "clm-seed0 ..." not in rerun.stdout


@pytest.mark.slow
def test_a_failing_stage_stops_the_launches_and_running_stages_keep_their_records(tmp_path, data):
    """The proxy references' start is no model: that reference fails while the draw (held
    once built) still runs. The draw finishes and is recorded; nothing else starts."""
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    config_file, out = config(
        tmp_path, data, "run", arms="clm,slm-proxy", reference_base=str(no_model)
    )
    held = tmp_path / "held"
    proc = held_experiment(tmp_path, config_file, "stage.draw-x1-seed0.built", held)
    wait_until_held(held, proc)
    for line in proc.stdout:  # the pool has taken the failure (and launches nothing more)
        if "proxy-ref-seed0: failed" in line:
            break
    held.unlink()  # the draw goes on
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 2
    log = out / "logs" / "proxy-ref-seed0.log"
    line = error_line(stderr)
    # a model that cannot load is the user's to fix: its one line, naming the stage
    assert "cannot load model" in line and "(stage proxy-ref-seed0)" in line
    assert "cannot load model" in log.read_text()
    assert set(records(out)) == {"data", "draw-x1-seed0"}
    assert not (out / "stages" / "clm-seed0").exists() and not (out / "results.json").exists()


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_leaves_no_half_written_record(tmp_path, data):
    config_file, out = config(tmp_path, data, "run", arms="clm")
    held = tmp_path / "held"
    proc = held_experiment(tmp_path, config_file, "stage.clm-seed0.built", held)
    wait_until_held(held, proc)
    worker = int(held.read_text())
    proc.send_signal(signal.SIGINT)  # the worker, in its own session, gets nothing from this
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130 and "rho experiment: interrupted" in stderr, stderr[-3000:]
    assert not Path(f"/proc/{worker}").exists()  # stopped by the pool (and reaped)
    assert (out / "stages" / "clm-seed0").is_dir()
    recorded = records(out)
    assert set(recorded) == {"data", "draw-x1-seed0"}
    for _, text in recorded.values():
        json.loads(text)
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers and not (out / "results.json").exists()


@pytest.mark.slow
def test_ray_gives_the_local_executors_losses(tmp_path, data):
    pytest.importorskip("ray")
    local_config, local = config(tmp_path, data, "local")
    ray_config, on_ray = config(tmp_path, data, "ray")
    experiment(tmp_path, local_config, "--workers", "1", "--stage_threads", "1")
    run = experiment(tmp_path, ray_config, "--executor", "ray", *POOL)
    assert "Ray: 2 CPUs" in run.stdout  # a local Ray of --workers x --stage_threads CPUs
    assert finals(local) == finals(on_ray)
    for stage in (on_ray / "stages").iterdir():
        assert (on_ray / "logs" / f"{stage.name}.log").stat().st_size > 0, stage.name


def test_without_ray_the_ray_executor_is_a_one_line_error(monkeypatch):
    from rho.experiment.ray_executor import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import fails
    with pytest.raises(UserError, match=r"pip install 'rho\[ray\]'"):
        import_ray()


def test_last_line_of_a_log(tmp_path):
    log = tmp_path / "stage.log"
    assert last_line(log) == ""  # not written yet
    log.write_text("loading\nclm-seed0:  25%|##  | 2/8\rclm-seed0:  50%|#### | 4/8\r\n\n")
    assert last_line(log) == "clm-seed0:  50%|#### | 4/8"
    log.write_text("x" * 10_000 + "\nlast words  \n")
    assert last_line(log) == "last words"


def terminal_output(master: int) -> str:
    chunks = []
    while select.select([master], [], [], 0)[0]:
        chunks.append(os.read(master, 65536))
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_one_live_line_per_running_stage(tmp_path):
    (tmp_path / "clm-seed0.log").write_text("clm-seed0:  50%|#### | 4/8\r")
    master, replica = os.openpty()
    termios.tcsetwinsize(replica, (24, 120))  # a terminal 120 columns wide
    try:
        with open(replica, "w", encoding="utf-8") as tty:
            console = Console(tmp_path, file=tty)
            console.started("clm-seed0", "worker 0")  # shown live, not as a line of its own
            console.show({"clm-seed0": time.perf_counter(), "base": time.perf_counter()})
            shown = terminal_output(master)
            console.show({"base": time.perf_counter()})
            console.line("  clm-seed0: done in 3 s")
            console.close()
            ended = terminal_output(master)
    finally:
        os.close(master)
    assert "clm-seed0 ..." not in shown
    assert "clm-seed0     0 s | clm-seed0:  50%|#### | 4/8" in shown
    assert "base     0 s |" in shown
    assert "clm-seed0: done in 3 s" in ended


def test_elsewhere_one_plain_line_per_start_and_end(tmp_path):
    file = tmp_path / "console.txt"
    with open(file, "w", encoding="utf-8") as f:
        console = Console(tmp_path, file=f)
        console.started("clm-seed0", "worker 1")
        console.show({"clm-seed0": time.perf_counter()})
        console.line("  clm-seed0: done in 3 s")
        console.close()
    assert file.read_text() == "  clm-seed0 ... (worker 1)\n  clm-seed0: done in 3 s\n"


@pytest.mark.slow
def test_a_stage_that_refuses_its_input_says_why_in_one_line(tmp_path, data):
    """A UserError inside a worker's stage (a held-out set too small to split) reaches the
    console as the one line it is in one process, naming the stage, not as a traceback."""
    tiny = write_texts(tmp_path / "one.jsonl", ["a single held-out document."])
    config_file, out = config(tmp_path, data, "small", heldout=[f"target={tiny}"])
    run = run_rho("experiment", "--config", config_file, *POOL, env=cache_env(tmp_path))
    assert run.returncode == 2, run.stderr[-2000:]
    assert "too small to split into validation and test" in run.stderr
    assert "(stage data)" in run.stderr and "Traceback" not in run.stderr
    assert not (out / "stages" / "data" / "stage.json").exists()


class Run:
    """A run as the schedule sees it: a directory, a plan, its records so far."""

    def __init__(self, out: Path, after: dict[str, tuple[str, ...]]):
        self.out, self.results = out, {}
        self.plan = {key: Stage(key, Kind.ARM, key, after=needs) for key, needs in after.items()}

    def recorded(self, key: str) -> str:
        return f"record of {self.out.name}/{key}"


def test_several_runs_share_one_schedule_the_first_runs_ready_stages_first(tmp_path):
    """A ladder's sizes on one pool: a stage is named RUN/STAGE, handed out once its own run's
    inputs are recorded, the first run's ready stages before the second's, and its record goes
    to its own run."""
    big = Run(tmp_path / "size-5m", {"data": (), "base": ("data",), "arm": ("base",)})
    small = Run(tmp_path / "size-1m", {"data": (), "base": ("data",)})
    for run in (big, small):
        (run.out / "logs").mkdir(parents=True)
    with open(tmp_path / "console.txt", "w", encoding="utf-8") as f:
        schedule = Schedule([big, small], Console(tmp_path, file=f))
        first, second = schedule.next("worker 0"), schedule.next("worker 1")
        assert (first.name, second.name) == ("size-5m/data", "size-1m/data")
        assert first.line == f"{big.out}\tdata" and first.log == big.out / "logs" / "data.log"
        assert schedule.next("worker 2") is None  # every other stage waits on a data stage
        schedule.end(second, ok=True)
        assert small.results == {"data": "record of size-1m/data"} and big.results == {}
        assert schedule.next("worker 1").name == "size-1m/base"  # the big run has none ready
        schedule.end(first, ok=True)
        assert schedule.next("worker 0").name == "size-5m/base"
    assert (tmp_path / "console.txt").read_text().splitlines()[:3] == [
        "  size-5m/data ... (worker 0)",
        "  size-1m/data ... (worker 1)",
        "  size-1m/data: done in 0 s",
    ]
