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
from rho.experiment.plan import Stage, plan
from rho.experiment.preflight import check_sizes
from rho.experiment.prepare import build_mix, draw_windows, inputs_key, prepare
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
SELF_SAMPLE = 10_000  # a self-reference's sample: seed + this, apart from the arms' draw seeds


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
        data = prepare(self.cfg.view("data"), directory)
        check_sizes(self.cfg, data)  # before any stage trains on or draws from a store
        return data

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

    def budget_windows(self, view) -> int:
        """The windows one arm trains on: its token budget in whole windows."""
        tokens = view.train_tokens or self.data["tokens"]["corpus"]
        return self.steps(tokens, view) * view.batch_size

    def build_sample(self, stage: Stage, directory: Path) -> dict:
        """A self-reference's training windows: a seeded share of the corpus's (another
        permutation than the arms' draws: its windows may be drawn by them too)."""
        v = self.cfg.view("sample")
        corpus = TokenStore(self.data["stores"]["corpus"])
        n = max(1, round(v.self_reference * (corpus.n_tokens // v.seq_len)))
        return draw_windows(corpus, v.seq_len, n, SELF_SAMPLE + stage.seed, directory / "sample")

    def build_reference(self, stage: Stage, directory: Path) -> dict:
        """Curated references train for --ref_tokens (0: the arms' budget); a self-reference
        one pass over its sample."""
        if stage.source == "self":
            v = self.cfg.view("self-reference")
            sample = self.results[f"self-sample-seed{stage.seed}"]
            data, tokens = sample["tokens"], sample["windows"] * v.seq_len
        else:
            v = self.cfg.view("reference")
            data = self.data["stores"]["curated"]
            tokens = v.ref_tokens or v.train_tokens or self.data["tokens"]["corpus"]
        return self.train(
            directory,
            "reference",
            label=stage.name,
            init=self.results["proxy" if stage.source == "proxy" else "base"]["run"],
            tokens=data,
            selection=PLAIN,
            steps=self.steps(tokens, v),
            seed=stage.seed,
            lr=v.learning_rate,
        )

    def build_draw(self, stage: Stage, directory: Path) -> dict:
        """``pool`` budgets of whole windows of the source, drawn by the seed (the first n of
        one permutation, so a larger pool holds a smaller one), kept in source order."""
        v = self.cfg.view("draw")
        source = TokenStore(self.results["mix"]["store"] if stage.source == "mix"
                            else self.data["stores"]["corpus"])  # fmt: skip
        return draw_windows(source, v.seq_len, round(stage.pool * self.budget_windows(v)),
                            stage.seed, directory / "drawn")  # fmt: skip

    def build_score(self, stage: Stage, directory: Path) -> dict:
        v = self.cfg.view("score")
        reference = self.results[stage.after[0]]
        store = TokenStore(self.results[stage.windows]["tokens"])
        scored = score_store(reference["run"], store, directory / "ref_losses", v.seq_len,
                             progress=False, entropy=stage.entropy)  # fmt: skip
        return {"losses": str(scored.path), "store": str(store.path),
                "scored_tokens": store.n_tokens, "n_params": reference["n_params"]}  # fmt: skip

    def build_prune(self, stage: Stage, directory: Path) -> dict:
        v = self.cfg.view("prune")
        scored = self.results[stage.windows]
        report = prune_store(scored["store"], scored["losses"], directory / "pruned",
                             keep=v.prune_keep, unit="window", by="reference",
                             progress=False)  # fmt: skip
        return {
            "tokens": str(directory / "pruned" / "tokens"),
            "losses": str(directory / "pruned" / "ref_losses"),
            "windows": report["units_kept"],
        }

    def build_embed(self, stage: Stage, directory: Path) -> dict:
        """The drawn windows embedded by the base: the mean of a hidden state."""
        v = self.cfg.view("embed")
        model_dir = self.results["base"]["run"]
        if model_dir in PRESETS:
            raise UserError("the prototype arms embed with a trained model: not with "
                            "--from_scratch (give a model --base)")  # fmt: skip
        store = TokenStore(self.results[stage.windows]["tokens"])
        model = load_model(model_dir)
        embed_units(model, model_dir, store, "window", v.seq_len, directory / "embeddings",
                    layer=v.embed_layer)  # fmt: skip
        # A forward pass costs 2·N per token; the input embeddings are a lookup.
        flops = 0.0 if v.embed_layer == 0 else 2.0 * count_parameters(model) * store.n_tokens
        return {"embeddings": str(directory / "embeddings"), "model": model_dir,
                "layer": v.embed_layer, "embedded_tokens": store.n_tokens,
                "flops": flops}  # fmt: skip

    def build_proto(self, stage: Stage, directory: Path) -> dict:
        v = self.cfg.view("proto")
        store = TokenStore(self.results[stage.windows]["tokens"])
        embedded = self.results[stage.after[0]]
        options = {"embed_model": embedded["model"], "embeddings": embedded["embeddings"],
                   "layer": embedded["layer"], "seq_len": v.seq_len, "keep_from": v.proto_from,
                   "dedup": v.proto_dedup or None, "seed": 0}  # fmt: skip
        report = prune_store(store, None, directory / "pruned", keep=v.proto_keep,
                             unit="window", by="prototype", progress=False,
                             prototype=options)  # fmt: skip
        return {"tokens": str(directory / "pruned" / "tokens"), "losses": None,
                "windows": report["units_kept"],
                "dropped_by_dedup": report.get("dropped_by_dedup"),
                "clusters": report.get("clusters")}  # fmt: skip

    def build_arm(self, stage: Stage, directory: Path) -> dict:
        arm = ARMS[stage.arm]
        v = self.cfg.view("arms", arm.reads)
        if arm.data == "curated":
            tokens, losses = self.data["stores"]["curated"], None
        else:
            tokens = self.results[stage.windows]["tokens"]
            losses = self.results[stage.scores]["losses"] if stage.scores else None
        return self.train(
            directory,
            "arms",
            arm.reads,
            label=stage.name,
            init=self.results["base"]["run"],
            tokens=tokens,
            selection=arm.selection_arguments(v),
            steps=self.steps(v.train_tokens or self.data["tokens"]["corpus"], v),
            seed=stage.seed,
            lr=v.learning_rate,
            ref_losses=losses,
            save_checkpoints=stage.save,
        )

    def build_analyses(self, stage: Stage, directory: Path) -> dict:
        first = self.cfg.seeds[0]
        slm = self.plan.get(f"slm-seed{first}")
        data = None
        if slm is not None:
            data = {"tokens": self.results[slm.windows]["tokens"],
                    "losses": self.results[slm.scores]["losses"]}  # fmt: skip
        return analyse(self.cfg.view("analyses"), self.results, self.data, self.out, directory,
                       first=first, slm_data=data)  # fmt: skip

    # ------------------------------------------------------------------ results
    def collect(self) -> dict:
        cfg, data = self.cfg, self.data
        runs: dict[str, list[dict]] = {}
        for name in cfg.arm_list:
            runs[name] = []
            for seed in cfg.seeds_of(name):
                stage = self.plan[f"{name}-seed{seed}"]
                run = {**self.results[stage.name], "seed": seed,
                       "reference_seed": stage.reference_seed}  # fmt: skip
                if stage.windows:
                    run["windows"] = stage.windows
                runs[name].append(run)
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
        keep_ref = ("steps", "train_tokens", "n_params", "flops_train")
        results["references"] = {
            name: {"seed": s.seed, "source": s.source,
                   **{k: self.results[name][k] for k in keep_ref}}
            for name, s in self.plan.items() if s.kind == "reference"
        }  # fmt: skip
        results["draws"] = {
            name: {"pool": s.pool, "source": s.source, "seed": s.seed,
                   **{k: self.results[name][k] for k in ("windows", "of")}}
            for name, s in self.plan.items() if s.kind == "draw"
        }  # fmt: skip
        keep = ("steps", "warmup_steps", "train_tokens", "flops_train", "n_params")
        for name in ("base", "proxy"):
            if name in self.plan and self.plan[name].cached:
                run = self.results[name]
                results[name] = {"seed": BASE_SEED, **{k: run[k] for k in keep if k in run}}
        results["summary"] = summarise(results)
        return results

    WHAT = {"proxy": "proxy pretraining", "reference": "reference training",
            "score": "scoring the drawn windows", "prune": "pruning",
            "embed": "embedding the drawn windows", "proto": "clustering"}  # fmt: skip

    def overheads(self, runs: dict) -> dict:
        """What each arm is charged before its training: the plan's charges of each of its
        seeds (the reference it pairs with, and its pretraining when it is a proxy; 2·N_ref
        FLOPs per token scored; the embedding; pruning and clustering in seconds), the mean
        over its seeds. The base is shared by every arm and left out."""
        out = {}
        for name, seeds in runs.items():
            flops, seconds, scored, kinds = [], [], [], []
            for run in seeds:
                charges = self.plan[f"{name}-seed{run['seed']}"].charges
                f = tokens = 0.0
                for key in charges:
                    kind, result = self.plan[key].kind, self.results[key]
                    if kind in ("reference", "proxy"):
                        f += result["flops_train"]
                    elif kind == "score":
                        f += 2.0 * result["n_params"] * result["scored_tokens"]
                        tokens += result["scored_tokens"]
                    elif kind == "embed":
                        f += result["flops"]
                    kinds += [kind] if kind not in kinds else []
                flops.append(f)
                scored.append(tokens)
                seconds.append(sum(self.stages.seconds.get(key, 0.0) for key in charges))
            if not kinds:
                continue
            out[name] = {
                "flops": float(np.mean(flops)),
                "seconds": float(np.mean(seconds)),
                "what": " + ".join(self.WHAT[k] for k in self.WHAT if k in kinds),
            }
            if "score" in kinds:
                out[name]["tokens_scored"] = float(np.mean(scored))
        return out
