"""The typed records of `rho experiment` (rho.experiment.records): stage records written by an
earlier rho read back without redoing the stage, results.json refuses an older schema in one
line, and a run's curve keeps its flat JSON shape."""

from __future__ import annotations

import json

import pytest

from rho.errors import UserError
from rho.experiment.records import SCHEMA_VERSION, Curve, Results, Trained, Windows
from rho.experiment.stages import RECORD, Stages

# A trained stage's record as rho wrote it before the records existed (plain dicts).
OLD_TRAINED = {
    "run": "/somewhere/run",
    "final": {"validation": {"math": 5.1, "general": 5.3}, "test": {"math": 5.2, "general": 5.4}},
    "curve": {
        "tokens": [0, 2048],
        "flops": [0.0, 1.5e9],
        "seconds": [0.0, 1.2],
        "math": [6.0, 5.1],
        "general": [6.1, None],
    },  # fmt: skip
    "train_tokens": 2048,
    "steps": 1,
    "warmup_steps": 1,
    "windows_read": 8,
    "windows_trained": 8,
    "sample_windows": {"math": 4, "general": 4},
    "flops_train": 1.5e9,
    "seconds_train": 1.2,
    "n_params": 12345,
}


def test_a_curve_reads_and_writes_its_flat_shape():
    curve = Curve.model_validate(OLD_TRAINED["curve"])
    assert curve.losses == {"math": [6.0, 5.1], "general": [6.1, None]}
    assert curve.tokens == [0, 2048]
    assert curve.model_dump() == OLD_TRAINED["curve"]


def test_an_older_stage_record_is_read_back_not_redone(tmp_path):
    stage = tmp_path / "stages" / "clm-seed0"
    stage.mkdir(parents=True)
    record = {"key": "k1", "seconds": 3.5, "result": OLD_TRAINED}
    (stage / RECORD).write_text(json.dumps(record))
    stages = Stages(tmp_path, log=lambda line: None)

    def build(directory):
        raise AssertionError("a finished stage was redone")

    result = stages.run("clm-seed0", "k1", build, Trained)
    assert isinstance(result, Trained) and result.final.test["math"] == 5.2
    assert result.curve.losses["general"] == [6.1, None]
    assert stages.seconds["clm-seed0"] == 3.5
    assert result.model_dump() == OLD_TRAINED  # written back, it is the same record


def test_a_stage_record_of_another_shape_is_redone(tmp_path):
    stage = tmp_path / "stages" / "draw"
    stage.mkdir(parents=True)
    (stage / RECORD).write_text(json.dumps({"key": "k", "seconds": 1, "result": {"x": 1}}))
    built = []

    def build(directory):
        built.append(directory)
        return Windows(tokens=str(directory / "tokens"), windows=3, of=9)

    result = Stages(tmp_path, log=lambda line: None).run("draw", "k", build, Windows)
    assert built and result.windows == 3
    saved = json.loads((stage / RECORD).read_text())
    assert saved["key"] == "k" and saved["result"]["of"] == 9


def test_an_older_results_json_is_refused_in_one_line(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {}, "runs": {}}))
    with pytest.raises(UserError, match=f"version 1; this rho reads version {SCHEMA_VERSION}"):
        Results.read(path)
    path.write_text(json.dumps({"schema_version": 2, "config": {}}))  # no environment yet
    with pytest.raises(UserError, match="schema version 2;") as err:
        Results.read(path)
    assert "\n" not in str(err.value)
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "runs": []}))
    with pytest.raises(UserError) as err:
        Results.read(path)
    assert "\n" not in str(err.value)
