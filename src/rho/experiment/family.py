"""The family of tests a `rho experiment` report draws its claims from, adjusted together by
Holm–Bonferroni (rho.experiment.stats.holm), so that with many arms and axes a difference is
called supported only where the family's chance of any false one stays under alpha.

The family of one run (``WHAT``): every arm against clm and against clm-mix on every axis's
test loss; each winner against its runner-up (test loss on every axis, tokens, one-off and
amortised FLOPs to the target axis's target); each arm's one-off FLOPs to every axis's target
against clm-mix's. A comparison met twice (slm against clm on an axis is also slm's lead when
clm is its runner-up) is one test; a comparison that cannot be tested (a single seed, no
spread) claims nothing and is left out.
"""

from __future__ import annotations

from rho.experiment.records import Difference, Family, Frontier, Winners
from rho.experiment.stats import ALPHA, adjust, holm

HOLM = "Holm–Bonferroni"
WHAT = (
    "every arm against clm and against clm-mix on every axis's test loss; each winner against "
    "its runner-up (test loss on every axis, tokens, one-off and amortised FLOPs to the "
    "target); each arm's one-off FLOPs to every axis's target against clm-mix's. A comparison met "
    "twice counts once; one that cannot be tested (a single seed, no spread) is left out"
)


def members(
    against: dict[str, dict[str, dict[str, Difference]]],
    winners: Winners,
    frontiers: dict[str, Frontier],
    mix: str,
    target_axis: str | None = None,
) -> dict[str, list[Difference]]:
    """Test name -> the Differences that are that test (one, or the same comparison met in
    two places), in the order the report gives them. A name is "QUANTITY: A vs B" with the
    two arms sorted, so a comparison's name does not depend on which side it was met from."""
    found: dict[str, list[Difference]] = {}

    def add(quantity: str, a: str, b: str | None, d: Difference | None) -> None:
        if b is not None and d is not None and d.p is not None:
            first, second = sorted((a, b))
            found.setdefault(f"{quantity}: {first} vs {second}", []).append(d)

    for baseline, per_arm in against.items():
        for arm, per_axis in per_arm.items():
            for axis, d in per_axis.items():
                add(f"{axis} test loss", arm, baseline, d)
    for axis, rank in winners.loss.items():
        if rank is not None:
            add(f"{axis} test loss", rank.arm, rank.runner_up, rank.difference)
    amortised = winners.flops_amortised
    for quantity, rank in (
        ("tokens to the target", winners.tokens),
        ("one-off FLOPs to the target", winners.flops_one_off),
        (f"FLOPs amortised over {amortised and amortised.runs} runs", amortised),
    ):
        if rank is not None:
            add(quantity, rank.arm, rank.runner_up, rank.difference)
    for axis, frontier in frontiers.items():
        for arm, entry in frontier.arms.items():
            where = "the target" if axis == target_axis else f"the {axis} target"
            add(f"one-off FLOPs to {where}", arm, mix, entry.against_mix)
    return found


def adjust_family(
    against: dict[str, dict[str, dict[str, Difference]]],
    winners: Winners,
    frontiers: dict[str, Frontier],
    mix: str,
    target_axis: str | None = None,
) -> Family:
    """Holm-adjust every test of the family in place (each Difference's ``p_adjusted``,
    ``family`` and ``supported``) and return the family's record."""
    found = members(against, winners, frontiers, mix, target_axis)
    names = list(found)
    for name, p in zip(names, holm([found[n][0].p for n in names]), strict=True):
        for d in found[name]:  # the same comparison: the same data, the same p
            adjust(d, p, len(names))
    return Family(method=HOLM, alpha=ALPHA, what=WHAT, size=len(names), tests=names)
