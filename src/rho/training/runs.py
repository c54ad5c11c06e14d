"""The run directory `rho train` writes: its file names, the callback that writes its metrics,
and the readers every later stage uses.

    OUTPUT_DIR/
      metrics.jsonl        one JSON object per log (training and evaluation), rank 0 only
      rho_options.json     what the run trains: its options and inputs (rho.training.run_options)
      rho_compute.json     cumulative compute counters (also in each checkpoint, for resume)
      checkpoint-N/        the Trainer's checkpoints (N = optimizer step), each built in a
                           scratch sibling .checkpoint-N.tmp-PID-* and renamed into place whole
      config.json, *.safetensors, tokenizer files: the final model
      rho_manifest.json    in each checkpoint and beside the final model, written last: the
                           step and every file's size. Only a model whose manifest matches its
                           files is "whole"; readers list nothing else (a kill -9 or a full disk
                           mid-save leaves no manifest, or a size that differs).
      .rho-output          the marker naming the directory a run directory (rho.io.files)
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rho.errors import UserError
from rho.io.files import (
    MARKER,
    check_replaceable,
    claim_output_dir,
    clear_output_dir,
    fsync_path,
    fsync_tree,
    read_json,
    read_jsonl,
    remove_path,
    write_json_atomic,
    write_text_atomic,
)
from rho.io.schema import Count, Name, Strict, validate
from rho.testhook import hold
from rho.training.run_options import OPTIONS_FILE, RunOptions, read_run_options

METRICS_FILE = "metrics.jsonl"
COMPUTE_FILE = "rho_compute.json"
RUN_KIND = "rho.Run"  # output_kind of a run directory (see rho.io.files.mark_output)
MANIFEST_FILE = "rho_manifest.json"
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
SCRATCH_GLOB = ".checkpoint-*.tmp-*"  # checkpoints being written (rho.training.trainer)
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer's own name for it


class MetricsFileCallback(TrainerCallback):
    """Append every log (training and evaluation) to output_dir/metrics.jsonl on rank 0."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(args.output_dir) / METRICS_FILE, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def write_run_files(output_dir: str | Path, options: RunOptions, counters: dict) -> None:
    """The run's options and compute counters beside a saved model."""
    write_json_atomic(Path(output_dir) / OPTIONS_FILE, options.to_json())
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


# --- Whole models: the manifest ------------------------------------------------------------------


class Manifest(Strict):
    """rho_manifest.json: the step a model was saved at, and each of its files' size."""

    step: Count
    files: dict[Name, Count]


def read_manifest(directory: str | Path) -> Manifest:
    file = Path(directory) / MANIFEST_FILE
    return validate(Manifest, read_json(file), f"{file} is damaged")


def final_model_files(run_dir: Path) -> list[Path]:
    """The final model's files in a run directory: its plain top-level files but the log."""
    skip = {METRICS_FILE, MANIFEST_FILE, MARKER}
    return [
        p for p in run_dir.iterdir()
        if p.is_file() and p.name not in skip and not p.name.startswith(".")
    ]  # fmt: skip


def write_manifest(directory: str | Path, step: int, files: list[Path] | None = None) -> None:
    """Mark a saved model (a checkpoint; or the final model, given its ``files``) whole: its
    files reach the disk, then the manifest of their sizes is written, last."""
    directory = Path(directory)
    if files is None:
        fsync_tree(directory)
        files = [p for p in directory.rglob("*") if p.is_file()]
    else:
        for file in files:
            fsync_tree(file)
    files = sorted(p for p in files if p.name != MANIFEST_FILE)
    sizes = {str(p.relative_to(directory)): p.stat().st_size for p in files}
    write_json_atomic(directory / MANIFEST_FILE, {"step": int(step), "files": sizes})


def drop_manifest(directory: str | Path) -> None:
    """The model in ``directory`` is about to be rewritten: until it is whole, it is not listed."""
    (Path(directory) / MANIFEST_FILE).unlink(missing_ok=True)


def manifest_problem(directory: str | Path) -> str | None:
    """None when the model in ``directory`` is whole, else why not (in a few words)."""
    file = Path(directory) / MANIFEST_FILE
    if not file.is_file():
        return f"no {MANIFEST_FILE} (its save was cut short, or rho did not write it)"
    try:
        sizes = read_manifest(directory).files
    except UserError:
        return f"{MANIFEST_FILE} is damaged"
    for name, size in sizes.items():
        path = Path(directory) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not the {size} it was saved with"
    return None


