"""The budget ladder (--budgets, --ladder_arms) and the frontier on every axis (--target_axis):
the ladder's stages and keys, clm's cost to a loss on its curve and on its laddered runs
(log-compute interpolation) by hand, the per-axis verdict on hand-made runs, and one tiny
`rho experiment` with a ladder."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys

import pytest
from helpers import (
    HANG_GUARD_S,
    SUBPROCESS_ENV,
    assert_traceable,
    one_line_files,
    planned_config,
    write_texts,
)

from rho.errors import UserError
from rho.experiment.budget_ladder import ladder_flops, points
from rho.experiment.facts import summarise
from rho.experiment.frontier_report import axes_lines, ladder_lines
from rho.experiment.plan import plan
from rho.experiment.prepare import inputs_key
from rho.experiment.records import ArmRun, Frontier, Overhead, Results
from rho.experiment.settings import ExperimentConfig

FLOPS = [0.0, 100.0, 200.0, 300.0, 400.0]


@pytest.fixture
def files(tmp_path) -> dict:
    return one_line_files(tmp_path)


def config(files: dict, **kw) -> ExperimentConfig:
    return planned_config(files, arms="clm,slm,clm-mix,reference", **kw)


def stages(cfg: ExperimentConfig) -> dict:
    return plan(cfg, inputs_key(cfg))


# ------------------------------------------------------------------ settings and plan
def test_budgets_take_a_list_or_text_and_always_hold_the_arms_own_run(files):
    assert config(files).budgets == [1.0]
    assert config(files, budgets="0.5,0.25").budgets == [0.25, 0.5, 1.0]
    assert config(files, budgets=[1, 0.5]).budgets == [0.5, 1.0]
    for bad in ("0,1", "1.5", "a,b", [-0.25]):
        with pytest.raises(UserError, match="--budgets"):
            config(files, budgets=bad)
    with pytest.raises(UserError, match="--ladder_arms: unknown arm 'nope'"):
        config(files, ladder_arms="clm,nope")
    with pytest.raises(UserError, match="reference arm"):
        config(files, budgets="0.5", ladder_arms="reference")
    cfg = config(files, budgets="0.5", ladder_arms="all")
    assert cfg.laddered("slm") == [0.5] and cfg.laddered("reference") == []


def test_the_ladder_is_its_own_stages_on_the_arms_windows(files):
    full = stages(config(files))
    laddered = stages(config(files, budgets="0.25,0.5,1"))
    new = set(laddered) - set(full)
    assert new == {f"clm-b{b}-seed{s}" for b in ("0.25", "0.5") for s in (0, 1)}
    assert {name: full[name].key for name in full} == {
        name: laddered[name].key for name in full
    }  # fraction 1 is the arms' own run: nothing else changes
    run, own = laddered["clm-b0.25-seed1"], laddered["clm-seed1"]
    assert run.budget == 0.25 and own.budget is None and not run.save
    assert (run.after, run.windows, run.charges, run.seed) == (
        own.after,
        own.windows,
        own.charges,
        own.seed,
    )
    assert run.key != laddered["clm-b0.5-seed1"].key != own.key
    # a change of budgets changes only the laddered stages: one gone, one new
    other = stages(config(files, budgets="0.25,0.75"))
    assert set(other) - set(laddered) == {"clm-b0.75-seed0", "clm-b0.75-seed1"}
    assert set(laddered) - set(other) == {"clm-b0.5-seed0", "clm-b0.5-seed1"}
    assert all(other[n].key == laddered[n].key for n in set(other) & set(laddered))


def test_a_laddered_selection_arm_reads_its_own_scores_and_is_charged_its_reference(files):
    s = stages(config(files, budgets="0.5", ladder_arms="clm,slm"))
    run, own = s["slm-b0.5-seed1"], s["slm-seed1"]
    assert (run.scores, run.charges, run.reference_seed) == (
        own.scores,
        own.charges,
        own.reference_seed,
    )
    assert "clm-mix-b0.5-seed0" not in s  # not laddered


# ------------------------------------------------------------------ the arithmetic by hand
def test_log_compute_interpolation_by_hand():
    two = [(400.0, 4.0), (100.0, 5.0)]  # read in order of compute, whatever the order given
    assert ladder_flops(two, 4.5) == pytest.approx(200.0)  # exp((ln 100 + ln 400) / 2)
    assert ladder_flops(two, 4.75) == pytest.approx(100 * 4**0.25)  # a quarter of the way
    assert ladder_flops(two, 5.0) == 100.0 and ladder_flops(two, 4.0) == 400.0  # the runs
    assert ladder_flops(two, 5.2) is None  # above the smallest run: no run says how little
    assert ladder_flops(two, 3.9) is None  # below every run: beyond the ladder
    assert ladder_flops([(100.0, 5.0)], 5.0) is None  # one run is no ladder
    three = [(100.0, 5.0), (200.0, 4.5), (800.0, 4.0)]
    assert ladder_flops(three, 4.25) == pytest.approx(400.0)
    # not monotone (noise): the first run that reaches the loss decides
    assert ladder_flops([(100.0, 5.0), (200.0, 4.4), (400.0, 4.6)], 4.5) == pytest.approx(
        100 * 2 ** (5 / 6)
    )


def run(seed, flops_train, validation, curve, budget=1.0, general=None) -> ArmRun:
    """A run record with what the arithmetic reads (placeholders for the rest); its curve's
    FLOPs are FLOPS scaled to its whole run."""
    scale = flops_train / FLOPS[-1]
    general = general or [x + 1 for x in curve]
    return ArmRun.model_validate({
        "run": "run", "steps": 4, "warmup_steps": 1, "windows_read": 1, "windows_trained": 1,
        "sample_windows": {}, "n_params": 1, "seed": seed, "budget": budget,
        "final": {"validation": {"target": validation, "general": general[-1]},
                  "test": {"target": validation, "general": general[-1]}},
        "curve": {"tokens": [int(f * scale) for f in FLOPS], "flops": [f * scale for f in FLOPS],
                  "seconds": [f * scale / 100 for f in FLOPS], "target": curve,
                  "general": general},
        "train_tokens": int(flops_train), "flops_train": flops_train,
        "seconds_train": flops_train / 100,
    })  # fmt: skip


@pytest.fixture
def races():
    """clm ends at 4.0 and 4.2 (the target 4.1) after 400 FLOPs; its ladder: 5.0 at 100, 4.5
    at 200. Its mean curve: 6, 5.5, 4.9, 4.4, 4.1 at 0 .. 400 FLOPs. slm ends at 4.25 and 4.35
    (4.3), overhead 200: 600 one-off FLOPs. proto-clm ends below every clm run."""
    runs = {
        "clm": [run(0, 400, 4.0, [6, 5.4, 4.8, 4.3, 4.0]),
                run(1, 400, 4.2, [6, 5.6, 5.0, 4.5, 4.2])],
        "slm": [run(0, 400, 4.25, [6, 5.4, 4.8, 4.5, 4.25]),
                run(1, 400, 4.35, [6, 5.4, 4.8, 4.5, 4.35])],
        "proto-clm": [run(0, 400, 3.9, [6, 5.0, 4.2, 4.0, 3.9])],
    }  # fmt: skip
    ladder = {
        "clm": [run(s, 100, 5.0, [6, 5.6, 5.3, 5.1, 5.0], budget=0.25) for s in (0, 1)]
        + [run(s, 200, 4.5, [6, 5.5, 4.9, 4.6, 4.5], budget=0.5) for s in (0, 1)]
    }
    overhead = {"slm": Overhead(flops=200.0, what="reference training")}
    return runs, ladder, overhead


def test_clm_cost_to_each_loss_on_its_curve_and_on_its_ladder_by_hand(races):
    found = points(*races, "target")
    clm = {p.budget: p for p in found["clm"]}
    assert list(clm) == [0.25, 0.5, 1.0]
    assert clm[1.0].loss.mean == pytest.approx(4.1) and clm[1.0].clm_on_ladder == 400.0
    assert clm[1.0].ratio_on_curve == pytest.approx(1.0)  # its curve ends at its mean
    # clm given 100 FLOPs, annealed, reaches 5.0; its whole run's curve gets there only at
    # 100 + 100·(5.5 − 5.0)/(5.5 − 4.9) = 183.3: the mid-schedule curve flatters the others
    assert clm[0.25].clm_on_ladder == 100.0 and clm[0.25].ratio_on_ladder == 1.0
    assert clm[0.25].clm_on_curve == pytest.approx(100 + 100 * 0.5 / 0.6)
    assert clm[0.25].ratio_on_curve == pytest.approx(100 / (100 + 100 * 0.5 / 0.6))
    (slm,) = found["slm"]
    assert slm.flops.mean == 600.0 and slm.loss.mean == pytest.approx(4.3)
    # 4.3 is halfway from 4.5 (200 FLOPs) to 4.1 (400) in loss: exp of the mean log = √80000
    assert slm.clm_on_ladder == pytest.approx(math.sqrt(200 * 400))
    assert slm.ratio_on_ladder == pytest.approx(600 / math.sqrt(200 * 400))
    # on clm's mean curve 4.3 lies between 4.4 (300) and 4.1 (400): 300 + 100/3
    assert slm.clm_on_curve == pytest.approx(300 + 100 / 3)
    assert slm.ratio_on_curve == pytest.approx(600 / (300 + 100 / 3))
    (proto,) = found["proto-clm"]  # below every clm run and clm's whole curve: no figure
    assert proto.clm_on_ladder is None and proto.clm_on_curve is None
    text = "\n".join(ladder_lines(_frontier(found), races[1]))
    assert (
        "| proto-clm | 1 | 3.9000 | 400 | not reached by clm's curve | below every clm run: "
        "beyond the ladder |" in text
    )
    assert "| slm | 1 | 4.3000 ± 0.0707 | 600 ± 0 | 333 (1.8×) | 283 (2.12×) |" in text


def test_a_loss_above_clms_smallest_run_has_no_ladder_figure(races):
    runs, ladder, overhead = races
    runs["slm-random"] = [run(0, 400, 5.2, [6, 5.8, 5.6, 5.4, 5.2])]
    (worse,) = points(runs, ladder, overhead, "target")["slm-random"]
    assert worse.clm_on_ladder is None  # clm's quarter budget already gets to 5.0
    # on clm's mean curve (6, 5.5, ...) 5.2 lies between 100 and 200 FLOPs: 150
    assert worse.clm_on_curve == pytest.approx(150.0) and worse.ratio_on_curve == 400 / 150
    text = "\n".join(ladder_lines(_frontier({"clm": points(*races, "target")["clm"],
                                             "slm-random": [worse]}), ladder))  # fmt: skip
    assert "| slm-random | 1 | 5.2000 | 400 | 150 (2.67×) | above clm's smallest run |" in text


def _frontier(found):
    return Frontier(arms={}, best=None, best_ratio=None, points=found, beats_mix=[])


def test_without_a_ladder_only_the_curve_figures(races):
    runs, _, overhead = races
    found = points(runs, {}, overhead, "target")
    assert all(p.clm_on_ladder is None for ps in found.values() for p in ps)
    assert found["slm"][0].ratio_on_curve == pytest.approx(1.8)
    assert "| no ladder |" in "\n".join(ladder_lines(_frontier(found), {}))


# ------------------------------------------------------------------ every axis
def test_every_axis_has_its_frontier_and_the_target_axis_sets_the_winners(races, files):
    runs, ladder, overhead = races
    # on general, clm-mix ends at 5.6 (clm at 5.1 / 5.3): it never reaches; slm does
    runs["clm-mix"] = [run(s, 400, 4.2, [6, 5.5, 5.0, 4.6, 4.2], general=[7, 6.5, 6, 5.8, 5.6])
                       for s in (0, 1)]  # fmt: skip
    cfg = config(files, target_axis="general")
    summary = summarise(runs, ["target", "general"], overhead, cfg, False, {}, ladder)
    assert summary.target_axis == "general" and list(summary.axes) == ["target", "general"]
    assert summary.target.axis == "general" and summary.compute is summary.axes["general"].compute
    assert summary.axes["target"].target.loss == pytest.approx(4.1)
    assert summary.axes["general"].target.loss == pytest.approx(5.1)
    assert summary.winners.target == pytest.approx(5.1)
    general, target = summary.axes["general"].frontier, summary.axes["target"].frontier
    # general: slm's curve 7, 6.4, 5.8, 5.5, 5.3 (its 1 + target's) never gets to 5.1
    assert general.arms["slm"].ratio_one_off is None
    assert general.arms["clm-mix"].ratio_one_off is None
    # proto-clm (7, 6, 5.2, 5, 4.9) reaches 5.1 at 200 + 100·(5.2 − 5.1)/(5.2 − 5.0) = 250
    # FLOPs, 0.625× clm's 400; clm's seed 1 ends at 5.2: clm does not reach on every seed
    assert general.best == "proto-clm" and general.best_ratio == pytest.approx(0.625)
    assert general.arms["clm"].ratio_one_off is None
    assert general.beats_mix == ["proto-clm"]  # reaches where the mix does not
    # target: the mix's curve ends at 4.2, above 4.1, and slm's at 4.3: neither reaches
    assert target.arms["clm-mix"].ratio_one_off is None and target.beats_mix == ["proto-clm"]
    # the ladder is per axis: general's ladder points are clm's general losses
    assert [p.loss.mean for p in general.points["clm"]] == pytest.approx([6.0, 5.5, 5.1])
    text = "\n".join(axes_lines(summary))
    assert "| general | 5.1000 | proto-clm (0.625×) | proto-clm |" in text
    assert "| target | 4.1000 | proto-clm (" in text
    without_mix = {a: r for a, r in runs.items() if a != "clm-mix"}
    summary = summarise(without_mix, ["target", "general"], overhead, cfg, False, {}, ladder)
    assert "| no clm-mix arm |" in "\n".join(axes_lines(summary))


def test_the_default_target_axis_is_the_first(files):
    assert config(files).target == "target"
    cfg = dataclasses.replace(config(files), target_axis="nope")
    with pytest.raises(UserError, match="--target_axis 'nope'"):
        cfg.check_inputs()


# ------------------------------------------------------------------ end to end
def sentences(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + "."
                    for _ in range(n))  # fmt: skip


@pytest.mark.slow
def test_a_ladder_end_to_end(tmp_path):
    """clm from scratch at budgets 0.25, 0.5 and 1 of 40 steps: 10, 20 and 40 steps, each with
    its own warm-up (1, 1, 2 steps: 5%) and cosine decay to zero at its own end."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(50)] + ["the", "of"]
    texts = [sentences(rng, words, 12) for _ in range(80)]
    paths = {name: str(write_texts(tmp_path / f"{name}.jsonl", part)) for name, part in
             (("corpus", texts[:50]), ("a", texts[50:65]), ("b", texts[65:]))}  # fmt: skip
    out = tmp_path / "run"
    argv = ["experiment", "--corpus", paths["corpus"], "--heldout", f"a={paths['a']}",
            f"b={paths['b']}", "--out", out, "--base", "tiny", "--from_scratch", "--arms", "clm",
            "--vocab", 300, "--seq_len", 32, "--batch_size", 4, "--train_tokens", 40 * 128,
            "--evals", 2, "--eval_windows", 4, "--seeds", 0, 1, "--analyze", "false",
            "--budgets", "0.25,0.5,1", "--target_axis", "b"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "rho", *map(str, argv)], capture_output=True,
                          text=True, timeout=HANG_GUARD_S,
                          env={**SUBPROCESS_ENV, "RHO_CACHE": str(tmp_path / "cache")})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    Results.read(out / "results.json")  # reads back through its model
    assert results["schema_version"] == 3 and results["config"]["budgets"] == [0.25, 0.5, 1.0]
    trained = [(r["budget"], r["seed"], r["steps"], r["warmup_steps"])
               for r in results["ladder"]["clm"]]  # fmt: skip
    assert trained == [(0.25, 0, 10, 1), (0.25, 1, 10, 1), (0.5, 0, 20, 1), (0.5, 1, 20, 1)]
    assert [(r["budget"], r["steps"], r["warmup_steps"]) for r in results["runs"]["clm"]] == [
        (1.0, 40, 2),
        (1.0, 40, 2),
    ]
    for r in results["ladder"]["clm"]:
        assert r["train_tokens"] == r["steps"] * 4 * 32
        # the cosine decay reaches zero at the run's own last step
        logged = [json.loads(line) for line in open(f"{r['run']}/metrics.jsonl")]
        rates = [x["learning_rate"] for x in logged if "learning_rate" in x]
        assert rates and rates[-1] < 0.05 * results["config"]["learning_rate"]
    summary = results["summary"]
    assert summary["target_axis"] == "b" and set(summary["axes"]) == {"a", "b"}
    ladder = summary["axes"]["b"]["frontier"]["points"]["clm"]
    assert [p["budget"] for p in ladder] == [0.25, 0.5, 1.0]
    assert ladder[0]["clm_on_ladder"] == pytest.approx(ladder[0]["flops"]["mean"])
    report = (out / "report.md").read_text()
    assert "## Annealed points" in report and "## The frontier on every axis" in report
    assert "clm at budget 0.25: 10 optimizer steps" in report
    assert_traceable(report, results)
