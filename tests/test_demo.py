import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest
from helpers import HANG_GUARD_S, assert_traceable

from rho.experiment.analyses import SelectionSample, selection_rates
from rho.experiment.summary import tokens_to_reach


def test_tokens_to_reach_interpolates():
    tokens = np.array([0.0, 100.0, 200.0, 300.0])
    losses = np.array([6.0, 5.0, 4.0, 3.5])
    assert tokens_to_reach(tokens, losses, 4.5) == pytest.approx(150.0)
    assert tokens_to_reach(tokens, losses, 5.0) == pytest.approx(100.0)
    assert tokens_to_reach(tokens, losses, 7.0) == 0.0
    assert tokens_to_reach(tokens, losses, 3.0) is None


def test_selection_rates_hand_computed():
    # Two checkpoints, one window of 4 tokens; token 0 has no reference (window start).
    sample = SelectionSample(
        checkpoints=["checkpoint-1", "checkpoint-2"],
        valid=np.array([[False, True, True, True]]),
        selected=np.array([[[False, True, False, True]], [[False, True, True, False]]]),
        noise=np.array([False, False, True, True]),
        domain=np.array([0, 0, 1, 1], dtype=np.int16),
    )
    rates = selection_rates(sample, ["math", "noise"])
    # Valid tokens over both checkpoints: clean token 1 selected twice; noise tokens 2, 3 once each.
    assert rates.selection_rate_clean == 1.0
    assert rates.selection_rate_noise == 0.5
    assert rates.clean_precision == pytest.approx(0.5)
    assert rates.noise_fraction == pytest.approx(4 / 6)
    assert rates.selected_fraction_by_domain == {"math": 1.0, "noise": 0.5}
    assert rates.tokens_per_checkpoint == 3


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    """`rho demo --quick`: the paper's setting (a base, a reference fine-tuned from it), every
    core arm, CLM and SLM over three seeds, both axes, the report; a rerun resumes."""
    out = tmp_path / "demo"
    env = {**os.environ, "RHO_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "rho", "demo", "--quick", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test loss (math, general)" in run.stdout + run.stderr
    results = json.loads((out / "results.json").read_text())
    arms = ["clm", "slm", "slm-random", "clm-mix", "reference", "proto-clm"]
    assert list(results["runs"]) == arms
    assert [r["seed"] for r in results["runs"]["clm"]] == [0, 1, 2]
    assert [r["seed"] for r in results["runs"]["slm"]] == [0, 1, 2]
    # CLM's budget ladder: whole runs at a quarter and half of the budget, every seed
    ladder = [(r["budget"], r["seed"]) for r in results["ladder"]["clm"]]
    assert ladder == [(b, s) for b in (0.25, 0.5) for s in (0, 1, 2)]
    steps = results["runs"]["clm"][0]["steps"]
    assert [r["steps"] for r in results["ladder"]["clm"]] == [steps // 4] * 3 + [steps // 2] * 3
    for arm, runs in results["runs"].items():
        for r in runs:
            assert all(np.isfinite(v) for v in r["final"]["test"].values()), arm
    assert 0.0 <= results["analyses"]["selection"]["selection_rate_noise"] <= 1.0
    assert results["data"]["decontamination"]["math"]["before"]["documents"] > 0
    report = (out / "report.md").read_text()
    assert_traceable(report, results)
    for text in ("rho demo --quick", "curves.png", "axes.png", "selected.html",
                 "Decontamination", "Token-loss dynamics", "## Annealed points",
                 "## The frontier on every axis"):  # fmt: skip
        assert text in report, text
    image = matplotlib.image.imread(out / "axes.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    parser = _Collect()
    parser.feed((out / "selected.html").read_text())
    assert "html" in parser.tags and "span" in parser.tags
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert rerun.returncode == 0 and "done before (skipped)" in rerun.stdout + rerun.stderr
    # A foreign directory is refused.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = subprocess.run(
        [sys.executable, "-m", "rho", "demo", "--quick", "--out", str(foreign)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert refused.returncode == 2 and "rho did not make" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_the_scarce_setting(tmp_path):
    """`rho demo --setting scarce --quick`: the curated data at most 1/20 of an arm's budget,
    the reference arm and the mix trained for that whole budget (repeating it), cheaper scoring
    references, and a third axis of the corpus's own held-out math documents."""
    out = tmp_path / "scarce"
    env = {**os.environ, "RHO_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "rho", "demo", "--setting", "scarce", "--quick",
               "--seeds", "0", "--reference_seeds", "0", "--analyze", "false",
               "--out", str(out)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    config, tokens = results["config"], results["data"]["tokens"]
    assert 0 < tokens["curated"] <= config["train_tokens"] // 20
    assert results["data"]["axes"] == ["math", "math-corpus", "general"]
    runs = results["runs"]
    assert runs["reference"][0]["steps"] == runs["clm"][0]["steps"]  # the same budget, in steps
    scoring = results["references"]["ref-seed0"]
    assert scoring["train_tokens"] < runs["reference"][0]["train_tokens"]
    assert results["data"]["mix"]["repeats"] > 1
    held = (out / "demo-data" / "math-corpus-heldout.jsonl").read_text().splitlines()
    corpus = (out / "demo-data" / "corpus.jsonl").read_text()
    assert held and not any(line in corpus for line in held)  # never trained on
    report = (out / "report.md").read_text()
    assert "rho demo --setting scarce --quick" in report
    assert_traceable(report, results)
