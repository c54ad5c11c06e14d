"""`rho experiment`'s scoring references at tiny scale: with --ref_tokens not the budget, the
arms are scored by separate `ref-seed{r}` runs (and a self-reference), whose own losses
results.json keeps and the report's reference table and sentences quote; each arm's overhead
seconds are its charged stages' training seconds; the environment is recorded."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import transformers
from helpers import assert_traceable, experiment_files, run_rho, write_config

import rho
from rho.evaluation.heldout import evaluate_store
from rho.experiment.records import Results


def stage_record(out, name: str) -> dict:
    return json.loads((out / "stages" / name / "stage.json").read_text())


@pytest.mark.slow
def test_arms_are_paired_with_the_references_that_scored_them(tmp_path):
    data, out = experiment_files(tmp_path), tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data, out, arms="clm,slm,slm-self,reference",
                          ref_tokens=512, reference_seeds=[0, 1], self_reference=0.25,
                          analyze=False)  # fmt: skip
    run = run_rho("experiment", "--config", config, env={"RHO_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    Results.read(out / "results.json")  # typed, and reads back
    refs, runs, summary = results["references"], results["runs"], results["summary"]
    assert set(refs) == {"ref-seed0", "ref-seed1", "self-ref-seed0"}
    assert refs["ref-seed0"]["train_tokens"] == 512 < runs["reference"][0]["train_tokens"]
    # Each scoring reference's own final losses: its saved model on the whole held-out sets.
    stores = stage_record(out, "data")["result"]["stores"]
    for name, ref in refs.items():
        for split in ("validation", "test"):
            for axis in ("target", "general"):
                loss = ref["final"][split][axis]
                model, held = out / "stages" / name / "run", stores[f"{axis}-{split}"]
                again = evaluate_store(model, held, 32, 4, progress=False)["overall"]["loss"]
                assert isinstance(loss, float) and again == pytest.approx(loss, rel=1e-6)
    # The reference arm's runs are other models than the scoring references.
    assert runs["reference"][0]["final"]["test"] != refs["ref-seed0"]["final"]["test"]
    # Every reference-reading arm seed names its scoring reference; the pairs quote its losses.
    assert [r["reference"] for r in runs["slm"]] == ["ref-seed0", "ref-seed1"]
    assert [r["reference"] for r in runs["slm-self"]] == ["self-ref-seed0"]
    assert runs["clm"][0]["reference"] is None
    pairs = summary["reference_pairs"]
    assert set(pairs) == {"slm", "slm-self"}
    for arm, rows in pairs.items():
        for row, arm_run in zip(rows, runs[arm], strict=True):
            ref = refs[row["reference"]]
            assert row["reference"] == arm_run["reference"]
            assert row["reference_test"] == ref["final"]["test"]
            assert row["reference_validation"] == ref["final"]["validation"]
    own = summary["scoring_references"]["base"]["target"]
    assert own["values"] == [refs[f"ref-seed{r}"]["final"]["test"]["target"] for r in (0, 1)]
    report = (out / "report.md").read_text()
    assert re.search(r"\| slm \| 1 \| ref-seed1 \|", report)
    assert re.search(r"\| slm-self \| 0 \| self-ref-seed0 \|", report)
    assert f"target {own['mean']:.4f} ± {own['std']:.4f}" in report
    assert_traceable(report, results)

    # Overhead seconds: the charged references' training seconds (not their evaluations) and
    # the scoring stages' seconds, the mean over seeds (each recorded to the millisecond).
    def charged(ref: str, score: str) -> float:
        return refs[ref]["seconds_train"] + stage_record(out, score)["seconds"]

    slm = [charged(f"ref-seed{r}", f"score-ref{r}-draw-x1-seed{r}") for r in (0, 1)]
    assert results["overhead"]["slm"]["seconds"] == pytest.approx(np.mean(slm), abs=1e-3)
    self_ref = charged("self-ref-seed0", "score-self0-draw-x1-seed0")
    assert results["overhead"]["slm-self"]["seconds"] == pytest.approx(self_ref, abs=1e-3)
    # Where it ran.
    env = results["environment"]
    assert env["rho"] == rho.__version__ and env["torch"] == torch.__version__
    assert env["transformers"] == transformers.__version__ and env["numpy"] == np.__version__
    assert all(isinstance(env[k], str) for k in ("python", "accelerate", "tokenizers", "device"))
    assert env["device"] in ("cpu", "cuda") and (env["commit"] is None or len(env["commit"]) == 40)
