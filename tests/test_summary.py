"""The experiment summary (rho.experiment.summary, rho.experiment.figures): spreads, supported
differences, cost to reach, break-even runs, winners, Markdown and PNGs, on hand-computed runs."""

from __future__ import annotations

import json
import math

import pytest

from rho.experiment.figures import plot_axes, plot_curves
from rho.experiment.records import ArmRun, Overhead, Spread
from rho.experiment.summary import (
    break_even,
    compute_table,
    difference,
    loss_table,
    spread,
    winners,
)
from rho.experiment.tables import compute_markdown, loss_markdown, winners_markdown

TOKENS = [0, 100, 200, 300, 400]


def _arm_run(fields: dict) -> ArmRun:
    """A run record with what the arithmetic reads; the rest placeholders."""
    placeholders = {"run": "run", "steps": 4, "warmup_steps": 1, "windows_read": 1,
                    "windows_trained": 1, "sample_windows": {}, "n_params": 1}  # fmt: skip
    return ArmRun.model_validate({**placeholders, **fields})


def _run(seed, curve, test, validation=None, tokens=TOKENS):
    return _arm_run({
        "seed": seed,
        "final": {
            "validation": validation or {"target": curve[-1], "general": test["general"]},
            "test": test,
        },
        "curve": {
            "tokens": list(tokens),
            "flops": [10.0 * t for t in tokens],
            "seconds": [t / 10 for t in tokens],
            "target": list(curve),
        },
        "train_tokens": tokens[-1],
        "flops_train": 10.0 * tokens[-1],
        "seconds_train": tokens[-1] / 10,
    })  # fmt: skip


@pytest.fixture
def runs():
    # clm ends at 4.0 and 4.2: the target is 4.1.
    # slm seed 0 reaches 4.1 at 200 tokens (4.5 → 4.1 between 100 and 200), seed 1 at 150
    # (4.3 → 3.9: halfway). slm-random never does.
    return {
        "clm": [
            _run(0, [5.0, 4.6, 4.3, 4.1, 4.0], {"target": 4.00, "general": 4.50}),
            _run(1, [5.0, 4.6, 4.4, 4.3, 4.2], {"target": 4.02, "general": 4.52}),
        ],
        "slm": [
            _run(0, [5.0, 4.5, 4.1, 3.9, 3.8], {"target": 4.20, "general": 4.60}),
            _run(1, [5.0, 4.3, 3.9, 3.8, 3.7], {"target": 4.22, "general": 4.62}),
        ],
        "slm-random": [
            _run(0, [5.0, 4.8, 4.6, 4.5, 4.4], {"target": 4.40, "general": 4.70}),
            _run(1, [5.0, 4.8, 4.7, 4.5, 4.45], {"target": 4.42, "general": 4.72}),
        ],
    }


OVERHEAD = {
    "slm": Overhead(flops=1000.0, seconds=5.0, what="reference training + scoring"),
    "slm-random": Overhead(),
}


def test_spread():
    s = spread([1, 2, 3, 4])
    assert s.mean == 2.5 and s.n == 4 and s.values == [1.0, 2.0, 3.0, 4.0]
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # ddof=1
    assert spread([4.2]) == Spread(mean=4.2, std=0.0, n=1, values=[4.2])
    with pytest.raises(ValueError):
        spread([])


def test_difference_is_welchs_t_test_by_hand():
    # var 1 each: se = sqrt(1/3 + 1/3); t = -3 / se = -3.674; Welch df = (2/3)² / (2·(1/3)²/2) = 4
    d = difference([1, 2, 3], [4, 5, 6])
    assert d.delta == pytest.approx(-3.0) and d.se == pytest.approx(math.sqrt(2 / 3))
    assert d.t == pytest.approx(-3 / math.sqrt(2 / 3)) and d.df == pytest.approx(4.0)
    assert d.critical == pytest.approx(2.776, abs=1e-3)  # t(0.975, 4), not 2
    assert d.p == pytest.approx(0.0213, abs=1e-3) and d.supported is True
    d = difference([1, 3], [2, 4])  # var 2 each: se = sqrt(2), t = -0.707, df 2
    assert d.delta == pytest.approx(-1.0) and d.se == pytest.approx(math.sqrt(2))
    assert d.p == pytest.approx(0.553, abs=1e-3) and d.supported is False
    d = difference([1.0], [2.0, 3.0])
    assert d.delta == -1.5 and d.se is None and d.supported is None


