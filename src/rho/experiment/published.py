"""The demo's published figures: the blocks of README.md and docs/RESULTS.md written from one
`rho demo` run's results.json (and one `rho demo --setting ladder`'s: published_ladder), a copy
of which is committed under docs/results/.

A block lies between ``<!-- results:start NAME FILE -->`` and ``<!-- results:end -->``, FILE
being the results it was written from (relative to the repository root). ``publish`` writes
the copy and the blocks (``python bench/readme_results.py RUN/results.json``); ``stale`` reads
every block's FILE again and says which block no longer matches what it would write, so a
figure typed into a block by hand fails tests/test_readme_results.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from rho.errors import UserError
from rho.experiment.arms import ARMS
from rho.experiment.demo import demo_defaults
from rho.experiment.ladder_report import FIGURE, plot_ladder
from rho.experiment.published_ladder import ladder_blocks, ladder_command
from rho.experiment.records import Difference, Results, Spread
from rho.experiment.records.ladder import LadderResults
from rho.experiment.tables import decontam_markdown
from rho.io.files import read_json, write_text_atomic

BLOCK = re.compile(
    r"<!-- results:start (?P<name>[\w-]+) (?P<source>\S+) -->\n(?P<body>.*?)<!-- results:end -->",
    re.S,
)
DOCUMENTS = {  # block name -> its document
    "readme": "README.md",
    "demo": "docs/RESULTS.md",
    "readme-ladder": "README.md",
    "ladder": "docs/RESULTS.md",
}
COPIES = "docs/results"  # where the results a block is written from are committed


def demo_command(results: Results) -> str:
    """The `rho demo` command whose shipped config the run used (the demo's data paths aside);
    a run of any other config is refused: the documents publish the shipped demo only."""
    cfg, differs = results.config, {}
    for command, quick in (("rho demo", False), ("rho demo --quick", True)):
        wrong = {k: v for k, v in demo_defaults(quick).items() if getattr(cfg, k) != v}
        if not wrong:
            return command
        differs[command] = wrong
    key, value = next(iter(differs["rho demo"].items()))
    raise UserError(
        f"these results are not from `rho demo` with the shipped demo.yaml ({key} is "
        f"{getattr(cfg, key)!r}, demo.yaml says {value!r}): rerun `rho demo` and publish its "
        "results.json"
    )


def loss(s: Spread) -> str:
    return f"{s.mean:.3f}" if s.n < 2 else f"{s.mean:.3f} ± {s.std:.3f}"


def p_text(d: Difference) -> str:
    """The test and its Holm-adjusted p (results.json has the raw p too), short; "untested"
    when a side has no spread."""
    if d.p is None:
        return "untested"
    p = d.p if d.p_adjusted is None else d.p_adjusted
    p = "adjusted p < 0.001" if p < 0.001 else f"adjusted p = {p:.3f}"
    return f"{d.test}, {p}" + ("" if d.supported else ", not supported")


def loss_table(results: Results, long: bool) -> list[str]:
    """Test loss per arm and axis, the lowest mean of each axis in bold; the arms' lines are
    the report's (the config's settings filled in)."""
    axes, losses = results.data.axes, results.summary.losses
    share = results.data.mix.share if results.data.mix else results.config.mix_share
    head = [f"{axes[0]} (target)", *axes[1:]]
    what = f"arm (test loss, nats/token, mean ± sample std over {len(results.config.seeds)} seeds)"
    lines = [f"| {what if long else 'arm'} | {' | '.join(head)} |", "|---" * (len(axes) + 1) + "|"]
    best = {a: min(losses, key=lambda arm: losses[arm][a].mean) for a in axes}
    for arm, by_axis in losses.items():
        cells = [loss(by_axis[a]) for a in axes]
        cells = [f"**{c}**" if best[a] == arm else c for a, c in zip(axes, cells, strict=True)]
        lines.append(f"| {ARMS[arm].text(results.config, share)} | {' | '.join(cells)} |")
    return lines


def against(results: Results, baseline: str, verbose: bool) -> list[str]:
    """Every arm's test loss minus ``baseline``'s on every axis, with its test: one line, or
    (verbose) one line per arm."""
    rows = []
    for arm, by_axis in results.summary.against.get(baseline, {}).items():
        tests = [(a, d, p_text(d)) for a, d in by_axis.items()]
        cells = [
            f"{a} {d.delta:+.3f} ({t if verbose else t.split(', ', 1)[-1]})" for a, d, t in tests
        ]
        rows.append(f"{arm}: {', '.join(cells)}")
    if not rows:
        return []
    if verbose:
        family = results.summary.tests
        lead = (
            f"- Test loss minus {baseline}'s (a t-test each, Holm-adjusted over the report's "
            f"family of {family.size} tests; supported: adjusted p < {family.alpha}):"
        )
        return [lead, *[f"  - {r}" for r in rows]]
    return [f"- Test loss minus {baseline}'s: {'; '.join(rows)}."]


def compute(results: Results, verbose: bool) -> list[str]:
    """One-off FLOPs to clm's final validation loss on the target, as a ratio to clm's run,
    cheapest first; an arm that misses it on some seed says on how many seeds it reached it.
    One line, or (verbose) one line per arm, with its spread and its test against clm-mix."""
    s = results.summary
    reached, missed = [], []
    for arm, entry in s.frontier.arms.items():
        row, ratio = s.compute[arm], entry.ratio_one_off
        if arm == "clm":
            continue
        if ratio is None:
            missed.append(f"{arm}: reached on {row.reached} of {row.seeds} seeds")
            continue
        text = f"{arm}: {ratio.mean:.2f}" + (f" ± {ratio.std:.2f}" if verbose else "")
        if verbose and entry.seeds_below_clm is not None:
            text += f", below clm's run on {entry.seeds_below_clm} of {row.seeds} seeds"
        mix = entry.against_mix
        if verbose and mix is not None:
            more = "more" if mix.delta > 0 else "less"
            text += f"; {abs(mix.delta):.2g} FLOPs {more} than clm-mix ({p_text(mix)})"
        reached.append((ratio.mean, text))
    clm = s.compute["clm"]
    arms = [t for _, t in sorted(reached)] + missed
    lead = (
        f"Compute to clm's final validation loss on {s.target.axis} ({s.target.loss:.4f}, the "
        f"mean of its seeds; clm's own curve reaches it on {clm.reached} of {clm.seeds} seeds), "
        "one-off FLOPs, everything charged, × clm's run"
    )
    if verbose:
        return [f"- {lead}:", *[f"  - {a}" for a in arms]]
    return [f"- {lead}: {'; '.join(arms)}."]


def winners(results: Results) -> str:
    """The lowest test loss on each axis, and its difference to the runner-up."""
    parts = []
    for axis, rank in results.summary.winners.loss.items():
        if rank is None:
            continue
        d = rank.difference
        against = "" if d is None else f" ({d.delta:+.3f} vs {rank.runner_up}, {p_text(d)})"
        parts.append(f"{axis}: {rank.arm}{against}")
    return f"Lowest test loss: {'; '.join(parts)}."


def every_axis(results: Results) -> list[str]:
    """Per axis, the arm with the least one-off FLOPs to clm's final loss there and the
    selection arms that beat the curated mix there."""
    parts = []
    for axis, verdict in results.summary.axes.items():
        f = verdict.frontier
        best = f"{f.best} {f.best_ratio:.2f}×" if f.best else "no arm reaches it on every seed"
        beats = ", ".join(f.beats_mix) or "none"
        parts.append(f"{axis}: {best} (selection arms that beat clm-mix: {beats})")
    return [f"- Least one-off FLOPs to clm's final loss, per axis: {'; '.join(parts)}."]


def selection(results: Results) -> list[str]:
    """What SLM selects of the corpus's injected noise (the corpus's ground truth)."""
    rates = results.analyses.selection if results.analyses else None
    if rates is None or rates.selection_rate_noise is None:
        return []
    domains = rates.selected_fraction_by_domain or {}
    by_domain = ", ".join(f"{d} {share:.0%}" for d, share in domains.items())
    return [
        f"- SLM selects {rates.selection_rate_noise:.1%} of the injected-noise tokens and "
        f"{rates.selection_rate_clean:.1%} of the clean ones"
        + (f" (by domain: {by_domain})." if by_domain else ".")
    ]


def environment(results: Results) -> str:
    """What ran it, as results.json records it (when it does)."""
    recorded = getattr(results, "environment", None)
    if recorded is None:
        return "The environment is not recorded in these results."
    flat = {}
    for key, value in recorded.model_dump().items():  # one level of nesting: versions by package
        flat |= value if isinstance(value, dict) else {key: value}
    return "Environment: " + ", ".join(f"{k} {v}" for k, v in flat.items() if v) + "."


def readme_block(results: Results, source: str) -> str:
    cfg, base = results.config, results.base
    start = f"a {base.n_params / 1e6:.2g}M-parameter base" if base else f"the base `{cfg.base}`"
    intro = (
        f"On the shipped text, in the paper's setting ({start} continually pretrained on a "
        f"{results.data.tokens['corpus'] / 1e6:.2g}M-token corpus of math, general text and "
        "injected noise; the reference is the base fine-tuned on curated math text), test loss "
        f"in nats/token, mean ± sample std over {len(cfg.seeds)} seeds (`{demo_command(results)}`"
        f", [{source}]({source}); how it was made: [docs/RESULTS.md](docs/RESULTS.md)):"
    )
    lines = [f"- {winners(results)}", *against(results, "clm", False), *compute(results, False)]
    lines += every_axis(results)
    return "\n".join([intro, "", *loss_table(results, False), "", *lines])


def results_block(results: Results, source: str) -> str:
    cfg = results.config
    name = Path(source).name
    refs = cfg.reference_seeds_used
    head = (
        f"Written by `python bench/readme_results.py` from [{name}](results/{name}), the "
        f"results.json of one `{demo_command(results)}`: seeds {cfg.seeds}, reference seeds "
        f"{refs}; its stages took {sum(results.seconds.values()):,.0f} s. {environment(results)}"
    )
    decontam = (
        "Held-out documents sharing more than "
        f"{cfg.decontam_threshold:.0%} of their word 13-grams with any training text were "
        "dropped before anything was trained:"
    )
    return "\n".join([
        head, "", decontam, "", decontam_markdown(results.data.decontamination), "",
        *loss_table(results, True), "", f"- {winners(results)}", *against(results, "clm", True),
        *against(results, "clm-mix", True), *compute(results, True), *every_axis(results),
        *selection(results), f"- How the settings were chosen: {cfg.choices or 'not recorded'}",
    ])  # fmt: skip


def blocks(results: Results, source: str) -> dict[str, str]:
    """Block name -> its text, from ``results`` (read from ``source``, repository-relative)."""
    return {"readme": readme_block(results, source), "demo": results_block(results, source)}


def fill(text: str, name: str, source: str, body: str) -> str:
    """``text`` with its block ``name`` replaced by ``body``, written from ``source``."""
    found = [m for m in BLOCK.finditer(text) if m["name"] == name]
    if len(found) != 1:
        raise UserError(f"expected one block `<!-- results:start {name} FILE -->`, found "
                        f"{len(found)}")  # fmt: skip
    start, end = found[0].span()
    block = f"<!-- results:start {name} {source} -->\n{body}\n<!-- results:end -->"
    return text[:start] + block + text[end:]


def is_ladder(path: Path) -> bool:
    """A model-size ladder's results.json (a run's has a ``ladder`` too: clm's budget ladder,
    by arm; a size ladder's has its ``rungs``)."""
    return "rungs" in (read_json(path).get("ladder") or {})


