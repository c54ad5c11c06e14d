"""The report's tests (rho.experiment.stats, family, facts, tables): Holm–Bonferroni by hand,
the family of one run and its size, every arm against clm and clm-mix, and the report's words
about seeds ("reached on k of n seeds"), on hand-made records."""

from __future__ import annotations

import itertools

import pytest
from helpers import assert_traceable, hand_results

from rho.experiment.family import adjust_family
from rho.experiment.records import Difference, Winners
from rho.experiment.report import report_lines
from rho.experiment.stats import WELCH, difference, holm, verdict
from rho.experiment.tables import (
    against_markdown,
    compute_markdown,
    frontier_lines,
    winners_markdown,
)

# --- Holm–Bonferroni by hand ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, adjusted",
    [
        # sorted 0.01, 0.03, 0.04 → 3·0.01, 2·0.03, max(0.06, 1·0.04): back in the order given
        ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
        # 5·0.01, 4·0.02, 3·0.03, max(0.09, 2·0.04), max(0.09, 0.05): none below 0.05
        ([0.01, 0.02, 0.03, 0.04, 0.05], [0.05, 0.08, 0.09, 0.09, 0.09]),
        # ties: 3·0.001, then 2·0.02 for both 0.02s, whichever of them sorts first
        ([0.02, 0.02, 0.001], [0.04, 0.04, 0.003]),
        ([0.5, 0.6], [1.0, 1.0]),  # capped at 1, and kept monotone
        ([0.03], [0.03]),  # a family of one: its own p
        ([], []),
    ],
)
def test_holm_by_hand(raw, adjusted):
    assert holm(raw) == pytest.approx(adjusted)


def test_holm_is_monotone_bounded_and_order_free():
    raw = [0.2, 0.001, 0.04, 0.04, 0.011, 0.3, 0.0049]
    adjusted = holm(raw)
    m = len(raw)
    for p, q in zip(raw, adjusted, strict=True):
        assert p <= q <= min(1.0, m * p) + 1e-12  # never below raw, never above Bonferroni
    by_raw = sorted(range(m), key=lambda i: raw[i])
    assert [adjusted[i] for i in by_raw] == sorted(adjusted)  # the raw order is kept
    for perm in itertools.islice(itertools.permutations(range(m)), 0, 5040, 97):
        assert holm([raw[i] for i in perm]) == pytest.approx([adjusted[i] for i in perm])


def _tested(p: float) -> Difference:
    return Difference(delta=-1.0, test=WELCH, t=-3.0, df=4.0, critical=2.78, p=p, n=[3, 3])


def test_a_family_adjusts_each_test_and_names_it():
    """Three tests, each below 0.05 alone: after Holm only the smallest is supported."""
    against = {
        "clm": {"slm": {"target": _tested(0.01), "general": _tested(0.04)}},
        "clm-mix": {"slm": {"target": _tested(0.03)}},
    }
    family = adjust_family(against, Winners(loss={}), {}, "clm-mix")
    assert family.size == 3 and family.method == "Holm–Bonferroni" and family.alpha == 0.05
    assert family.tests == [
        "target test loss: clm vs slm",
        "general test loss: clm vs slm",
        "target test loss: clm-mix vs slm",
    ]
    tests = [against["clm"]["slm"]["target"], against["clm"]["slm"]["general"],
             against["clm-mix"]["slm"]["target"]]  # fmt: skip
    assert [d.p for d in tests] == [0.01, 0.04, 0.03]  # the raw p kept
    assert [d.p_adjusted for d in tests] == pytest.approx([0.03, 0.06, 0.06])
    assert [d.supported for d in tests] == [True, False, False]
    assert all(d.family == 3 for d in tests)
    text = verdict(tests[1])
    assert "not supported" in text and "p = 0.040, Holm-adjusted p = 0.060 ≥ 0.05" in text
    assert verdict(difference([1, 2, 3], [4, 5, 6])).endswith("p = 0.021 < 0.05")  # alone


# --- The family of a run, on hand-made records --------------------------------------------------

# clm's target is 4.02 (its mean): seeds 0 and 1 reach it, seed 2 (4.04) does not.
LOSSES = {
    "clm": {"target": [4.00, 4.02, 4.04], "general": [5.00, 5.01, 5.02]},
    "slm": {"target": [3.90, 3.93, 3.91], "general": [5.10, 5.12, 5.11]},
    "clm-mix": {"target": [3.95, 3.99, 3.97], "general": [5.00, 5.03, 5.01]},
}


@pytest.fixture
def results():
    return hand_results(LOSSES)