def test_loss_table(runs):
    table = loss_table(runs)
    assert table["clm"]["target"].mean == pytest.approx(4.01)
    assert table["clm"]["target"].std == pytest.approx(math.sqrt(2 * 0.01**2))
    assert table["slm"]["general"].values == [4.60, 4.62]
    val = loss_table(runs, split="validation")
    assert val["clm"]["target"].values == [4.0, 4.2]


def test_compute_table_interpolates_to_reach(runs):
    table = compute_table(runs, OVERHEAD, baseline="clm", amortise=(1, 10))
    json.dumps({arm: row.model_dump() for arm, row in table.items()})  # JSON-ready
    slm = table["slm"]
    assert slm.target == pytest.approx(4.1) and slm.reached == 2 and slm.seeds == 2
    assert slm.tokens.values == pytest.approx([200.0, 150.0])
    assert slm.tokens.mean == pytest.approx(175.0)
    assert slm.tokens.std == pytest.approx(math.sqrt(2 * 25.0**2))
    assert slm.flops_train.mean == pytest.approx(1750.0)
    assert slm.seconds_train.mean == pytest.approx(17.5)
    assert slm.ratio.tokens.mean == pytest.approx(175 / 400)
    assert slm.ratio.flops_train.mean == pytest.approx(1750 / 4000)
    flops = slm.flops_total
    assert flops.one_off.mean == pytest.approx(2750.0)
    assert flops.ratio_one_off.mean == pytest.approx(2750 / 4000)
    assert [a.runs for a in flops.amortised] == [1, 10]
    assert flops.amortised[1].total.mean == pytest.approx(1850.0)
    assert flops.amortised[1].ratio.mean == pytest.approx(1850 / 4000)
    assert flops.break_even == 1  # saves 2250 per run, overhead 1000
    secs = slm.seconds_total
    assert secs.one_off.mean == pytest.approx(22.5)
    assert secs.amortised[1].total.mean == pytest.approx(18.0)
    assert secs.break_even == 1
    # The baseline is measured on its curve like every arm: seed 1 ends at 4.2, above the
    # target 4.1 (the mean of its seeds), so clm does not reach it on every seed.
    clm = table["clm"]
    assert clm.reached == 1 and clm.tokens is None and clm.ratio.tokens is None
    assert clm.flops_total.break_even is None
    assert clm.overhead == Overhead()


def test_arm_that_never_reaches_is_none_everywhere(runs):
    row = compute_table(runs, OVERHEAD)["slm-random"]
    assert row.reached == 0
    for key in ("tokens", "flops_train", "seconds_train"):
        assert getattr(row, key) is None and getattr(row.ratio, key) is None
    for cost in ("flops_total", "seconds_total"):
        t = getattr(row, cost)
        assert t.one_off is None and t.ratio_one_off is None and t.break_even is None
        assert all(a.total is None and a.ratio is None for a in t.amortised)


def test_one_seed_short_means_not_reached(runs):
    runs["slm"][1].curve.losses["target"] = [5.0, 4.8, 4.6, 4.5, 4.4]
    row = compute_table(runs, OVERHEAD)["slm"]
    assert row.reached == 1 and row.tokens is None  # no mean over the lucky seed


def test_break_even_by_hand():
    # overhead 10, arm training 6, baseline 10: 6 + 10/N < 10 ⇔ N > 2.5 → 3
    assert break_even(6.0, 10.0, 10.0) == 3
    assert 6 + 10 / 3 < 10 and not 6 + 10 / 2 < 10
    assert break_even(6.0, 8.0, 10.0) == 3  # N > 2 exactly: strict, so 3
    assert break_even(6.0, 0.0, 10.0) == 1
    assert break_even(10.0, 5.0, 10.0) is None  # training alone costs as much
    assert break_even(11.0, 0.0, 10.0) is None
    assert break_even(10.0, 0.0, 10.0, base_overhead=5.0) == 1