def blocks_from(path: Path, source: str) -> dict[str, str]:
    """Block name -> its text, from the results file at ``path``: a ladder's (its blocks) or
    a run's (the demo's blocks)."""
    if is_ladder(path):
        return ladder_blocks(LadderResults.read(path).ladder, source)
    return blocks(Results.read(path), source)


def publish(results_file: Path, root: Path) -> Path:
    """Copy ``results_file`` under docs/results/ (demo.json or ladder.json; NAME-quick.json for
    a --quick run) and write its documents' blocks from it (a ladder's figure too, as
    docs/ladder.png); returns the copy."""
    if is_ladder(results_file):
        found = LadderResults.read(results_file)
        name = "ladder" + ("-quick" if ladder_command(found.ladder).endswith("--quick") else "")
        plot_ladder(found.ladder, root / "docs" / FIGURE)
    else:
        found = Results.read(results_file)
        name = "demo" + ("-quick" if demo_command(found).endswith("--quick") else "")
    source = f"{COPIES}/{name}.json"
    found.write(root / source)
    for block, body in blocks_from(root / source, source).items():
        path = root / DOCUMENTS[block]
        write_text_atomic(path, fill(path.read_text(encoding="utf-8"), block, source, body))
    return root / source


def stale(root: Path) -> list[str]:
    """Every block that is missing, or differs from what its results file writes."""
    problems, texts, written = [], {}, {}  # each document and each source read once
    for name, document in DOCUMENTS.items():
        if document not in texts:
            texts[document] = (root / document).read_text(encoding="utf-8")
        found = [m for m in BLOCK.finditer(texts[document]) if m["name"] == name]
        if len(found) != 1:
            problems.append(f"{document}: {len(found)} blocks named {name}, expected 1")
            continue
        source = found[0]["source"]
        if source not in written:
            written[source] = blocks_from(root / source, source)
        expected = written[source].get(name)
        if expected is None:
            problems.append(f"{document}: block {name} names {source}, which does not write it")
        elif found[0]["body"] != expected + "\n":
            problems.append(f"{document}: block {name} differs from what {source} writes")
    return problems