def test_the_family_of_a_run_and_its_size(results):
    summary = results.summary
    # slm and clm-mix against clm, slm against clm-mix, on both axes (clm against the mix is
    # the mix's row against clm); slm's lead on target (over clm-mix) and clm's on general
    # (over clm-mix) are tests already there; tokens, one-off FLOPs (also the frontier's slm
    # against the mix) and amortised FLOPs: slm over clm-mix, clm reaching on 2 of 3 seeds.
    assert summary.tests.tests == [
        "target test loss: clm vs slm",
        "general test loss: clm vs slm",
        "target test loss: clm vs clm-mix",
        "general test loss: clm vs clm-mix",
        "target test loss: clm-mix vs slm",
        "general test loss: clm-mix vs slm",
        "tokens to the target: clm-mix vs slm",
        "one-off FLOPs to the target: clm-mix vs slm",
        "FLOPs amortised over 100 runs: clm-mix vs slm",
    ]
    assert summary.tests.size == 9
    against = summary.against
    assert set(against) == {"clm", "clm-mix"}
    assert set(against["clm"]) == {"slm", "clm-mix"} and set(against["clm-mix"]) == {"slm"}
    tests = [d for per_arm in against.values() for per_axis in per_arm.values()
             for d in per_axis.values()]  # fmt: skip
    smallest = min(tests, key=lambda d: d.p)
    assert smallest.p_adjusted == pytest.approx(9 * smallest.p)  # the first of 9 steps
    assert all(d.family == 9 and d.p_adjusted >= d.p for d in tests)
    assert all(d.supported == (d.p_adjusted < 0.05) for d in tests)
    # slm against clm on target: paired, p = 0.012 alone, not supported in a family of 9
    slm = against["clm"]["slm"]["target"]
    assert slm.test == "paired t-test (by seed)" and slm.p == pytest.approx(0.0124, abs=1e-4)
    assert slm.supported is False
    # The same comparison met twice is one test with one adjusted p.
    lead = summary.winners.loss["target"].difference
    assert lead is not against["clm-mix"]["slm"]["target"]
    assert lead.p_adjusted == against["clm-mix"]["slm"]["target"].p_adjusted
    assert summary.frontier.arms["slm"].against_mix.p_adjusted == (
        summary.winners.flops_one_off.difference.p_adjusted
    )


def test_raw_and_adjusted_p_are_in_results_json(results, tmp_path):
    from rho.experiment.records import Results

    back = Results.read(results.write(tmp_path / "results.json"))
    d = back.summary.against["clm"]["slm"]["target"]
    assert d.p == pytest.approx(0.0124, abs=1e-4) and d.p_adjusted > 0.05 and d.family == 9
    assert back.summary.tests.size == 9 and back.schema_version == 3


def test_every_arm_against_clm_and_the_mix_in_the_report(results):
    text = against_markdown(results.summary.against)
    # slm − clm-mix on target: 3.9133 − 3.97
    assert "| slm | clm-mix | target | -0.0567 | not supported by Welch's t-test:" in text
    assert "| clm-mix | clm | general | +0.0033 |" in text
    assert "| clm | clm-mix |" not in text  # that test is clm-mix's row against clm
    assert text.count("Holm-adjusted p = ") == 6
    report = "\n".join(report_lines(results, "hand-made"))
    assert "### Every arm against clm and clm-mix" in report
    assert "Holm–Bonferroni-adjusted p over its family of 9 tests" in report
    assert_traceable(report, results.model_dump())


def test_a_run_of_single_seeds_has_no_test_to_adjust():
    single = hand_results({arm: {a: v[:1] for a, v in per.items()} for arm, per in LOSSES.items()})
    assert single.summary.tests.size == 0 and single.summary.tests.tests == []
    d = single.summary.against["clm"]["slm"]["target"]
    assert d.p is None and d.p_adjusted is None and d.supported is None
    report = "\n".join(report_lines(single, "hand-made"))
    assert "No difference in this report could be tested" in report
    assert "untested: an arm has a single seed" in report


def test_no_mix_no_tests_against_it():
    results = hand_results({arm: LOSSES[arm] for arm in ("clm", "slm")})
    assert list(results.summary.against) == ["clm"]
    report = "\n".join(report_lines(results, "hand-made"))
    assert "### Every arm against clm\n" in report


# --- Words about seeds ---------------------------------------------------------------------------


def test_an_arm_reached_on_some_seeds_says_how_many(results):
    summary = results.summary
    frontier = "\n".join(frontier_lines(summary.frontier, summary.compute))
    assert "| clm | reached on 2 of 3 seeds | n/a | n/a |" in frontier
    assert "| slm | 0.949× ± 0.00696 | 3 of 3 seeds | -26.5 FLOPs: not supported" in frontier
    compute = compute_markdown(summary.compute)
    assert "| clm | 2 of 3 seeds | — | corpus tokens | — |" in compute
    assert "| slm | 3 of 3 seeds | 94.89 ± 0.6962" in compute


def test_no_arm_on_every_seed_says_each_ones_count():
    # slm's seed 1 and the mix's seed 2 end above the target (4.02): no arm reaches it on
    # every seed, so no compute rank; the sentence gives each arm's count.
    losses = {**LOSSES, "slm": {**LOSSES["slm"], "target": [3.90, 4.10, 3.91]},
              "clm-mix": {**LOSSES["clm-mix"], "target": [3.95, 3.99, 4.30]}}  # fmt: skip
    summary = hand_results(losses).summary
    assert summary.winners.tokens is None
    text = winners_markdown(summary.winners, compute=summary.compute)
    counts = "(seeds that reached it: clm 2 of 3, slm 2 of 3, clm-mix 2 of 3)"
    assert f"Fewest tokens trained to reach the target (4.0200): no arm reached the target on " \
           f"every seed {counts}." in text  # fmt: skip
    left_out = winners_markdown(summary.winners, left_out=["clm-mix"], compute=summary.compute)
    assert "(seeds that reached it: clm 2 of 3, slm 2 of 3)" in left_out  # tokens: not ranked
    assert "every seed" not in "\n".join(frontier_lines(summary.frontier, summary.compute))
