"""`rho experiment`: the honest race on any data, as resumable stages (rho.experiment.stages)
in the order of its plan (rho.experiment.plan).

data (decontaminate, split, tokenize) -> mix (the curated-mix corpus) -> base (a preset
pretrained on --base_data, cached by hash across run directories under a lock; or a given
model) -> reference × reference seed (the base fine-tuned on curated) -> score (the corpus's
reference losses, per reference) -> [prune] -> every arm × seed from the base, the same data
order per seed, schedule and budget -> analyses (CLM checkpoints' dynamics, SLM's selection)
-> report (rho.experiment.report).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from rho.embed import embed_units
from rho.errors import UserError
from rho.experiment.analyses import analyse
from rho.experiment.arms import ARMS
from rho.experiment.facts import summarise
from rho.experiment.plan import Stage, plan, proto_stage
from rho.experiment.prepare import build_mix, inputs_key, prepare
from rho.experiment.report import write_report
from rho.experiment.settings import ExperimentConfig
from rho.experiment.stages import Stages
from rho.experiment.training_run import train_run
from rho.files import (
    check_replaceable,
    mark_output,
    output_lock,
    write_json_atomic,
)
from rho.models import PRESETS, count_parameters, load_model
from rho.options import SelectionArguments
from rho.prune import prune_store
from rho.score import score_store
from rho.store import TokenStore

EXPERIMENT_KIND = "rho.Experiment"
CACHE_ENV = "RHO_CACHE"  # where pretrained bases are cached (default ~/.cache/rho)
PLAIN = SelectionArguments(selection="none")
BASE_SEED = 0  # the base is one model, pretrained once


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "rho"))


def run_experiment(cfg: ExperimentConfig, title: str = "rho experiment") -> dict:
    """Run (or resume) every stage into ``cfg.out``; returns the results (results.json)."""
    cfg.check_inputs()
    out = Path(cfg.out)
    check_replaceable(out, EXPERIMENT_KIND)  # a new directory, or an experiment's to resume
    hf_logging.set_verbosity_error()  # no tokenizer/config warnings on the console
    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, EXPERIMENT_KIND)
    with output_lock(out):
        return Runner(cfg, out).run(title)


class Runner:
    """Runs the plan's stages in order; each stage's builder sees the config only through the
    view of the fields its key covers."""

    def __init__(self, cfg: ExperimentConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.stages = Stages(out)
        self.results: dict[str, dict] = {}
        self.plan = plan(cfg, inputs_key(cfg.view("data")))

    def run(self, title: str) -> dict:
        cfg = self.cfg
        tqdm.write(
            f"== {title} into {self.out}: arms {', '.join(cfg.arm_list)}; seeds "
            f"{cfg.seeds}; reference seeds {cfg.reference_seeds_used} =="
        )
        for key, stage in self.plan.items():
            build = getattr(self, f"build_{stage.kind}")
            if stage.cached:
                cached = Stages(cache_dir(), self.stages.log)
                self.results[key] = cached.run(
                    stage.name,
                    stage.key,
                    partial(build, stage),
                    f"{key} (pretrained, cached)",
                    shared=True,
                )
                self.stages.seconds[key] = cached.seconds[stage.name]
            elif stage.kind in ("base", "proxy"):  # a given model or a fresh preset
                self.results[key] = {"run": self.cfg.base if key == "base" else
                                     self.cfg.reference_base}  # fmt: skip
            else:
                self.results[key] = self.stages.run(stage.name, stage.key, partial(build, stage))
        results = self.collect()
        write_json_atomic(self.out / "results.json", results, sort_keys=False)
        write_report(results, self.out, title)
        return results

    # ------------------------------------------------------------------ stage builders
    @property
    def data(self) -> dict:
        return self.results["data"]

    def train(self, directory: Path, stage: str, extra=(), **kw) -> dict:
        return train_run(
            directory, self.cfg.view(stage, extra), self.data["stores"], self.data["axes"], **kw
        )

    def steps(self, tokens: int, view) -> int:
        return max(1, tokens // (view.batch_size * view.seq_len))

    def build_data(self, stage: Stage, directory: Path) -> dict:
        return prepare(self.cfg.view("data"), directory)

    def build_mix(self, stage: Stage, directory: Path) -> dict:
        return build_mix(self.cfg.view("mix"), self.data, directory)

    def build_base(self, stage: Stage, directory: Path) -> dict:
        v = self.cfg.view("base")
        tokens = v.base_tokens or self.data["tokens"]["base"]
        return self.train(
            directory,
            "base",
            label="base",
            init=v.base,
            tokens=self.data["stores"]["base"],
            selection=PLAIN,
            steps=self.steps(tokens, v),
            seed=BASE_SEED,
            lr=v.base_learning_rate,
        )

    def build_proxy(self, stage: Stage, directory: Path) -> dict:
        """The reference's own smaller start, pretrained like the base."""
        v = self.cfg.view("proxy")
        tokens = v.base_tokens or self.data["tokens"]["base"]
        return self.train(directory, "proxy", label="proxy", init=v.reference_base,
                          tokens=self.data["stores"]["base"], selection=PLAIN,
                          steps=self.steps(tokens, v), seed=BASE_SEED,
                          lr=v.base_learning_rate)  # fmt: skip

    def build_reference(self, stage: Stage, directory: Path) -> dict:
        v = self.cfg.view("reference")
        steps = self.steps(int(v.ref_epochs * self.data["tokens"]["curated"]), v)
        return self.train(
            directory,
            "reference",
            label=stage.name,
            init=self.results["proxy" if "proxy" in self.plan else "base"]["run"],
            tokens=self.data["stores"]["curated"],
            selection=PLAIN,
            steps=steps,
            seed=stage.seed,
            lr=v.learning_rate,
        )

    def build_score(self, stage: Stage, directory: Path) -> dict:
        v = self.cfg.view("score")
        reference = self.results[f"reference-seed{stage.seed}"]
        corpus = TokenStore(self.data["stores"]["corpus"])
        scored = score_store(
            reference["run"], corpus, directory / "ref_losses", v.seq_len, progress=False
        )
        return {"losses": str(scored.path), "tokens": corpus.n_tokens}

    def build_prune(self, stage: Stage, directory: Path) -> dict:
        v = self.cfg.view("prune")
        corpus = TokenStore(self.data["stores"]["corpus"])
        scored = self.results[f"score-ref{stage.seed}"]["losses"]
        prune_store(
            corpus,
            scored,
            directory / "pruned",
            keep=v.prune_keep,
            unit="window",
            by="reference",
            progress=False,
        )
        return {
            "tokens": str(directory / "pruned" / "tokens"),
            "losses": str(directory / "pruned" / "ref_losses"),
        }

    def build_embed(self, stage: Stage, directory: Path) -> dict:
        """Every corpus window embedded (mean of the last hidden state) by the references'
        start: the learner's base, or the proxy."""
        v = self.cfg.view("embed")
        model_dir = self.results["proxy" if "proxy" in self.plan else "base"]["run"]
        if model_dir in PRESETS:
            raise UserError("the prototype arms embed with a trained model: not with "
                            "--from_scratch (give a model --base or --reference_base)")  # fmt: skip
        corpus = TokenStore(self.data["stores"]["corpus"])
        model = load_model(model_dir)
        embed_units(model, model_dir, corpus, "window", v.seq_len, directory / "embeddings")
        return {
            "embeddings": str(directory / "embeddings"),
            "model": model_dir,
            "n_params": count_parameters(model),
            "tokens": corpus.n_tokens,  # the windows partition the stream: every token once
        }

    def build_proto(self, stage: Stage, directory: Path) -> dict:
        v = self.cfg.view("proto")
        corpus = TokenStore(self.data["stores"]["corpus"])
        losses = None
        if stage.seed is not None:
            losses = self.results[f"score-ref{stage.seed}"]["losses"]
        embedded = self.results["embed"]
        options = {"embed_model": embedded["model"], "embeddings": embedded["embeddings"],
                   "seq_len": v.seq_len, "keep_from": v.proto_from,
                   "dedup": v.proto_dedup or None, "seed": 0}  # fmt: skip
        report = prune_store(corpus, losses, directory / "pruned", keep=v.proto_keep,
                             unit="window", by="prototype", progress=False,
                             prototype=options)  # fmt: skip
        pruned = directory / "pruned"
        return {"tokens": str(pruned / "tokens"),
                "losses": None if losses is None else str(pruned / "ref_losses"),
                "dropped_by_dedup": report.get("dropped_by_dedup"),
                "clusters": report.get("clusters")}  # fmt: skip

    def build_arm(self, stage: Stage, directory: Path) -> dict:
        arm = ARMS[stage.arm]
        v = self.cfg.view("arms", arm.reads)
        tokens, losses = self.data["stores"]["corpus"], None
        if arm.data == "mix":
            tokens = self.results["mix"]["store"]
        if stage.reference_seed is not None:
            losses = self.results[f"score-ref{stage.reference_seed}"]["losses"]
        if arm.data == "pruned":
            pruned = self.results[f"prune-ref{stage.reference_seed}"]
            tokens, losses = pruned["tokens"], pruned["losses"]
        if arm.data == "proto":
            pruned = self.results[proto_stage(stage.reference_seed)]
            tokens, losses = pruned["tokens"], pruned["losses"]
        corpus_tokens = self.data["tokens"]["corpus"]
        return self.train(
            directory,
            "arms",
            arm.reads,
            label=stage.name,
            init=self.results["base"]["run"],
            tokens=tokens,
            selection=arm.selection_arguments(v),
            steps=self.steps(v.train_tokens or corpus_tokens, v),
            seed=stage.seed,
            lr=v.learning_rate,
            ref_losses=losses,
            save_checkpoints=stage.save,
        )

    def build_analyses(self, stage: Stage, directory: Path) -> dict:
        first = self.cfg.seeds[0]
        slm = self.plan.get(f"slm-seed{first}")
        losses = None if slm is None else self.results[f"score-ref{slm.reference_seed}"]["losses"]
        return analyse(
            self.cfg.view("analyses"),
            self.results,
            self.data,
            self.out,
            directory,
            first=first,
            slm_losses=losses,
        )

    # ------------------------------------------------------------------ results
    def collect(self) -> dict:
        cfg, data = self.cfg, self.data
        runs: dict[str, list[dict]] = {}
        for name in cfg.arm_list:
            if ARMS[name].data == "curated":
                runs[name] = [
                    {**self.results[f"reference-seed{r}"], "seed": r}
                    for r in cfg.reference_seeds_used
                ]
                continue
            runs[name] = []
            for seed in cfg.seeds_of(name):
                stage = self.plan[f"{name}-seed{seed}"]
                runs[name].append(
                    {
                        **self.results[stage.name],
                        "seed": seed,
                        "reference_seed": stage.reference_seed,
                    }
                )
        results = {
            "config": cfg.as_dict(),
            "data": {k: data[k] for k in ("axes", "decontamination", "tokens", "base_overlap")},
            "stages": {name: stage.key for name, stage in self.plan.items()},
            "runs": runs,
            "overhead": self.overheads(runs),
            "analyses": self.results.get("analyses", {}),
            "seconds": {k: round(v, 1) for k, v in self.stages.seconds.items()},
        }
        if "mix" in self.results:
            results["data"]["mix"] = self.results["mix"]
        keep = ("steps", "warmup_steps", "train_tokens", "flops_train", "n_params")
        for name in ("base", "proxy"):
            if name in self.plan and self.plan[name].cached:
                run = self.results[name]
                results[name] = {"seed": BASE_SEED, **{k: run[k] for k in keep if k in run}}
        results["summary"] = summarise(results)
        return results

    def overheads(self, runs: dict) -> dict:
        """What each arm is charged before its training, by its registry entry: the training of
        the reference its seed pairs with, the scoring of the corpus by it (2·N_ref FLOPs per
        token scored) and the pruning; mean over the references its seeds used. The base is
        shared by every arm and left out; a proxy pretrained here for the references is
        charged to every arm that reads them."""
        out = {}
        proxy = self.plan.get("proxy")
        proxy_flops = self.results["proxy"]["flops_train"] if proxy and proxy.cached else 0.0
        proxy_seconds = self.stages.seconds.get("proxy", 0.0) if proxy_flops else 0.0
        what = {"reference": "reference training", "score": "scoring the corpus",
                "prune": "pruning", "embed": "embedding the corpus"}  # fmt: skip
        for name, seeds in runs.items():
            arm = ARMS[name]
            if not arm.overhead:
                continue
            flops, seconds = [], []
            for run in seeds:
                f, parts, r = 0.0, [], run["reference_seed"]
                if arm.uses_reference:
                    ref, scored = self.results[f"reference-seed{r}"], self.results[f"score-ref{r}"]
                    f += proxy_flops + ref["flops_train"] + 2 * ref["n_params"] * scored["tokens"]
                    parts += [f"reference-seed{r}", f"score-ref{r}"]
                if "prune" in arm.overhead:
                    parts.append(f"prune-ref{r}")
                if "embed" in arm.overhead:
                    embedded = self.results["embed"]
                    f += 2 * embedded["n_params"] * embedded["tokens"]
                    parts += ["embed", proto_stage(r)]
                flops.append(f)
                own = sum(self.stages.seconds.get(p, 0.0) for p in parts)
                seconds.append(own + (proxy_seconds if arm.uses_reference else 0.0))
            out[name] = {
                "flops": float(np.mean(flops)),
                "seconds": float(np.mean(seconds)),
                "what": ("proxy pretraining + " if proxy_flops and arm.uses_reference else "")
                + " + ".join(what[p] for p in arm.overhead),
            }
            if arm.uses_reference:
                first = seeds[0]["reference_seed"]
                out[name]["tokens_scored"] = self.results[f"score-ref{first}"]["tokens"]
        return out
