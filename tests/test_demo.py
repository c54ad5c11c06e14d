import json
import subprocess
import sys
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest

from rho.experiment.analyses import selection_rates
from rho.experiment.compute import tokens_to_reach


def test_tokens_to_reach_interpolates():
    tokens = np.array([0.0, 100.0, 200.0, 300.0])
    losses = np.array([6.0, 5.0, 4.0, 3.5])
    assert tokens_to_reach(tokens, losses, 4.5) == pytest.approx(150.0)
    assert tokens_to_reach(tokens, losses, 5.0) == pytest.approx(100.0)
    assert tokens_to_reach(tokens, losses, 7.0) == 0.0
    assert tokens_to_reach(tokens, losses, 3.0) is None


def test_selection_rates_hand_computed():
    # Two checkpoints, one window of 4 tokens; token 0 has no reference (window start).
    sample = {
        "checkpoints": ["checkpoint-1", "checkpoint-2"],
        "valid": np.array([[False, True, True, True]]),
        "selected": np.array([[[False, True, False, True]], [[False, True, True, False]]]),
        "noise": np.array([False, False, True, True]),
        "domain": np.array([0, 0, 1, 1], dtype=np.int16),
    }
    rates = selection_rates(sample, ["math", "noise"])
    # Valid tokens over both checkpoints: clean token 1 selected twice; noise tokens 2, 3 once each.
    assert rates["selection_rate_clean"] == 1.0
    assert rates["selection_rate_noise"] == 0.5
    assert rates["clean_precision"] == pytest.approx(0.5)
    assert rates["noise_fraction"] == pytest.approx(4 / 6)
    assert rates["selected_fraction_by_domain"] == {"math": 1.0, "noise": 0.5}
    assert rates["tokens_per_checkpoint"] == 3


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "rho", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "held-out math loss" in run.stdout
    results = json.loads((out / "results.json").read_text())
    for key in ("clm_final_heldout_loss", "slm_final_heldout_loss", "reference_heldout_loss"):
        assert np.isfinite(results[key])
    assert results["curves"]["clm"]["tokens"] == results["curves"]["slm"]["tokens"]
    assert 0.0 <= results["selection"]["selection_rate_noise"] <= 1.0
    report = (out / "report.md").read_text()
    assert "curves.png" in report and "selected.html" in report and "rho demo --quick" in report
    image = matplotlib.image.imread(out / "curves.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    parser = _Collect()
    parser.feed((out / "selected.html").read_text())
    assert "html" in parser.tags and "span" in parser.tags
    # A rerun replaces the demo's own directory; a foreign directory is refused.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    refused = subprocess.run(
        [sys.executable, "-m", "rho", "demo", "--quick", "--out", str(foreign)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "not made by `rho demo`" in refused.stderr
