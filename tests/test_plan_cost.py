"""`rho experiment --plan`: the stages, their FLOPs and a probe's wall-time estimate, written to
plan.json with nothing trained; after a real run, the planned FLOPs are what results.json and
every stage's record charge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import experiment_files, parse_options, rho_command, write_config

from rho.experiment.collect import charge
from rho.experiment.cost import Windows, bounds
from rho.experiment.plan_report import PLAN_FILE, makespan
from rho.experiment.records import Results
from rho.experiment.records.plan import PlannedStage, PlanRecord
from rho.experiment.runner import Runner
from rho.experiment.settings import ExperimentConfig
from rho.io.files import MARKER
from rho.models import build_model, count_parameters

ARMS = "clm,slm,rholoss,pruned-clm,proto-slm"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return experiment_files(tmp_path_factory.mktemp("plan-data"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RHO_CACHE", str(tmp_path / "cache"))  # the pretrained base's
    return tmp_path / "cache"


def config_of(tmp_path: Path, data: dict, out: Path, **extra) -> Path:
    return write_config(tmp_path / "c.yaml", data, out, arms=ARMS, seeds=[0], **extra)


def read_plan(out: Path) -> PlanRecord:
    return PlanRecord.model_validate(json.loads((out / PLAN_FILE).read_text()))


def planned(config: Path, out: Path) -> PlanRecord:
    assert rho_command("experiment", ["--config", config, "--plan"]) == 0
    return read_plan(out)


def files_under(*roots: Path) -> dict[str, int]:
    """Every file below ``roots`` and its modification time."""
    return {str(p): p.stat().st_mtime_ns for r in roots if r.exists() for p in r.rglob("*")}


def test_plan_lists_the_stages_and_their_flops_and_trains_nothing(tmp_path, data, cache, capsys):
    out = tmp_path / "run"
    # base_tokens 0: one pass over --base_data; clm also on half the budget (its own run)
    config = config_of(tmp_path, data, out, budgets=[0.5, 1.0])
    plan = planned(config, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, PLAN_FILE])
    assert not cache.exists()  # no base pretrained, nothing cached
    cfg = ExperimentConfig(**json.loads(config.read_text()))
    stages = Runner(cfg, out).plan
    assert [(s.name, s.kind, s.after) for s in plan.stages] == [
        (key, stage.kind.value, list(stage.after)) for key, stage in stages.items()
    ]
    assert {s.status for s in plan.stages} == {"to run"}
    # 6·N per token trained at the preset's size (the data's vocabulary is at most --vocab);
    # RHO-LOSS forwards its candidates too (2·N per token).
    n = count_parameters(build_model("tiny", cfg.vocab))
    budget, by_name = cfg.train_tokens, {s.name: s for s in plan.stages}
    for arm in ("clm", "slm", "pruned-clm", "proto-slm"):
        assert by_name[f"{arm}-seed0"].flops == 6 * n * budget
    assert by_name["rholoss-seed0"].flops == 6 * n * budget + 2 * n * cfg.candidate_factor * budget
    assert by_name["clm-b0.5-seed0"].flops == 6 * n * budget // 2
    assert by_name["score-ref0-draw-x1-seed0"].flops == 2 * n * budget  # SLM's draw scored
    assert not by_name["clm-seed0"].exact and "--vocab 400" in by_name["clm-seed0"].note
    # The base's pretraining is one pass over --base_data: unknown before the data stage.
    assert plan.unknown == ["base"] and by_name["base"].flops is None
    assert plan.flops_total == sum(s.flops for s in plan.stages if s.flops is not None)
    assert plan.flops_to_run == plan.flops_total and not plan.exact
    assert plan.probe is not None and plan.probe.models["base"].n_params == n
    assert plan.wall_seconds > 0 and plan.workers == 1
    printed = capsys.readouterr().out
    assert "nothing is trained" in printed and "estimate from a probe on" in printed
    assert plan.probe.device in printed and "rholoss-seed0" in printed


def test_a_fresh_preset_base_is_given_and_costs_nothing(tmp_path, data):
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data, out, arms="clm,slm", seeds=[0],
                          from_scratch=True, base_data=[])  # fmt: skip
    by_name = {s.name: s for s in planned(config, out).stages}
    assert by_name["base"].status == "given" and by_name["base"].flops == 0
    n = count_parameters(build_model("tiny", 400))
    assert by_name["base"].n_params == by_name["clm-seed0"].n_params == n
    assert by_name["clm-seed0"].flops == 6 * n * 1024


def test_a_ladder_plans_each_size_and_trains_nothing(tmp_path, data, cache):
    out = tmp_path / "ladder"
    config = write_config(tmp_path / "c.yaml", data, out, arms="clm,slm", seeds=[0])
    assert rho_command("experiment", ["--config", config, "--bases", "tiny,300k", "--plan"]) == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    sizes = ("size-tiny", "size-300k")
    assert files == sorted([MARKER] + [f"{s}/{f}" for s in sizes for f in (MARKER, PLAN_FILE)])
    assert not cache.exists()
    tiny, larger = ({s.name: s.n_params for s in read_plan(out / size).stages} for size in sizes)
    assert tiny["clm-seed0"] < larger["clm-seed0"]  # each size charged at its own N


def test_plan_is_a_flag_of_experiment_and_demo():
    assert parse_options("experiment", ["--plan"])[1].plan
    assert parse_options("demo", ["--plan"])[2].plan
    assert not parse_options("demo", [])[2].plan


@pytest.mark.slow
def test_planned_flops_are_what_the_run_charges(tmp_path, data, cache):
    out = tmp_path / "run"
    arms = f"{ARMS},slm-proxy,slm-self"  # a proxy base and reference, a self-reference
    config = write_config(tmp_path / "c.yaml", data, out, arms=arms, seeds=[0], base_tokens=2048,
                          reference_base="tiny", analyze=False, budgets=[0.5, 1.0],
                          ladder_arms="clm,rholoss")  # fmt: skip
    before = planned(config, out)
    assert {s.status for s in before.stages} == {"to run"}
    assert before.unknown == ["self-ref-seed0"]  # its sample is a share of the corpus's windows
    assert rho_command("experiment", ["--config", config]) == 0
    results = Results.read(out / "results.json")
    flops = {s.name: s.flops for s in before.stages}
    # Planned before anything ran: every arm's training and what each arm is charged.
    for arm, runs in results.runs.items():
        assert flops[f"{arm}-seed0"] == runs[0].flops_train, arm
    cfg = ExperimentConfig(**json.loads(config.read_text()))
    stages = Runner(cfg, out).plan
    for arm, overhead in results.overhead.items():
        keys = stages[f"{arm}-seed0"].charges
        if arm == "slm-self":
            assert "self-ref-seed0" in keys
            continue
        charged = sum(flops[key] for key in keys)
        if "proxy" in keys:  # its pretraining on --base_data: an upper bound, as the base's
            assert charged >= overhead.flops
        else:
            assert charged == pytest.approx(overhead.flops, rel=1e-12), arm
    assert flops["base"] >= results.base.flops_train  # an upper bound: a partial last window

    # Planned again after the run: every stage recorded, nothing else written.
    files = files_under(out, cache)
    after = planned(config, out)
    changed = {k for k, v in files_under(out, cache).items() if files.get(k) != v}
    assert changed == {str(out / PLAN_FILE), str(out / MARKER)}  # as every run, its marker
    assert {s.status for s in after.stages} <= {"recorded", "cached"}
    assert after.flops_to_run == 0 and after.probe is None and after.wall_seconds is None
    spent = spent_flops(cfg, out)
    assert results.base.flops_train == spent["base"]
    assert_planned_as_charged(after, spent)
    # With only the data stage recorded (and the cached bases), from its token counts alone.
    for stage in (out / "stages").iterdir():
        if stage.name != "data":
            shutil.rmtree(stage)
    again = planned(config, out)
    assert {s.name for s in again.stages if s.status != "to run"} == {"data", "base", "proxy"}
    assert_planned_as_charged(again, spent)
    assert again.wall_seconds > 0 and not again.unknown


def spent_flops(cfg: ExperimentConfig, out: Path) -> dict[str, float]:
    """Every recorded stage's FLOPs as results.json charges them (rho.experiment.collect)."""
    runner = Runner(cfg, out)
    runner.load_recorded()
    return {key: charge(record, 0.0)[0] for key, record in runner.results.items()}


