"""`rho experiment`: the honest race on any data, as resumable stages (rho.experiment.stages)
in the order of its plan (rho.experiment.plan).

data (decontaminate, split, tokenize) -> mix (the curated-mix corpus) -> base (a preset
pretrained on --base_data, cached by hash across run directories under a lock; or a given
model) -> reference × reference seed (the base fine-tuned on curated) -> score (the corpus's
reference losses, per reference) -> [prune] -> every arm × seed from the base, the same data
order per seed, schedule and budget -> analyses (CLM checkpoints' dynamics, SLM's selection)
-> results.json (rho.experiment.collect) -> report (rho.experiment.report).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from rho.experiment.analyses import analyse
from rho.experiment.arms import ARMS
from rho.experiment.collect import BASE_SEED, collect, only
from rho.experiment.cost import sample_windows
from rho.experiment.engine import EngineOptions, execute
from rho.experiment.plan import Kind, Stage, plan
from rho.experiment.plan_report import write_plan
from rho.experiment.preflight import check_sizes
from rho.experiment.prepare import build_mix, draw_windows, inputs_key, prepare
from rho.experiment.pruning_stages import build_embed, build_proto, build_prune
from rho.experiment.records import (
    Analyses,
    Data,
    Embedded,
    Mix,
    Model,
    Record,
    Results,
    Scores,
    Trained,
    Windows,
)
from rho.experiment.records.plan import PlanRecord
from rho.experiment.report import write_report
from rho.experiment.settings import ExperimentConfig
from rho.experiment.stages import Stages
from rho.experiment.training_run import train_run
from rho.io.files import check_replaceable, mark_output, output_lock
from rho.io.store import TokenStore
from rho.scoring.score import score_store
from rho.training.options import SelectionArguments

EXPERIMENT_KIND = "rho.Experiment"
CACHE_ENV = "RHO_CACHE"  # where pretrained bases are cached (default ~/.cache/rho)
PLAIN = SelectionArguments(selection="none")
SELF_SAMPLE = 10_000  # a self-reference's sample: seed + this, apart from the arms' draw seeds


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "rho"))


def quiet_transformers() -> None:
    hf_logging.set_verbosity_error()  # no tokenizer/config warnings on the console
    hf_logging.disable_progress_bar()


def run_experiment(
    cfg: ExperimentConfig, title: str = "rho experiment", engine: EngineOptions | None = None
) -> Results | PlanRecord:
    """Run (or resume) every stage into ``cfg.out``, in this process or by ``engine``'s workers
    or Ray tasks; returns the results (results.json), or with ``engine.plan`` only the plan
    (plan.json)."""
    return run_experiments([cfg], [title], engine)[0]


def run_experiments(
    cfgs: list[ExperimentConfig], titles: list[str], engine: EngineOptions | None = None
) -> list[Results] | list[PlanRecord]:
    """Several runs (a ladder's sizes), each into its ``cfg.out``: their stages side by side on
    ``engine``'s workers or Ray tasks (the first run's ready stages first), or in this process
    one run after another."""
    engine = engine or EngineOptions()
    for cfg in cfgs:  # every run checked before anything is written
        cfg.check_inputs()
        check_replaceable(Path(cfg.out), EXPERIMENT_KIND)  # new, or an experiment's to resume
    quiet_transformers()
    with ExitStack() as locks:
        runners = []
        for cfg in cfgs:
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            mark_output(out, EXPERIMENT_KIND)
            locks.enter_context(output_lock(out))
            runners.append(Runner(cfg, out))
        pairs = list(zip(runners, titles, strict=True))
        if engine.plan:  # the plans and their cost (plan.json): nothing runs
            return [write_plan(runner, title, engine) for runner, title in pairs]
        for runner, title in pairs:
            runner.announce(title)
            if engine.in_process:  # one stage at a time, one run after another
                runner.run_all()
        if not engine.in_process:
            execute(runners, engine)
        return [runner.finish(title) for runner, title in pairs]


class Runner:
    """Runs the plan's stages in order; each stage's builder sees the config only through the
    view of the fields its key covers, and returns the stage's record (``BUILDERS``)."""

    def __init__(self, cfg: ExperimentConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.stages = Stages(out)
        self.results: dict[str, Record] = {}
        self.plan = plan(cfg, inputs_key(cfg.view("data")))

    def announce(self, title: str) -> None:
        cfg = self.cfg
        tqdm.write(
            f"== {title} into {self.out}: arms {', '.join(cfg.arm_list)}; seeds "
            f"{cfg.seeds}; reference seeds {cfg.reference_seeds_used} =="
        )

    def run_all(self) -> None:
        """Every stage, in the plan's order, in this process."""
        for key, stage in self.plan.items():
            self.results[key] = self.run_stage(key, stage)

    def finish(self, title: str) -> Results:
        """results.json and the report, from every stage's record."""
        results = collect(self.cfg, self.plan, self.results, self.stages.seconds)
        results.write(self.out / "results.json")
        write_report(results, self.out, title)
        return results

    def recorded(self, key: str) -> Record | None:
        """The stage's record if it finished with its current key (else None); its seconds go
        into ``stages.seconds`` as when it runs here."""
        stage = self.plan[key]
        _, kind = BUILDERS[stage.kind]
        if stage.cached:
            saved = Stages(cache_dir(), self.stages.log).done(stage.name, stage.key, kind)
        elif stage.kind in (Kind.BASE, Kind.PROXY):  # a given model or a fresh preset
            return self.run_stage(key, stage)
        else:
            saved = self.stages.done(stage.name, stage.key, kind)
        if saved is None:
            return None
        self.stages.seconds[key] = saved[1]
        return saved[0]

    def load_recorded(self) -> None:
        """Every stage finished so far (by this process or by workers) into ``results``."""
        for key in self.plan:
            if key not in self.results:
                found = self.recorded(key)
                if found is not None:
                    self.results[key] = found

    def run_stage(self, key: str, stage: Stage) -> Record:
        build, kind = BUILDERS[stage.kind]
        if stage.cached:
            cached = Stages(cache_dir(), self.stages.log)
            result = cached.run(
                stage.name,
                stage.key,
                partial(build, self, stage),
                kind,
                f"{key} (pretrained, cached)",
                shared=True,
            )
            self.stages.seconds[key] = cached.seconds[stage.name]
            return result
        if stage.kind in (Kind.BASE, Kind.PROXY):  # a given model or a fresh preset
            return Model(run=self.cfg.base if stage.kind == Kind.BASE else self.cfg.reference_base)
        return self.stages.run(stage.name, stage.key, partial(build, self, stage), kind)

    # ------------------------------------------------------------------ stage builders
    def only(self, kind: Kind) -> Record | None:
        return only(self.plan, self.results, kind)

    @property
    def data(self) -> Data:
        return self.only(Kind.DATA)

    def model(self, name: str) -> str:
        """The model directory (or preset) of the base or proxy stage."""
        return self.results[name].run

    def train(self, directory: Path, stage: str, extra=(), **kw) -> Trained:
        return train_run(directory, self.cfg.view(stage, extra), self.data, **kw)

    def steps(self, tokens: int, view) -> int:
        return max(1, tokens // (view.batch_size * view.seq_len))

    def corpus_tokens(self, view) -> int:
        """The arms' token budget (0: the whole corpus)."""
        return view.train_tokens or self.data.tokens["corpus"]

    def build_data(self, stage: Stage, directory: Path) -> Data:
        data = prepare(self.cfg.view("data"), directory)
        check_sizes(self.cfg, data)  # before any stage trains on or draws from a store
        return data

    def build_mix(self, stage: Stage, directory: Path) -> Mix:
        return build_mix(self.cfg.view("mix"), self.data, directory)

    def build_base(self, stage: Stage, directory: Path) -> Trained:
        """The base (or the proxy references' smaller start), pretrained on --base_data."""
        name = "base" if stage.kind == Kind.BASE else "proxy"
        v = self.cfg.view(name)
        tokens = v.base_tokens or self.data.tokens["base"]
        return self.train(
            directory,
            name,
            label=name,
            init=v.base if name == "base" else v.reference_base,
            tokens=self.data.store("base"),
            selection=PLAIN,
            steps=self.steps(tokens, v),
            seed=BASE_SEED,
            lr=v.base_learning_rate,
        )

    def budget_windows(self, view) -> int:
        """The windows one arm trains on: its token budget in whole windows."""
        return self.steps(self.corpus_tokens(view), view) * view.batch_size

    def build_sample(self, stage: Stage, directory: Path) -> Windows:
        """A self-reference's training windows: a seeded share of the corpus's (another
        permutation than the arms' draws: its windows may be drawn by them too)."""
        v = self.cfg.view("sample")
        corpus = TokenStore(self.data.store("corpus"))
        n = sample_windows(v.self_reference, corpus.n_tokens, v.seq_len)
        return draw_windows(corpus, v.seq_len, n, SELF_SAMPLE + stage.seed, directory / "sample")

    def build_reference(self, stage: Stage, directory: Path) -> Trained:
        """Curated references train for --ref_tokens (0: the arms' budget); a self-reference
        one pass over its sample."""
        if stage.source == "self":
            v = self.cfg.view("self-reference")
            sample = self.results[f"self-sample-seed{stage.seed}"]
            data, tokens = sample.tokens, sample.windows * v.seq_len
        else:
            v = self.cfg.view("reference")
            data, tokens = self.data.store("curated"), v.ref_tokens or self.corpus_tokens(v)
        return self.train(
            directory,
            "reference",
            label=stage.name,
            init=self.model("proxy" if stage.source == "proxy" else "base"),
            tokens=data,
            selection=PLAIN,
            steps=self.steps(tokens, v),
            seed=stage.seed,
            lr=v.learning_rate,
        )

    def build_draw(self, stage: Stage, directory: Path) -> Windows:
        """``pool`` budgets of whole windows of the source, drawn by the seed (the first n of
        one permutation, so a larger pool holds a smaller one), kept in source order."""
        v = self.cfg.view("draw")
        source = TokenStore(
            self.only(Kind.MIX).store if stage.source == "mix" else self.data.store("corpus")
        )
        return draw_windows(
            source,
            v.seq_len,
            round(stage.pool * self.budget_windows(v)),
            stage.seed,
            directory / "drawn",
        )

    def build_score(self, stage: Stage, directory: Path) -> Scores:
        v = self.cfg.view("score")
        reference = self.results[stage.after[0]]
        store = TokenStore(self.results[stage.windows].tokens)
        scored = score_store(
            reference.run,
            store,
            directory / "ref_losses",
            v.seq_len,
            progress=False,
            entropy=stage.entropy,
        )
        return Scores(
            losses=str(scored.path),
            store=str(store.path),
            scored_tokens=store.n_tokens,
            n_params=reference.n_params,
        )

    def build_arm(self, stage: Stage, directory: Path) -> Trained:
        arm = ARMS[stage.arm]
        v = self.cfg.view("arms", arm.reads)
        if arm.data == "curated":
            tokens, losses = self.data.store("curated"), None
        else:
            tokens = self.results[stage.windows].tokens
            losses = self.results[stage.scores].losses if stage.scores else None
        return self.train(
            directory,
            "arms",
            arm.reads,
            label=stage.name,
            init=self.model("base"),
            tokens=tokens,
            selection=arm.selection_arguments(v),
            steps=self.arm_steps(stage, v),
            seed=stage.seed,
            lr=v.learning_rate,
            ref_losses=losses,
            save_checkpoints=stage.save,
        )

    def arm_steps(self, stage: Stage, view) -> int:
        """An arm's optimizer steps: the budget's, or a ladder run's share of them (its own
        warm-up and cosine decay follow from its steps)."""
        steps = self.steps(self.corpus_tokens(view), view)
        return steps if stage.budget is None else max(1, round(stage.budget * steps))

    def build_analyses(self, stage: Stage, directory: Path) -> Analyses:
        first = self.cfg.seeds[0]
        slm = self.plan.get(f"slm-seed{first}")
        return analyse(
            self.cfg.view("analyses"),
            clm=self.results[f"clm-seed{first}"],
            slm=None if slm is None else self.results[slm.name],
            slm_windows=None if slm is None else self.results[slm.windows].tokens,
            slm_losses=None if slm is None else self.results[slm.scores].losses,
            data=self.data,
            out=self.out,
            directory=directory,
            first=first,
        )


BUILDERS = {
    Kind.DATA: (Runner.build_data, Data),
    Kind.MIX: (Runner.build_mix, Mix),
    Kind.BASE: (Runner.build_base, Trained),
    Kind.PROXY: (Runner.build_base, Trained),
    Kind.SAMPLE: (Runner.build_sample, Windows),
    Kind.REFERENCE: (Runner.build_reference, Trained),
    Kind.DRAW: (Runner.build_draw, Windows),
    Kind.SCORE: (Runner.build_score, Scores),
    Kind.PRUNE: (build_prune, Windows),
    Kind.EMBED: (build_embed, Embedded),
    Kind.PROTO: (build_proto, Windows),
    Kind.ARM: (Runner.build_arm, Trained),
    Kind.ANALYSES: (Runner.build_analyses, Analyses),
}  # what builds each kind of stage, and the record it returns