def whole_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's whole checkpoint-N directories, in step order."""
    if not Path(run_dir).is_dir():
        return []
    return sorted(
        (checkpoint_step(p), p)
        for p in Path(run_dir).iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and manifest_problem(p) is None
    )


def check_whole_checkpoint(checkpoint: str | Path) -> None:
    """A checkpoint to resume from must be whole: else a one-line UserError."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise UserError(f"checkpoint {checkpoint} does not exist")
    problem = manifest_problem(path)
    if problem:
        raise UserError(f"checkpoint {checkpoint} is not whole: {problem}; resume from another")


def run_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of a run's whole checkpoints in step order, plus the final model in the run
    directory itself when it is whole and newer than the last checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    found = whole_checkpoints(run_dir)
    if manifest_problem(run_dir) is None:
        final = read_manifest(run_dir).step
        if not found or final > found[-1][0]:
            found.append((final, run_dir))
    if not found:
        raise UserError(
            f"{run_dir} holds no whole model: no checkpoint-N/ or final model with a matching "
            f"{MANIFEST_FILE} (a killed or unfinished run?)"
        )
    return found


def _rotate_checkpoints(
    output_dir: str, save_total_limit: int | None, best_model_checkpoint: str | None, **_
) -> None:
    """transformers >= 5's ``trainer_utils.rotate_checkpoints`` (4.x has it only as a private
    Trainer method): keep ``save_total_limit`` checkpoints, never the newest (by mtime, by step
    where mtimes are too close to tell) or the best."""
    found = [p for p in Path(output_dir).iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    if not save_total_limit or save_total_limit <= 0 or len(found) <= save_total_limit:
        return
    found.sort(key=lambda p: p.stat().st_mtime)
    if found[-1].stat().st_mtime - found[0].stat().st_mtime < 1.0:
        found.sort(key=checkpoint_step)
    protected = {found[-1]} | ({Path(best_model_checkpoint)} if best_model_checkpoint else set())
    remaining = len(found)
    for path in found:
        if remaining <= max(save_total_limit, len(protected)):
            break
        if path not in protected:
            remove_path(path)
            remaining -= 1


try:
    from transformers.trainer_utils import rotate_checkpoints
except ImportError:  # transformers 4.x
    rotate_checkpoints = _rotate_checkpoints


def publish_checkpoint(written: Path, final: Path, state, args) -> None:
    """Rename a checkpoint the Trainer wrote into a scratch directory into place, whole: the best
    checkpoint's path set right (the Trainer looked for it in the scratch directory), the
    manifest written last, the old checkpoints rotated. Rank 0 (``args.should_save``) only."""
    if not written.is_dir():
        raise RuntimeError(
            f"transformers did not write the checkpoint into {written}: its "
            "Trainer._save_checkpoint changed, and rho.training.trainer must follow it"
        )
    run_dir = final.parent
    best = state.best_global_step
    if best:
        best_dir = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best}"
        if best == state.global_step or best_dir.exists():
            state.best_model_checkpoint = str(best_dir)
            state.save_to_json(str(written / TRAINER_STATE_FILE))
    write_manifest(written, state.global_step)
    if final.exists():  # the same step saved again
        remove_path(final)
    os.replace(written, final)
    fsync_path(run_dir)
    remove_path(written.parent)
    rotate_checkpoints(
        output_dir=str(run_dir),
        save_total_limit=args.save_total_limit,
        best_model_checkpoint=state.best_model_checkpoint,
        use_mtime=True,
    )
    hold("checkpoint.published")  # tests only: killed exactly here


# --- Starting, resuming or replacing a run directory -------------------------------------------


def prepare_run_dir(
    output_dir: str | Path,
    resume: str | None,
    overwrite: bool,
    inputs: list = (),
    writer: bool = True,
    commit: bool = True,
) -> str | None:
    """The run directory `rho train` may write, and the checkpoint it resumes from (None: start
    afresh). ``output_dir`` must be new, empty or a rho run (never someone else's directory).
    An existing run is continued only with ``--resume_from_checkpoint`` (``last``: its newest
    whole checkpoint) and replaced only with ``--overwrite``. On resume the log is cut back to
    the checkpoint's step and unfinished checkpoints are removed, so nothing of the dead run is
    read as this one's. Only the ``writer`` (rank 0, holding the lock) checks and changes the
    directory; the other ranks only resolve ``last``. ``commit=False`` checks only (call it before
    any work, and again with ``commit=True`` once the run's inputs are checked too)."""
    path = Path(output_dir)
    if not writer:
        if resume == "last":
            found = whole_checkpoints(path)
            return str(found[-1][1]) if found else None
        return resume
    _check_resume_flags(path, resume, overwrite)
    held = path.is_dir() and any(p.name != MARKER for p in path.iterdir())
    if resume == "last" and not held:
        raise UserError(f"--resume_from_checkpoint last: {path} holds no run to continue")
    if held:
        check_replaceable(path, RUN_KIND, inputs, "--output_dir")  # never a foreign directory
    if commit:
        claim_output_dir(path, RUN_KIND, inputs, "--output_dir")
    if not held:
        return resume
    if overwrite:
        if commit:
            clear_output_dir(path)
        return resume
    resume = _resume_point(path, resume)
    if commit:
        _cut_back(path, checkpoint_step(resume))
    return resume


def _inside(run_dir: Path, checkpoint: str | None) -> bool:
    return bool(checkpoint) and run_dir.resolve() in Path(checkpoint).resolve().parents


def _check_resume_flags(path: Path, resume: str | None, overwrite: bool) -> None:
    if overwrite and resume == "last":
        raise UserError("--overwrite starts afresh: it cannot also resume (drop one of them)")
    if resume and resume != "last":
        check_whole_checkpoint(resume)
    if overwrite and _inside(path, resume):
        raise UserError("--overwrite would delete the checkpoint given to resume from")


def _resume_point(path: Path, resume: str | None) -> str:
    """The checkpoint an existing run directory continues from: the newest whole one, asked
    for by name or as ``last``."""
    checkpoints = whole_checkpoints(path)
    if resume is None:
        raise UserError(_occupied(path, checkpoints))
    if resume == "last":
        if not checkpoints:
            raise UserError(f"--resume_from_checkpoint last: {path} holds no whole checkpoint")
        resume = str(checkpoints[-1][1])
    if not _inside(path, resume):
        raise UserError(
            f"--output_dir {path} holds another rho run: resume {resume} into a new directory"
        )
    newest = checkpoints[-1][1] if checkpoints else None
    if newest is None or Path(resume).resolve() != newest.resolve():
        raise UserError(
            f"{resume} is not the newest whole checkpoint of {path} "
            f"({getattr(newest, 'name', None)} is): resume from that, or start afresh with "
            "--overwrite"
        )
    return resume


def _occupied(path: Path, checkpoints: list) -> str:
    if manifest_problem(path) is None:
        what = "a finished rho run"
    else:
        what = "an unfinished rho run (killed?)"
    if checkpoints:
        return (
            f"--output_dir {path} holds {what}: pass --resume_from_checkpoint last to continue "
            f"from {checkpoints[-1][1].name}, or --overwrite to replace it"
        )
    return f"--output_dir {path} holds {what} with no whole checkpoint: pass --overwrite"


def _cut_back(run_dir: Path, step: int) -> None:
    """Resuming at ``step``: drop what the dead run wrote after it (scratch, unfinished
    checkpoints, the final model's manifest, later log records)."""
    for p in run_dir.glob(SCRATCH_GLOB):
        remove_path(p)
    for p in run_dir.iterdir():
        if p.is_dir() and checkpoint_step(p) is not None and manifest_problem(p) is not None:
            remove_path(p)
    drop_manifest(run_dir)
    file = run_dir / METRICS_FILE
    if file.exists():
        lines = file.read_text(errors="replace").splitlines()  # a damaged log is no traceback
        kept = [line for line in lines if _record_step(line) <= step]
        write_text_atomic(file, "".join(line + "\n" for line in kept))


def _record_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError, TypeError, OverflowError):
        return math.inf  # a torn last line of a killed run, or a damaged one


def run_options(run_dir: str | Path) -> RunOptions:
    """rho_options.json of a run (the run directory's, else its newest checkpoint's)."""
    candidates = [Path(run_dir) / OPTIONS_FILE]
    candidates += [p / OPTIONS_FILE for _, p in reversed(run_checkpoints(run_dir))]
    for file in candidates:
        if file.exists():
            return read_run_options(file)
    raise UserError(f"{run_dir} has no {OPTIONS_FILE} (not a `rho train` run?)")


def eval_records(run_dir: str | Path, key: str = "eval_loss") -> list[dict]:
    """The run's evaluation records holding ``key``, one per evaluated point (by tokens seen),
    in order (with several eval sets, the Trainer logs eval_NAME_loss)."""
    points = {r["tokens_seen"]: r for r in read_metrics(run_dir) if key in r}
    return [points[t] for t in sorted(points)]
