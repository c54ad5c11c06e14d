"""`rho experiment --bases 300k,1m,5m`: the whole race once per model size, each size an
ordinary `rho experiment` run in OUT/size-NAME/ (its own base, references and arms; cached and
resumed like any run; with the engine's workers or Ray the sizes run side by side), then
combined into OUT/results.json (``ladder``) and OUT/report.md: does the ranking of the arms at
a small size hold at a larger one? (rho.experiment.ladder_verdict)

The budgets of a size follow from its parameter count N by one stated rule (``budgets``):

- the base's pretraining: ``tokens_per_param`` × N tokens (a model-directory base is not
  pretrained here);
- each arm's budget (``train_tokens``): ``arm_share`` × ``tokens_per_param`` × N tokens;
- ``ref_tokens`` and ``curated_tokens``, when the config sets them, keep their ratio to the
  config's ``train_tokens`` (so the curated-scarce regime stays 1/20 of an arm's budget);
- every budget is rounded to whole optimizer steps (at least one) of ``batch_size`` ×
  ``seq_len`` tokens; the batch, window length, learning rates, seeds and arms are the same at
  every size. N counts every parameter once (tied embeddings), a preset's at the tokenizer's
  vocabulary (``--tokenizer``'s, else ``--vocab``). A ``--reference_base`` (the proxy arms'
  start) is the same model at every size, pretrained on that size's base budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from rho.errors import UserError
from rho.experiment import cost
from rho.experiment.ladder_report import write_ladder_report
from rho.experiment.ladder_verdict import axis_ladder
from rho.experiment.records import Results
from rho.experiment.records.ladder import Ladder, LadderResults, Rule, Rung
from rho.experiment.runner import run_experiments
from rho.experiment.settings import ExperimentConfig
from rho.io.files import check_replaceable, mark_output, output_lock
from rho.models import PRESETS
from rho.training.options import option

LADDER_KIND = "rho.Ladder"
Sized = ExperimentConfig  # one size's own config


@dataclass
class LadderOptions:
    """The model-size ladder: the whole race at each size, budgets scaled by a stated rule."""

    bases: list[str] = option(
        "model sizes to race the arms at, smallest first: presets (300k 1m 5m ...) or model "
        "directories; each size runs the whole experiment into OUT/size-NAME with its budgets "
        "scaled by --tokens_per_param and --arm_share, in whole optimizer steps (N: every "
        "parameter once, a preset's at the tokenizer's vocabulary; batch, window length, "
        "learning rates, seeds and arms the same at every size; none: one run at --base)",
        factory=list,
    )
    tokens_per_param: float = option(
        "ladder: a size's base pretraining budget in tokens per parameter (base tokens = this "
        "x N, N the size's parameters; replaces --base_tokens)",
        1.0,
    )
    arm_share: float = option(
        "ladder: each arm's budget as a share of its size's base budget (train tokens = this x "
        "tokens_per_param x N; replaces --train_tokens; --ref_tokens and --curated_tokens keep "
        "their ratio to --train_tokens)",
        1.0,
    )

    def __post_init__(self):
        self.bases = [b.strip() for item in self.bases for b in item.split(",") if b.strip()]
        if len(set(map(size_name, self.bases))) != len(self.bases):
            raise UserError(f"--bases {','.join(self.bases)}: each size once (distinct names)")
        for name in ("tokens_per_param", "arm_share"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")

    def rule(self) -> Rule:
        t, s = self.tokens_per_param, self.arm_share
        text = (
            f"base pretraining: {t:g} tokens per parameter (T x N); each arm: {s:g} of that "
            f"({s * t:g} x N tokens); reference and curated budgets keep their ratio to the "
            "arms'; all rounded to whole optimizer steps; batch, window length, learning rates, "
            "seeds and arms fixed"
        )
        return Rule(tokens_per_param=t, arm_share=s, text=text)


def size_name(base: str) -> str:
    """The size's directory name: a preset's name, else the model directory's last part."""
    name = base if base in PRESETS else Path(base.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "model"


def parameters(base: str, vocab: int) -> int:
    """N: a preset's parameters at ``vocab``, or a model directory's (from its config, counted
    as the plan's cost counts it: rho.experiment.cost)."""
    if base not in PRESETS and not (Path(base) / "config.json").is_file():
        raise UserError(f"--bases {base!r} is neither a preset ({', '.join(PRESETS)}) nor a "
                        "model directory")  # fmt: skip
    return cost.parameters(cost.model_config(base, vocab))


def vocabulary(cfg: ExperimentConfig) -> int:
    """The vocabulary a preset is built at: the given tokenizer's, else --vocab."""
    if cfg.tokenizer is None:
        return cfg.vocab
    from rho.data.tokenizer_setup import load_tokenizer, vocab_size_of

    return vocab_size_of(load_tokenizer(cfg.tokenizer))


def budgets(n_params: int, pretrained: bool, cfg: ExperimentConfig, options: LadderOptions):
    """(base_tokens, train_tokens, ref_tokens, curated_tokens) of a size with ``n_params``
    parameters, by the module's rule (``pretrained``: a preset base, pretrained here)."""
    step = cfg.batch_size * cfg.seq_len

    def steps(tokens: float) -> int:
        return max(1, round(tokens / step)) * step

    base = options.tokens_per_param * n_params
    train = steps(options.arm_share * base)
    if (cfg.ref_tokens or cfg.curated_tokens) and not cfg.train_tokens:
        raise UserError("--bases with --ref_tokens or --curated_tokens needs --train_tokens: they "
                        "keep their ratio to it at every size")  # fmt: skip
    scale = train / cfg.train_tokens if cfg.train_tokens else 0.0
    ref = steps(cfg.ref_tokens * scale) if cfg.ref_tokens else 0
    curated = max(1, round(cfg.curated_tokens * scale)) if cfg.curated_tokens else 0
    return (steps(base) if pretrained else 0), train, ref, curated


def plan_rungs(cfg: ExperimentConfig, options: LadderOptions) -> list[tuple[Rung, Sized]]:
    """Each size's record and its own config (run directory OUT/size-NAME), in --bases order."""
    if len(options.bases) < 2:
        raise UserError("--bases needs at least two sizes (comma list), smallest first")
    rungs, vocab = [], vocabulary(cfg)
    for base in options.bases:
        n = parameters(base, vocab)
        pretrained = base in PRESETS and not cfg.from_scratch
        base_tokens, train, ref, curated = budgets(n, pretrained, cfg, options)
        name = f"size-{size_name(base)}"
        scaled = dict(base_tokens=base_tokens, train_tokens=train, ref_tokens=ref,
                      curated_tokens=curated)  # fmt: skip
        rung = Rung(name=name, base=base, n_params=n, run=name, **scaled)
        rungs.append((rung, replace(cfg, base=base, out=str(Path(cfg.out) / name), **scaled)))
    return rungs


def run_rungs(rungs: list[tuple[Rung, Sized]], title: str, engine=None) -> dict[str, Results]:
    """Every size's whole race, an ordinary run each (the sizes are independent): side by side
    on the engine's workers, the largest size's ready stages first (its chain is the longest);
    in one process (or for --plan) one size after another, smallest first."""
    side_by_side = engine is not None and not engine.plan and not engine.in_process
    order = rungs[::-1] if side_by_side else rungs
    titles = [f"{title}, size {rung.base} ({rung.n_params:,} parameters)" for rung, _ in order]
    found = run_experiments([sized for _, sized in order], titles, engine)
    return {rung.name: results for (rung, _), results in zip(order, found, strict=True)}


def run_ladder(
    cfg: ExperimentConfig, options: LadderOptions, title: str = "rho experiment", engine=None
) -> LadderResults | None:
    """Every size's race into ``cfg.out``/size-NAME, then the ladder's results and report (with
    ``engine.plan``, each size's plan only)."""
    out = Path(cfg.out)
    rungs = plan_rungs(cfg, options)  # every size checked before anything runs
    check_replaceable(out, LADDER_KIND)
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, LADDER_KIND)
    with output_lock(out):
        results = run_rungs(rungs, title, engine)
        if engine is not None and engine.plan:  # each size's plan.json: nothing was trained
            return None
        ladder = combine([rung for rung, _ in rungs], results, options.rule())
        found = LadderResults(ladder=ladder)
        found.write(out / "results.json")
        write_ladder_report(ladder, out, f"{title} --bases {','.join(options.bases)}")
    return found


def combine(rungs: list[Rung], results: dict[str, Results], rule: Rule) -> Ladder:
    """The sizes' results as one ladder: every axis any size has, in the first size's order."""
    axes: list[str] = []
    for rung in rungs:
        axes += [a for a in results[rung.name].data.axes if a not in axes]
    # fsum: the same total whatever order the stages ended in (a rerun reads them in plan order)
    seconds = {r.name: round(math.fsum(results[r.name].seconds.values()), 3) for r in rungs}
    return Ladder(
        rule=rule,
        rungs=[r.model_copy(update={"seconds": seconds[r.name]}) for r in rungs],
        target_axis=results[rungs[0].name].summary.target.axis,
        axes={axis: axis_ladder(axis, rungs, results) for axis in axes},
    )
