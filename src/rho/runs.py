"""The run directory `rho train` writes: its file names, the callback that writes its metrics,
and the readers every later stage uses.

    OUTPUT_DIR/
      metrics.jsonl        one JSON object per log (training and evaluation), rank 0 only
      rho_options.json     the selection, data and seq_len options of the run
      rho_compute.json     cumulative compute counters (also in each checkpoint, for resume)
      checkpoint-N/        the Trainer's checkpoints (N = optimizer step)
      config.json, *.safetensors, tokenizer files: the final model
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import TrainerCallback

from rho.errors import UserError
from rho.files import read_json, read_jsonl, write_json_atomic

METRICS_FILE = "metrics.jsonl"
OPTIONS_FILE = "rho_options.json"
COMPUTE_FILE = "rho_compute.json"
RUN_KIND = "rho.Run"  # output_kind of a run directory (see rho.files.mark_output)
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


class MetricsFileCallback(TrainerCallback):
    """Append every log (training and evaluation) to output_dir/metrics.jsonl on rank 0."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(args.output_dir) / METRICS_FILE, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def write_run_files(output_dir: str | Path, options: dict, counters: dict) -> None:
    """The run's options and compute counters beside a saved model."""
    write_json_atomic(Path(output_dir) / OPTIONS_FILE, options)
    write_json_atomic(Path(output_dir) / COMPUTE_FILE, counters, sort_keys=False)


def read_counters(checkpoint: str | Path) -> dict:
    """A checkpoint's compute counters ({} when it has none)."""
    file = Path(checkpoint) / COMPUTE_FILE
    return read_json(file) if file.exists() else {}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The training log (metrics.jsonl) of a run; unreadable lines are skipped."""
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def checkpoint_step(path: str | Path) -> int | None:
    match = CHECKPOINT_RE.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def run_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of a run's checkpoint-N directories in step order, plus the final model in the
    run directory itself when it is newer than the last checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    found = sorted(
        (checkpoint_step(p), p)
        for p in run_dir.iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and (p / "config.json").exists()
    )
    if (run_dir / "config.json").exists():
        steps = [int(r["step"]) for r in read_metrics(run_dir) if "step" in r]
        final = max(steps) if steps else (found[-1][0] + 1 if found else 0)
        if not found or final > found[-1][0]:
            found.append((final, run_dir))
    if not found:
        raise UserError(f"{run_dir} holds no model: no checkpoint-N/ and no config.json")
    return found


def run_options(run_dir: str | Path) -> dict:
    """rho_options.json of a run (the run directory's, else its newest checkpoint's)."""
    candidates = [Path(run_dir) / OPTIONS_FILE]
    candidates += [p / OPTIONS_FILE for _, p in reversed(run_checkpoints(run_dir))]
    for file in candidates:
        if file.exists():
            return read_json(file)
    raise UserError(f"{run_dir} has no {OPTIONS_FILE} (not a `rho train` run?)")


def eval_records(run_dir: str | Path, key: str = "eval_loss") -> list[dict]:
    """The run's evaluation records holding ``key``, one per evaluated point (by tokens seen),
    in order (with several eval sets, the Trainer logs eval_NAME_loss)."""
    points = {r["tokens_seen"]: r for r in read_metrics(run_dir) if key in r}
    return [points[t] for t in sorted(points)]


def last_record(run_dir: str | Path, key: str = "flops_train") -> dict:
    """The run's last metrics record holding ``key``."""
    rows = [r for r in read_metrics(run_dir) if key in r]
    if not rows:
        raise UserError(f"{Path(run_dir) / METRICS_FILE} has no record with {key!r}")
    return rows[-1]
