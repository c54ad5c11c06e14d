"""`rho sweep`: short SLM trainings at several selection ratios on the same data, seed and
budget, and held-out loss against ratio (Rho-1 Fig. 9). Writes one run per ratio under
runs/ratio-R/ (reused on a rerun), sweep.json, sweep.md and fig9_sweep.png.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import replace
from pathlib import Path

from transformers import TrainingArguments

from rho.analysis import plots
from rho.analysis import selection as sel
from rho.experiment.records.sweep import SweepRun, SweepSettings
from rho.io.files import (
    check_replaceable,
    claim_output_dir,
    read_json,
    remove_path,
    write_json_atomic,
    write_text_atomic,
)
from rho.io.schema import validate
from rho.training.options import ModelDataArguments
from rho.training.runs import RUN_KIND
from rho.training.train import run_training
from rho.training.trainer import SelectiveTrainingArguments

SWEEP_KIND = "rho.Sweep"  # output_kind of its --out (rho.io.files)


def training_defaults(max_steps: int) -> dict:
    """The TrainingArguments every sweep run starts from, under the user's own."""
    return {"report_to": "none", "save_strategy": "no", "logging_steps": max(1, max_steps // 20)}


def given_options(args: TrainingArguments) -> dict:
    """The TrainingArguments that differ from the Trainer's defaults (the sweep's record of
    them; each run's output_dir, max_steps and seed are the sweep's own)."""
    default = type(args)().to_dict()
    skip = ("output_dir", "max_steps", "seed", "selection", "ratio", "score")
    return {k: v for k, v in args.to_dict().items() if k not in skip and default.get(k) != v}


def run_sweep(
    ratios: list[float],
    *,
    tokens: str,
    ref_losses: str,
    eval_tokens: str,
    out: Path,
    preset: str | None = "tiny",
    model: str | None = None,
    max_steps: int,
    seed: int = 0,
    score: str = "excess",
    seq_len: int | None = None,
    training: SelectiveTrainingArguments | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train one SLM run per ratio (reusing finished ones unless ``overwrite``), write the
    files; returns the summary, the Markdown table, the paths and the data. Every run takes
    ``training`` (default: ``training_defaults``) with its own output_dir, max_steps, seed and
    selection (SLM at the ratio, by ``score``)."""
    if training is None:
        training = SelectiveTrainingArguments(**training_defaults(max_steps))
    ratios = sorted(set(float(r) for r in ratios))
    inputs = [tokens, ref_losses, eval_tokens, model if model and Path(model).exists() else None]
    claim_output_dir(out, SWEEP_KIND, inputs)  # new or an earlier sweep: never a user's directory
    paths = {"tokens": str(tokens), "ref_losses": str(ref_losses), "eval_tokens": str(eval_tokens)}
    data = ModelDataArguments(
        **paths, model=model, preset=None if model else preset, seq_len=seq_len
    )
    results = []
    for ratio in ratios:
        run_dir = out / "runs" / f"ratio-{ratio:g}"
        result_file = run_dir / "sweep_result.json"
        if result_file.exists() and not overwrite:
            results.append(validate(SweepRun, read_json(result_file), f"{result_file} is damaged"))
            _say(progress, f"ratio {ratio:g}: reusing {result_file}")
            continue
        if run_dir.exists() or run_dir.is_symlink():  # an unfinished or replaced run: afresh
            check_replaceable(run_dir, RUN_KIND, inputs, "sweep run")
            remove_path(run_dir)
        run = {"output_dir": str(run_dir), "max_steps": max_steps, "seed": seed}
        args = replace(training, **run, selection="token", ratio=ratio, score=score)
        _say(progress, f"ratio {ratio:g}: training {max_steps} steps into {run_dir}")
        results.append(_train(data, args))
        write_json_atomic(result_file, results[-1].model_dump(), sort_keys=False)
        _say(progress, f"ratio {ratio:g}: held-out loss {results[-1].eval_loss:.4f}")
    settings = SweepSettings(
        **paths,
        preset=data.preset,
        model=model,
        max_steps=max_steps,
        seed=seed,
        score=score,
        training_args=given_options(training),
    )
    return _write_files(out, ratios, results, settings)


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line)


def _train(data: ModelDataArguments, args: SelectiveTrainingArguments) -> SweepRun:
    """Train one run; returns its sweep_result.json record."""
    t0 = time.perf_counter()
    trainer = run_training(data, args)
    history = trainer.state.log_history
    evals = [h.get("eval_loss") for h in history if "eval_loss" in h]
    trains = [h.get("loss") for h in history if "loss" in h]
    result = SweepRun(
        ratio=args.ratio,
        eval_loss=evals[-1] if evals else float("nan"),
        final_train_loss=trains[-1] if trains else float("nan"),
        max_steps=args.max_steps,
        seed=args.seed,
        seconds=time.perf_counter() - t0,
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        run_dir=args.output_dir,
    )
    del trainer  # its model and optimizer: freed before the next ratio trains
    gc.collect()
    return result


def _write_files(
    out: Path, ratios: list[float], results: list[SweepRun], settings: SweepSettings
) -> dict:
    """sweep.json, sweep.md and fig9_sweep.png; returns run_sweep's result."""
    losses = [float("nan") if r.eval_loss is None else r.eval_loss for r in results]
    summary = sel.sweep_summary(ratios, losses)
    data = {
        "ratios": ratios,
        "eval_loss": losses,
        "summary": summary,
        "runs": [r.model_dump() for r in results],
        "settings": settings.model_dump(),
    }
    table = _markdown_table(summary)
    steps, seed = settings.max_steps, settings.seed
    md = [
        "# Selection-ratio sweep",
        "",
        f"SLM (score {settings.score}) at each ratio, {steps} steps, seed {seed}, "
        f"{settings.described()}; held-out loss on "
        f"`{settings.eval_tokens}`. Paper (Fig. 9): ~60% best for 1B on math.",
        "",
        table,
        "",
        "![sweep](fig9_sweep.png)",
        "",
    ]
    note = f" — {steps} steps, seed {seed}"
    files = [
        write_json_atomic(out / "sweep.json", data, sort_keys=False),
        write_text_atomic(out / "sweep.md", "\n".join(md)),
        plots.sweep(ratios, losses, summary, out / "fig9_sweep.png", note),
    ]
    return {"summary": summary, "markdown_table": table, "files": files, "data": data}


def _markdown_table(summary: dict) -> str:
    """Held-out loss at each ratio and its gap to ratio 1.0, the best ratio marked."""
    lines = ["| ratio | held-out loss | vs ratio 1.0 |", "|---:|---:|---:|"]
    for row in summary["rows"]:
        gap = row.get("vs_all_tokens")
        gap_text = "" if gap is None or not math.isfinite(gap) else f"{gap:+.4f}"
        mark = " (best)" if row["ratio"] == summary["best_ratio"] else ""
        lines.append(f"| {row['ratio']:g}{mark} | {row['eval_loss']:.4f} | {gap_text} |")
    return "\n".join(lines)
