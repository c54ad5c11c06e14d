"""The model-size ladder's published figures: the README's lines and docs/RESULTS.md's ladder
block, written from one `rho demo --setting ladder` run's results.json, committed as
docs/results/ladder.json (rho.experiment.published copies it, writes the blocks and checks
them)."""

from __future__ import annotations

from rho.errors import UserError
from rho.experiment.demo import demo_defaults
from rho.experiment.ladder_report import FIGURE, axis_lines
from rho.experiment.records.ladder import Agreement, AxisLadder, Ladder

SETTING = "rho demo --setting ladder"
ARM = "slm"  # the paper's method: its gap to CLM at each size is in the answer


def seed_counts(ladder: Ladder) -> set[int]:
    """How many seeds each arm's test loss is over, at every size and axis."""
    return {s.n for table in ladder.axes.values() for by_arm in table.losses.values()
            for s in by_arm.values()}  # fmt: skip


def ladder_command(ladder: Ladder) -> str:
    """The `rho demo --setting ladder` command whose shipped config made ``ladder``: its sizes,
    rule and seed count; any other ladder is refused (the documents publish the shipped one)."""
    found = ([r.base for r in ladder.rungs], ladder.rule.tokens_per_param,
             ladder.rule.arm_share, seed_counts(ladder))  # fmt: skip
    for command, quick in ((SETTING, False), (f"{SETTING} --quick", True)):
        v = demo_defaults(quick, "ladder")
        if found == (v["bases"], v["tokens_per_param"], v["arm_share"], {len(v["seeds"])}):
            return command
    raise UserError(
        f"this ladder (sizes {found[0]}, {found[1]:g} tokens per parameter, arm share "
        f"{found[2]:g}, {sorted(found[3])} seeds) is not the shipped ladder.yaml's: rerun "
        f"`{SETTING}` and publish its results.json"
    )


def agrees(a: Agreement) -> str:
    share = "n/a" if a.agreement is None else f"{a.agreement:.0%}"
    tau = "" if a.tau is None else f", Kendall's tau {a.tau:+.2f}"
    return f"{a.same_order + a.tied_both} of {a.pairs} pairs ({share}{tau})"


def axis_answer(ladder: Ladder, axis: str, table: AxisLadder) -> str:
    """One axis: how each smaller size's decisions hold at the largest size; the best arm and
    SLM minus CLM at each size."""
    base_of = {r.name: r.base for r in ladder.rungs}
    largest = base_of[ladder.rungs[-1].name]
    name = f"{axis} (target)" if axis == ladder.target_axis else axis
    held = "; ".join(f"{base_of[a.smaller]} {agrees(a)}" for a in table.to_largest)
    best = ", ".join(f"{base_of[s]} {ranking[0]}" for s, ranking in table.rankings.items())
    text = f"- {name}: decisions that hold at {largest}: {held}. Lowest test loss: {best}."
    gaps = [(base_of[s], by[ARM].mean - by["clm"].mean) for s, by in table.losses.items()
            if ARM in by and "clm" in by]  # fmt: skip
    if gaps:
        text += " SLM minus CLM: " + ", ".join(f"{b} {g:+.3f}" for b, g in gaps) + " nats."
    return text


def readme_ladder_block(ladder: Ladder, source: str) -> str:
    rungs, rule = ladder.rungs, ladder.rule
    (seeds,) = seed_counts(ladder)
    intro = (
        "Does the ranking at a small size predict a larger one's? "
        f"`{ladder_command(ladder)}` races the same arms at {', '.join(r.base for r in rungs)} "
        f"({rungs[0].n_params / 1e6:.2g}M to {rungs[-1].n_params / 1e6:.2g}M parameters; each "
        f"base pretrained on {rule.tokens_per_param:g} tokens per parameter, each arm trained "
        f"on {rule.tokens_per_param * rule.arm_share:g} × N tokens; {seeds} seeds; "
        f"[{source}]({source}); a pair of arms within the seed spread is a tie):"
    )
    return "\n".join([intro, "", *(axis_answer(ladder, a, t) for a, t in ladder.axes.items())])


def results_ladder_block(ladder: Ladder, source: str) -> str:
    name = source.rsplit("/", 1)[-1]
    (seeds,) = seed_counts(ladder)
    seconds = [r.seconds for r in ladder.rungs]
    took = (
        f"its stages took {sum(seconds):,.0f} s ("
        + ", ".join(f"{r.base} {r.seconds:,.0f} s" for r in ladder.rungs) + ")"
        if None not in seconds else "its stages' seconds are not recorded"
    )  # fmt: skip
    head = (
        f"Written by `python bench/readme_results.py` from [{name}](results/{name}), the "
        f"results.json of one `{ladder_command(ladder)}`: {seeds} seeds per arm at every size; "
        f"{took}. Budgets by one rule: {ladder.rule.text}."
    )
    sizes = ["| size | parameters (N) | base pretraining tokens | tokens per arm |",
             "|---|---|---|---|"]  # fmt: skip
    sizes += [f"| {r.base} | {r.n_params:,} | {r.base_tokens:,} | {r.train_tokens:,} |"
              for r in ladder.rungs]  # fmt: skip
    answers = [axis_answer(ladder, a, t) for a, t in ladder.axes.items()]
    lines = [head, "", *sizes, "", *answers, ""]
    lines += [f"![each arm's test loss minus CLM's against model size]({FIGURE})", ""]
    for axis, table in ladder.axes.items():
        lines += axis_lines(ladder, axis, table, heading="####")
    return "\n".join(lines).rstrip("\n")


def ladder_blocks(ladder: Ladder, source: str) -> dict[str, str]:
    """Block name -> its text, from ``ladder`` (read from ``source``, repository-relative)."""
    return {
        "readme-ladder": readme_ladder_block(ladder, source),
        "ladder": results_ladder_block(ladder, source),
    }
