"""`rho experiment --compare OTHER_RUN` (rho.experiment.compare): two runs' test losses side by
side, on results.json files written through the Results model (and in a real `rho` process)."""

from __future__ import annotations

import json

import pytest
from helpers import assert_one_line_error, hand_results, rho_command, run_rho

from rho.errors import UserError
from rho.experiment.compare import inside
from rho.experiment.records import Spread

THIS = {
    "clm": {"target": [4.00, 4.02, 4.04], "general": [5.00, 5.01, 5.02]},
    "slm": {"target": [3.90, 3.93, 3.91], "general": [5.10, 5.12, 5.11]},
    "clm-mix": {"target": [3.95], "general": [5.00]},
}
OTHER = {
    "clm": {"target": [4.01, 4.03, 4.05], "general": [5.00, 5.01, 5.02]},
    "slm": {"target": [3.80, 3.82, 3.81], "general": [5.10, 5.12, 5.11]},
    "clm-mix": {"target": [3.96], "general": [5.01]},
    "slm-random": {"target": [4.10], "general": [5.20]},
}


@pytest.fixture
def runs(tmp_path):
    this, other = tmp_path / "this", tmp_path / "other"
    for path, losses, seeds in ((this, THIS, [0, 1, 2]), (other, OTHER, [3, 4, 5])):
        path.mkdir()
        hand_results(losses, seeds=seeds).write(path / "results.json")
    return this, other


def rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(arm, axis) -> the rest of its line, split on spaces."""
    out = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) > 2 and words[0] in OTHER and words[1] in ("target", "general"):
            out[words[0], words[1]] = words[2:]
    return out


def test_compare_two_runs(runs, capsys):
    this, other = runs
    assert rho_command("experiment", ["--out", this, "--compare", other / "results.json"]) == 0
    out = capsys.readouterr().out
    found = rows(out)
    # clm on target: 4.02 vs 4.03, within the larger std (0.02 both): inside
    assert found["clm", "target"] == ["4.0200", "±", "0.0200", "(3)", "4.0300", "±", "0.0200",
                                      "(3)", "-0.0100", "yes"]  # fmt: skip
    assert found["clm", "general"][-2:] == ["+0.0000", "yes"]
    # slm on target: 3.9133 vs 3.81, 0.1033 apart, stds 0.0153 and 0.01: outside
    assert found["slm", "target"][-2:] == ["+0.1033", "no"]
    assert found["clm-mix", "target"] == ["3.9500", "(1)", "3.9600", "(1)", "-0.0100", "unknown"]
    assert found["slm-random", "general"] == ["—", "5.2000", "(1)", "—", "—"]  # only the other's
    assert "inside the seed spread: |difference of the means| <= the larger of the two runs' " \
           "sample std over seeds" in out  # fmt: skip
    assert "3 inside the seed spread, 1 outside, 2 unknown (a single seed)" in out
    assert "settings that differ: seeds" in out and "input data: the same" in out


def test_compare_refuses_a_missing_or_older_run_in_one_line(runs, tmp_path):
    this, other = runs
    old = json.loads((other / "results.json").read_text())
    old["schema_version"] = 2
    (other / "results.json").write_text(json.dumps(old))
    for out, compare, message in (
        (this, tmp_path / "nowhere", "nowhere: no results.json there"),
        (this, other, "schema version 2; this rho reads version"),
        (tmp_path / "unrun", this, "unrun: no results.json there"),
    ):
        with pytest.raises(UserError, match=message) as err:
            rho_command("experiment", ["--out", out, "--compare", compare])
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_compare_in_a_real_process(runs, tmp_path):
    this, other = runs
    proc = run_rho("experiment", "--out", this, "--compare", other)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rows(proc.stdout)["slm", "target"][-2:] == ["+0.1033", "no"]
    missing = run_rho("experiment", "--out", this, "--compare", tmp_path / "nowhere")
    assert_one_line_error(missing, "nowhere: no results.json there", command="experiment")


def test_inside_is_the_larger_std():
    def s(mean, std, n=3):
        return Spread(mean=mean, std=std, n=n, values=[mean] * n)

    assert inside(s(4.0, 0.02), s(4.03, 0.01)) is False  # 0.03 > 0.02
    assert inside(s(4.0, 0.01), s(4.015, 0.02)) is True  # 0.015 <= 0.02
    assert inside(s(4.0, 0.0, n=1), s(4.0, 0.02)) is None  # one seed: spread unknown