def assert_planned_as_charged(plan: PlanRecord, spent: dict[str, float]) -> None:
    """Each figure is its stage's charge where exact (every arm: whole windows drawn for whole
    batches), at most it otherwise."""
    for stage in plan.stages:
        assert stage.exact or stage.kind != "arm", (stage.name, stage.note)
        assert stage.flops == spent[stage.name] if stage.exact else stage.flops >= spent[stage.name]
    total = sum(spent.values())
    assert plan.flops_total == total if plan.exact else plan.flops_total >= total


def test_a_run_is_exact_only_while_its_batches_are_whole_windows():
    whole, partial = Windows(8), Windows(8, whole=False)
    assert bounds(whole, steps=2, per_step=4) == []  # one epoch of whole batches
    assert bounds(whole, steps=3, per_step=4) == []  # epochs of whole batches
    assert bounds(Windows(10), steps=3, per_step=4)  # the epoch ends in a batch of 2
    assert bounds(partial, steps=1, per_step=4)  # a short last window
    assert bounds(Windows(None, bound="at most: x"), steps=1, per_step=4) == ["at most: x"]


def test_the_wall_time_schedules_the_stages_on_the_workers():
    def stage(name, after, seconds, status="to run"):
        unknown = dict.fromkeys(("arm", "seed", "model", "n_params", "flops"))
        counts = dict.fromkeys(("train_tokens", "forward_tokens"))
        return PlannedStage(name=name, kind="arm", after=after, status=status, exact=True,
                            seconds=seconds, **unknown, **counts)  # fmt: skip

    stages = [stage("a", [], 1.0), stage("b", ["a"], 2.0), stage("c", ["a"], 2.0),
              stage("d", [], 9.0, status="recorded")]  # fmt: skip
    assert makespan(stages, 1) == 5.0 and makespan(stages, 2) == 3.0
