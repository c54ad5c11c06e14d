"""`rho sweep` (old spelling: `rho analyze sweep`): short SLM trainings at several selection
ratios on the same data, seed and budget, and held-out loss against ratio (Rho-1 Fig. 9).
Writes one run per ratio under runs/ratio-R/ (reused on a rerun), sweep.json, sweep.md and
fig9_sweep.png.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from pathlib import Path

from transformers import HfArgumentParser

from rho.analysis import plots
from rho.analysis import selection as sel
from rho.analysis.common import check_positive, print_files
from rho.errors import UserError
from rho.files import (
    check_replaceable,
    claim_output_dir,
    read_json,
    remove_path,
    write_json_atomic,
    write_text_atomic,
)
from rho.options import ModelDataArguments
from rho.runs import RUN_KIND
from rho.select import SCORES, check_ratio
from rho.trainer import SelectiveTrainingArguments
from rho.training import run_training

SWEEP_KIND = "rho.Sweep"  # output_kind of its --out (rho.files)
RESERVED = ("--output_dir", "--output-dir", "--max_steps", "--max-steps", "--seed", "--selection")
RESERVED += ("--ratio",)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho sweep",
        allow_abbrev=False,  # unknown options go to TrainingArguments, never to a prefix match
        description="Short SLM trainings at several selection ratios on the same data, seed and "
        "budget; held-out loss against ratio (Fig. 9). Other options are passed to "
        "transformers.TrainingArguments (e.g. --learning_rate 1e-3 --use_cpu).",
    )
    parser.add_argument("--ratios", type=float, nargs="+", required=True, help="kept fractions")
    parser.add_argument("--tokens", required=True, help="training TokenStore")
    parser.add_argument("--ref-losses", required=True, help="LossStore of the training tokens")
    parser.add_argument("--eval-tokens", required=True, help="held-out TokenStore")
    parser.add_argument("--out", required=True, help="output directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", default=None, help="model preset (default: tiny)")
    group.add_argument("--model", default=None, help="model dir to continue from")
    parser.add_argument("--max-steps", type=int, required=True, help="optimizer steps per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    parser.add_argument("--score", default="excess", choices=SCORES)
    parser.add_argument("--seq-len", type=int, default=None, help="(default: the LossStore's)")
    parser.add_argument("--overwrite", action="store_true", help="rerun ratios already done")
    args, rest = parser.parse_known_args(argv)
    for flag in rest:
        if flag.split("=")[0] in RESERVED:
            raise UserError(
                f"{flag.split('=')[0]} is set by the sweep: use --out, --max-steps, --seed, "
                "--ratios"
            )
    check_positive("--max-steps", args.max_steps)
    for r in args.ratios:
        check_ratio(r, "--ratios")
    result = run_sweep(
        args.ratios,
        tokens=args.tokens,
        ref_losses=args.ref_losses,
        eval_tokens=args.eval_tokens,
        out=Path(args.out),
        preset=args.preset if args.model else (args.preset or "tiny"),
        model=args.model,
        max_steps=args.max_steps,
        seed=args.seed,
        score=args.score,
        seq_len=args.seq_len,
        training_argv=rest,
        overwrite=args.overwrite,
    )
    print("rho analyze sweep:")
    print(result["markdown_table"])
    best = result["summary"]["best_ratio"]
    if best is not None:
        print(f"best ratio {best:g} (held-out loss {result['summary']['best_eval_loss']:.4f})")
    print_files(result["files"])
    return 0


def _training_arguments(argv: list[str]) -> SelectiveTrainingArguments:
    """The training options; the sweep sets the selection options itself (appended last)."""
    parser = HfArgumentParser(SelectiveTrainingArguments)  # rho's defaults, like `rho train`
    parser.prog = "rho analyze sweep (TrainingArguments)"
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # e.g. "Some specified arguments are not used ..."
        raise UserError(f"bad training option: {' '.join(str(err).split())}") from None
    return args


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
    training_argv: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train one SLM run per ratio (reusing finished ones unless ``overwrite``), write the
    files; returns the summary, the Markdown table, the paths and the data."""
    ratios = sorted(set(float(r) for r in ratios))
    inputs = [tokens, ref_losses, eval_tokens, model if model and Path(model).exists() else None]
    claim_output_dir(out, SWEEP_KIND, inputs)  # new or an earlier sweep: never a user's directory
    results = []
    for ratio in ratios:
        run_dir = out / "runs" / f"ratio-{ratio:g}"
        result_file = run_dir / "sweep_result.json"
        if result_file.exists() and not overwrite:
            results.append(read_json(result_file))
            if progress:
                print(f"ratio {ratio:g}: reusing {result_file}")
            continue
        if run_dir.exists() or run_dir.is_symlink():  # an unfinished or replaced run: afresh
            check_replaceable(run_dir, RUN_KIND, inputs, "sweep run")
            remove_path(run_dir)
        defaults = ["--report_to", "none", "--save_strategy", "no"]
        defaults += ["--logging_steps", str(max(1, max_steps // 20))]
        forced = ["--output_dir", str(run_dir), "--max_steps", str(max_steps), "--seed", str(seed)]
        forced += ["--selection", "token", "--ratio", repr(ratio), "--score", score]
        args = _training_arguments([*defaults, *(training_argv or []), *forced])
        data = ModelDataArguments(
            tokens=str(tokens),
            model=model,
            preset=None if model else preset,
            ref_losses=str(ref_losses),
            eval_tokens=str(eval_tokens),
            seq_len=seq_len,
        )
        if progress:
            print(f"ratio {ratio:g}: training {max_steps} steps into {run_dir}")
        t0 = time.perf_counter()
        trainer = run_training(data, args)
        history = trainer.state.log_history
        evals = [h["eval_loss"] for h in history if "eval_loss" in h]
        trains = [h["loss"] for h in history if "loss" in h]
        result = {
            "ratio": ratio,
            "eval_loss": evals[-1] if evals else float("nan"),
            "final_train_loss": trains[-1] if trains else float("nan"),
            "max_steps": max_steps,
            "seed": seed,
            "seconds": time.perf_counter() - t0,
            "tokens_seen": int(trainer.state.num_input_tokens_seen),
            "run_dir": str(run_dir),
        }
        del trainer
        gc.collect()
        write_json_atomic(result_file, result, sort_keys=False)
        results.append(result)
        if progress:
            print(f"ratio {ratio:g}: held-out loss {result['eval_loss']:.4f}")

    losses = [float("nan") if r["eval_loss"] is None else r["eval_loss"] for r in results]
    summary = sel.sweep_summary(ratios, losses)
    data = {
        "ratios": ratios,
        "eval_loss": losses,
        "summary": summary,
        "runs": results,
        "settings": {
            "tokens": str(tokens),
            "ref_losses": str(ref_losses),
            "eval_tokens": str(eval_tokens),
            "preset": None if model else preset,
            "model": model,
            "max_steps": max_steps,
            "seed": seed,
            "score": score,
            "training_args": list(training_argv or []),
        },
    }
    files = [write_json_atomic(out / "sweep.json", data, sort_keys=False)]
    lines = ["| ratio | held-out loss | vs ratio 1.0 |", "|---:|---:|---:|"]
    for row in summary["rows"]:
        gap = row.get("vs_all_tokens")
        gap_text = "" if gap is None or not math.isfinite(gap) else f"{gap:+.4f}"
        mark = " (best)" if row["ratio"] == summary["best_ratio"] else ""
        lines.append(f"| {row['ratio']:g}{mark} | {row['eval_loss']:.4f} | {gap_text} |")
    table = "\n".join(lines)
    md = [
        "# Selection-ratio sweep",
        "",
        f"SLM (score {score}) at each ratio, {max_steps} steps, seed {seed}, "
        f"{'model ' + str(model) if model else 'preset ' + str(preset)}; held-out loss on "
        f"`{eval_tokens}`. Paper (Fig. 9): ~60% best for 1B on math.",
        "",
        table,
        "",
        "![sweep](fig9_sweep.png)",
        "",
    ]
    files.append(write_text_atomic(out / "sweep.md", "\n".join(md)))
    note = f" — {max_steps} steps, seed {seed}"
    files.append(plots.sweep(ratios, losses, summary, out / "fig9_sweep.png", note))
    return {"summary": summary, "markdown_table": table, "files": files, "data": data}