def test_break_even_through_compute_table():
    def one(flops_end, loss_end):
        return _arm_run({
            "seed": 0,
            "final": {"validation": {"target": loss_end}, "test": {"target": loss_end}},
            "curve": {
                "tokens": [0, 10],
                "flops": [0.0, flops_end],
                "seconds": [0.0, 1.0],
                "target": [5.0, loss_end],
            },  # fmt: skip
            "train_tokens": 10,
            "flops_train": flops_end,
            "seconds_train": 1.0,
        })  # fmt: skip

    # clm ends at 4.0 after 10 FLOPs; slm reaches 4.0 at 60% of its run, i.e. 6 FLOPs.
    runs = {"clm": [one(10.0, 4.0)], "slm": [one(10.0, 5.0 - 1 / 0.6)]}
    row = compute_table(runs, {"slm": Overhead(flops=10.0)}, amortise=(1, 3, 100))["slm"]
    assert row.flops_train.mean == pytest.approx(6.0)
    assert row.flops_total.break_even == 3
    assert row.flops_total.ratio_one_off.mean == pytest.approx(1.6)
    ratios = [a.ratio.mean for a in row.flops_total.amortised]
    assert ratios == pytest.approx([1.6, (6 + 10 / 3) / 10, 0.61])
    assert row.tokens.std == 0.0 and row.tokens.n == 1


def test_winners_when_the_baseline_wins(runs):
    lt = loss_table(runs)
    ct = compute_table(runs, OVERHEAD, amortise=(1, 10, 100))
    w = winners(lt, ct)
    target = w.loss["target"]
    assert target.arm == "clm" and target.runner_up == "slm"
    assert target.ranking == ["clm", "slm", "slm-random"]
    assert target.difference.delta == pytest.approx(-0.2)
    assert target.difference.supported is True  # std 0.014 each: t = -14.1, df 2
    assert w.loss["general"].arm == "clm"
    assert w.tokens.arm == "slm" and w.tokens.runner_up is None  # clm: 1 of 2
    assert w.flops_one_off.arm == "slm"  # 2750 vs clm's 4000
    assert w.flops_amortised.arm == "slm" and w.flops_amortised.runs == 100
    assert "slm-random" not in w.tokens.ranking  # never reached

    text = winners_markdown(w)
    assert "On target test loss, clm wins (4.0100 ± 0.0141 nats/token vs 4.2100 ± 0.0141" in text
    assert "is supported by Welch's t-test: t = -14.14, df = 2.0, p = 0.005 < 0.05" in text
    assert "slm is not the winner: it places 2 of 3." in text
    assert "Fewest tokens trained to reach the target (4.1000): slm" in text
    assert "amortised over 100 runs: slm" in text


def test_winners_not_supported_and_unknown(runs):
    runs["slm"][0].final.test["target"] = 3.90
    runs["slm"][1].final.test["target"] = 4.10  # mean 4.00 vs clm 4.01: within spread
    w = winners(loss_table(runs))
    assert w.loss["target"].arm == "slm"
    assert w.loss["target"].difference.supported is False
    assert w.tokens is None
    text = winners_markdown(w)
    assert "On target test loss, slm wins" in text and "is not supported by Welch's" in text
    single = {arm: seeds[:1] for arm, seeds in runs.items()}
    text = winners_markdown(winners(loss_table(single)))
    assert "untested: an arm has a single seed" in text


def test_markdown_contains_the_numbers(runs):
    lt = loss_table(runs)
    text = loss_markdown(lt, runs)
    assert "| clm | 4.0100 ± 0.0141 (2 seeds) | 4.5100 ± 0.0141 (2 seeds) | 0, 1 |" in text
    one = loss_markdown(loss_table({"clm": runs["clm"][:1]}))
    assert "4.0000 (1 seed, spread unknown)" in one
    text = compute_markdown(compute_table(runs, OVERHEAD, amortise=(1, 10)))
    assert "| 175 ± 35.36 (0.438× ± 0.0884) |" in text  # tokens to reach and ratio
    assert "| 2.75e+03 ± 354 (0.688× ± 0.0884) |" in text  # one-off total FLOPs
    assert "| 0.463× ± 0.0884 | 1 |" in text  # amortised over 10, break-even
    assert "| 18 ± 3.5 (0.438× ± 0.0884) | 5 | 23 ± 3.5 (0.563× ± 0.0884) |" in text  # 2 sig. figs
    # slm-random reached on no seed: no cost, and its row says so
    assert "| slm-random | 0 of 2 seeds | — | corpus tokens | — |" in text
    assert "reference training + scoring" in text


def test_plots_write_pngs(runs, tmp_path):
    # Seeds on different token grids are interpolated onto a common one.
    runs["slm"][1].curve.tokens = [0, 150, 250, 350, 400]
    plot_axes(loss_table(runs), tmp_path / "axes.png")
    plot_curves(runs, tmp_path / "curves.png")
    for name in ("axes.png", "curves.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
