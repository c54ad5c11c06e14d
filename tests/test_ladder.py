"""The model-size ladder (rho.experiment.ladder): its budget rule, its presets, the agreement of
two sizes' decisions and Kendall's tau against hand computations, and a quick two-size ladder
end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import matplotlib.image
import pytest
from helpers import HANG_GUARD_S, parse_options

from rho.errors import UserError
from rho.experiment.ladder import LadderOptions, budgets, parameters, plan_rungs, size_name
from rho.experiment.ladder_verdict import agreement, decision, pooled_std, ranking
from rho.experiment.records import Spread
from rho.experiment.records.ladder import LadderResults
from rho.experiment.settings import ExperimentConfig


def cfg_of(**kw) -> ExperimentConfig:
    values = dict(corpus=["c.jsonl"], heldout=["math=m.jsonl"], seq_len=128, batch_size=16)
    return ExperimentConfig(**(values | kw))


def test_parameters_of_presets_by_hand():
    """N of a tied-embedding Llama preset: V·h + layers·(4h² attention + 3·h·m MLP + 2h norms)
    + h (the final norm)."""

    def by_hand(v, h, layers, m):
        return v * h + layers * (4 * h * h + 3 * h * m + 2 * h) + h

    assert parameters("300k", 512) == by_hand(512, 64, 2, 192) == 139_584
    assert parameters("5m", 2048) == by_hand(2048, 256, 4, 768)


GPU_LADDER = [("gpu-20m", 20e6), ("gpu-60m", 60e6), ("gpu-150m", 150e6)]


@pytest.mark.parametrize(("name", "size"), GPU_LADDER)
def test_gpu_ladder_presets_are_their_size(name, size):
    """At the 32k vocabulary of docs/ladder-gpu.yaml, within 5% of the size in the name."""
    assert abs(parameters(name, 32768) / size - 1) < 0.05


def test_budget_rule_by_hand():
    """base = T·N and each arm arm_share·T·N tokens, rounded to whole steps of 16×128 = 2048
    tokens; ref and curated budgets keep their ratio to --train_tokens."""
    options = LadderOptions(bases=["tiny,300k"], tokens_per_param=2.0, arm_share=0.25)
    cfg = cfg_of(train_tokens=4096, ref_tokens=2048, curated_tokens=1000)
    # N = 139,584: base 279,168 tokens = 136.3 steps -> 136; arms 69,792 = 34.08 -> 34 steps
    base, train, ref, curated = budgets(139_584, True, cfg, options)
    assert (base, train) == (136 * 2048, 34 * 2048)
    assert ref == 17 * 2048  # half of the arms' budget, as 2048 is of 4096
    assert curated == round(1000 * 34 * 2048 / 4096)
    # a model base is not pretrained; a tiny N still gets one step
    assert budgets(10, False, cfg_of(), options) == (0, 2048, 0, 0)
    # the rule is linear in N: ten times the parameters, ten times the budgets (to a step)
    b10, t10, _, _ = budgets(1_395_840, True, cfg, options)
    assert abs(b10 - 10 * 279_168) <= 1024 and abs(t10 - 10 * 69_792) <= 1024


def test_ladder_options_and_rungs(tmp_path):
    options = LadderOptions(bases=["tiny,300k"])
    assert options.bases == ["tiny", "300k"]
    rungs = plan_rungs(cfg_of(out=str(tmp_path / "out"), vocab=512), options)
    assert [r.name for r, _ in rungs] == ["size-tiny", "size-300k"]
    rung, sized = rungs[1]
    assert (sized.base, sized.base_tokens, sized.train_tokens) == (
        "300k", rung.base_tokens, rung.train_tokens)  # fmt: skip
    assert sized.out == str(tmp_path / "out" / "size-300k") and rung.n_params == 139_584
    assert size_name("/models/my model/") == "my_model"
    for bad, match in (
        (dict(bases=["1m,1m"]), "each size once"),
        (dict(bases=["1m"], tokens_per_param=0.0), "tokens_per_param must be positive"),
    ):
        with pytest.raises(UserError, match=match):
            LadderOptions(**bad)
    with pytest.raises(UserError, match="at least two sizes"):
        plan_rungs(cfg_of(), LadderOptions(bases=["1m"]))
    with pytest.raises(UserError, match="needs --train_tokens"):
        plan_rungs(cfg_of(ref_tokens=4096), options)
    with pytest.raises(UserError, match="neither a preset"):
        plan_rungs(cfg_of(), LadderOptions(bases=["tiny", str(tmp_path / "nothing")]))


def test_the_command_reads_bases_from_flags_and_config(tmp_path):
    config = tmp_path / "ladder.yaml"
    config.write_text("bases: [tiny, 300k]\narm_share: 0.5\ncorpus: [c.jsonl]\n")
    cfg, _, ladder, _ = parse_options("experiment", ["--config", str(config), "--heldout", "m=x"])
    assert (ladder.bases, ladder.arm_share, cfg.corpus) == (["tiny", "300k"], 0.5, ["c.jsonl"])
    _, _, ladder, _ = parse_options("experiment", ["--bases", "300k,1m,5m", "--heldout", "m=x"])
    assert ladder.bases == ["300k", "1m", "5m"]


def test_the_demo_ladder_settings():
    """`rho demo --setting ladder`: 300k, 1m, 5m at demo.yaml's scale; --quick: tiny, 300k."""
    _, cfg, _, ladder = parse_options("demo", ["--setting", "ladder"])
    assert (ladder.bases, cfg.vocab, cfg.seq_len) == (["300k", "1m", "5m"], 2048, 256)
    assert (cfg.batch_size, cfg.seeds) == (8, [0, 1, 2])
    steps = [(r.base_tokens // 2048, r.train_tokens // 2048) for r, _ in plan_rungs(cfg, ladder)]
    assert steps == [(23, 9), (67, 27), (384, 154)]  # ladder.yaml's comment, docs/RESULTS.md
    _, cfg, _, ladder = parse_options("demo", ["--setting", "ladder", "--quick"])
    assert (ladder.bases, cfg.vocab, cfg.seq_len) == (["tiny", "300k"], 512, 128)
    assert cfg.batch_size == 16
    _, _, _, ladder = parse_options("demo", [])
    assert ladder.bases == []  # the other settings run one size


def s(mean: float, std: float, n: int = 3) -> Spread:
    return Spread(mean=mean, std=std, n=n, values=[])


def test_decisions_and_ties_by_hand():
    # pooled std of (n=3, std 0.03) and (n=2, std 0.01): sqrt((2·0.0009 + 0.0001)/3) = 0.02517
    assert math.isclose(pooled_std(s(0, 0.03), s(0, 0.01, 2)), math.sqrt(0.0019 / 3))
    assert decision(s(5.00, 0.03), s(5.02, 0.01, 2)) == 0  # 0.02 <= 0.0252: a tie
    assert decision(s(5.00, 0.03), s(5.03, 0.01, 2)) == -1  # 0.03 > 0.0252: a is lower
    assert decision(s(5.00, 0.01), s(5.03, 0.01)) == -1  # 0.03 > 0.01: a lower
    assert decision(s(5.03, 0.01), s(5.00, 0.01)) == 1
    assert decision(s(5.0, 0.0, 1), s(5.0, 0.0, 1)) == 0  # one seed each: a tie only if equal


def test_agreement_and_tau_by_hand():
    """Four arms at two sizes, every case of a pair: the same order, the opposite order, a
    tie at both, a tie at one only; tau-b computed by hand from concordant pairs."""
    small = {"a": s(5.00, 0.01), "b": s(5.10, 0.01), "c": s(5.105, 0.01), "d": s(5.30, 0.01)}
    large = {
        "a": s(4.00, 0.01),
        "b": s(4.20, 0.01),
        "c": s(4.10, 0.01),
        "d": s(4.103, 0.01),
        "e": s(3.0, 0.01),
    }  # fmt: skip  (e: only at the larger size, left out)
    # decisions (small, large): ab (-,-) same; ac (-,-) same; ad (-,-) same; bc (tie,+) tied one;
    # bd (-,+) opposite; cd (-,tie) tied one
    found = agreement(small, large, ("s", "l"))
    assert (found.pairs, found.same_order, found.opposite_order) == (6, 3, 1)
    assert (found.tied_both, found.tied_one, found.agreement) == (0, 2, 0.5)
    # tau-b by the means (no exact ties): concordant ab ac ad cd, discordant bc bd: (4-2)/6
    assert math.isclose(found.tau, (4 - 2) / 6)
    assert ranking(large) == ["e", "a", "c", "d", "b"]
    # a tie at both sizes agrees
    tied = {"a": s(5.0, 0.1), "b": s(5.05, 0.1)}
    found = agreement(tied, {"a": s(4.0, 0.1), "b": s(3.99, 0.1)}, ("s", "l"))
    assert (found.tied_both, found.agreement) == (1, 1.0) and found.tau == -1.0
    one = agreement({"a": s(5.0, 0.1)}, {"a": s(4.0, 0.1)}, ("s", "l"))
    assert (one.pairs, one.agreement, one.tau) == (0, None, None)


def decided(table: dict, a: str, b: str) -> int:
    """A pair's decision, recomputed from the raw values in results.json."""
    (ma, sa, na), (mb, sb, nb) = (
        (sum(t["values"]) / len(t["values"]), t["std"], t["n"]) for t in (table[a], table[b])
    )
    pooled = math.sqrt(((na - 1) * sa**2 + (nb - 1) * sb**2) / max(1, na + nb - 2))
    return 0 if abs(ma - mb) <= pooled else (-1 if ma < mb else 1)


def tau_by_hand(x: list[float], y: list[float]) -> float:
    pairs = list(combinations(range(len(x)), 2))
    sign = [(x[i] - x[j]) * (y[i] - y[j]) for i, j in pairs]
    return (sum(v > 0 for v in sign) - sum(v < 0 for v in sign)) / len(pairs)


def assert_hand_computed(raw: dict, sizes: list[str], arms: int) -> None:
    """Each axis's rankings, agreement and tau in a two-size ladder's results.json, recomputed
    by hand from the per-size losses it holds."""
    for table in raw["axes"].values():
        small, large = (table["losses"][size] for size in sizes)
        for size, losses in table["losses"].items():
            means = {arm: sum(t["values"]) / len(t["values"]) for arm, t in losses.items()}
            assert table["rankings"][size] == sorted(means, key=means.get)
        names = sorted(small)
        pairs = [(decided(small, a, b), decided(large, a, b)) for a, b in combinations(names, 2)]
        (found,) = table["adjacent"]
        assert found["pairs"] == len(pairs) == arms * (arms - 1) // 2
        assert math.isclose(found["agreement"], sum(x == y for x, y in pairs) / len(pairs))
        tau = tau_by_hand([small[a]["mean"] for a in names], [large[a]["mean"] for a in names])
        assert math.isclose(found["tau"], tau)
        assert table["to_largest"] == [found]


@pytest.mark.slow
def test_quick_two_size_ladder_end_to_end(tmp_path):
    """`rho demo --setting ladder --quick` (fewer arms and seeds): two sizes, each an
    ordinary run with its scaled budgets, side by side on the demo's two workers; the ranking,
    agreement and tau in results.json equal a hand computation on its per-size losses; the
    report and figure are written; a rerun redoes nothing and writes the same ladder."""
    out = tmp_path / "ladder"
    env = {**os.environ, "RHO_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "rho", "demo", "--setting", "ladder", "--quick",
               "--arms", "clm,slm,clm-mix,reference", "--seeds", "0", "1",
               "--reference_seeds", "0", "1", "--analyze", "false", "--out", str(out)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ladder: do the smaller sizes' decisions hold" in run.stdout + run.stderr
    started = [line.split(" ... ")[0].strip() for line in run.stdout.splitlines()
               if " ... (worker " in line]  # fmt: skip
    assert started[:2] == ["size-300k/data", "size-tiny/data"]  # side by side, largest first
    ladder = LadderResults.read(out / "results.json").ladder
    raw = json.loads((out / "results.json").read_text())["ladder"]
    assert [r.base for r in ladder.rungs] == ["tiny", "300k"]
    for rung in ladder.rungs:  # each size a run with the rule's budgets
        sized = json.loads((out / rung.run / "results.json").read_text())
        assert sized["config"]["base"] == rung.base
        step = 16 * 128  # quick.yaml's batch x window: the rule's budgets in whole steps
        assert rung.base_tokens == round(rung.n_params / step) * step  # T = 1
        assert rung.train_tokens == round(rung.base_tokens / 2 / step) * step  # arm_share 0.5
        assert sized["base"]["steps"] == rung.base_tokens // step
        assert sized["runs"]["clm"][0]["steps"] == rung.train_tokens // step
        assert sized["base"]["n_params"] == rung.n_params
    assert set(raw["axes"]) == {"math", "general"}
    assert_hand_computed(raw, [r.name for r in ladder.rungs], arms=4)
    report = (out / "report.md").read_text()
    assert "Kendall's tau" in report and "size-300k/report.md" in report
    assert matplotlib.image.imread(out / "ladder.png").shape[0] > 100
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert rerun.returncode == 0 and "done before (skipped)" in rerun.stdout + rerun.stderr
    assert json.loads((out / "results.json").read_text())["ladder"] == raw


def test_the_gpu_ladder_config_has_the_budgets_it_documents():
    """docs/ladder-gpu.yaml parses, and the rule gives the steps its comments state."""
    config = Path(__file__).resolve().parents[1] / "docs" / "ladder-gpu.yaml"
    cfg, _, options, _ = parse_options("experiment", ["--config", str(config)])
    rungs = [rung for rung, _ in plan_rungs(cfg, options)]
    step = 64 * 1024
    assert [(r.base_tokens // step, r.train_tokens // step) for r in rungs] == [
        (6_001, 600), (18_503, 1_850), (44_667, 4_467)]  # fmt: skip
    assert [r.n_params for r in rungs] == [19_664_256, 60_631_680, 146_364_288]
