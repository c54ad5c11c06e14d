"""`rho eval`'s steps in order (its options are rho.commands.eval); the work is done in the
modules it calls (heldout, fewshot, lm_eval_bridge) and every result is written by results.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rho.errors import UserError
from rho.evaluation.fewshot import evaluate_task, load_task, load_tokenizer, read_task_file
from rho.evaluation.heldout import check_same_tokenizer, evaluate_store, prepare_model
from rho.evaluation.lm_eval_bridge import lm_eval_metrics, run_lm_eval
from rho.evaluation.results import (
    EVAL_DIR,
    EVAL_FILE,
    EVAL_KIND,
    EVAL_MD,
    LM_EVAL_FILE,
    TASK_OUTPUTS,
    lm_eval_table,
    loss_table,
    open_output,
    save_eval,
    save_task_outputs,
    tasks_table,
)
from rho.io.disk import check_output_path
from rho.io.files import check_claimable, write_json_atomic
from rho.io.store import TokenStore
from rho.scoring.windows import parse_device


def _output_dir(out: str | None, model: str, inputs: list) -> Path:
    """Where the results go: ``--out``, or a ``rho_eval`` subdirectory of a local model
    directory; either way a directory rho makes and marks (or an earlier eval's), never one
    holding a user's files."""
    if out:
        path, what = Path(out), "--out"
    elif Path(model).is_dir():
        path, what = Path(model) / EVAL_DIR, "--model"
    else:
        raise UserError(f"--model {model!r} is not a local directory: pass --out DIR")
    check_output_path(path, what)
    check_claimable(path, EVAL_KIND, [p for p in inputs if p and Path(p).exists()], what)
    return path  # made and marked with the first result (rho.evaluation.results)


def _check(model, tokens, tasks, lm_eval_tasks, batch_size, max_new_tokens, seq_len, device):
    if not model:
        raise UserError("--model is required (or use --compare RUN_A RUN_B ...)")
    if not (tokens or tasks or lm_eval_tasks):
        raise UserError("nothing to evaluate: give --tokens, --task and/or --lm-eval-tasks")
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if seq_len < 2:
        raise UserError(f"--seq-len must be at least 2, got {seq_len}")
    if device is not None:
        parse_device(device)  # a bogus or absent device: one line, before any work


def run_eval(
    model: str | None,
    *,
    out: str | None = None,
    tokens: Sequence[str] = (),
    tasks: Sequence[str] = (),
    lm_eval_tasks: str | None = None,
    seq_len: int = 256,
    shots: int = 4,
    shots_file: str | None = None,
    max_new_tokens: int = 256,
    limit: int | None = None,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    tokenizer: str | None = None,
    lm_eval_include: str | None = None,
    num_fewshot: int | None = None,
    lm_eval_local_only: bool = False,
    progress: bool = True,
) -> Path:
    """Evaluate ``model`` on held-out TokenStores (``tokens``), few-shot task files (``tasks``)
    and lm-evaluation-harness tasks (``lm_eval_tasks``, comma-separated); every result goes to
    ``out``/eval.json and eval.md (default: the checkpoint directory's ``rho_eval``), which is
    returned."""
    _check(model, tokens, tasks, lm_eval_tasks, batch_size, max_new_tokens, seq_len, device)
    run = {"batch_size": batch_size, "device": device, "progress": progress}
    loaded = None  # the model, loaded once for the held-out stores and the tasks
    stores = [TokenStore(path) for path in tokens]
    task_items = [load_task(spec) for spec in tasks]
    shot_items = read_task_file(shots_file) if shots_file else None
    inputs = [*tokens, *tasks, shots_file, tokenizer, lm_eval_include]
    out = _output_dir(out, model, inputs)
    if stores or task_items:
        _, loaded = prepare_model(model, dtype, trust_remote_code)
    for store in stores:
        _held_out(model, loaded, store, out, seq_len, **run)
    if task_items:
        fallback = stores[0].tokenizer_dir if stores else None
        tok = load_tokenizer(tokenizer or model, fallback)
        few_shot = {"shots": shots, "limit": limit, "max_new_tokens": max_new_tokens}
        _few_shot(model, loaded, tok, task_items, shot_items, out, **few_shot, **run)
    if lm_eval_tasks:
        del loaded  # the harness loads its own copy
        harness = {"include_path": lm_eval_include, "include_defaults": not lm_eval_local_only}
        harness |= {"limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size}
        harness |= {"device": device, "dtype": dtype, "tokenizer": tokenizer}
        _harness(model, lm_eval_tasks, out, trust_remote_code=trust_remote_code, **harness)
    print(f"\nwrote {out / EVAL_FILE} and {out / EVAL_MD}")
    return out


def _held_out(name: str, model, store: TokenStore, out: Path, seq_len: int, **run) -> None:
    check_same_tokenizer(name, store)
    result = evaluate_store(model, store, seq_len, **run)
    result["model"] = name
    save_eval(out, "loss", store.path.name, result, name)
    print(f"\nheld-out loss on {store.path} (seq_len {seq_len}):\n")
    print(loss_table(result))


def _few_shot(name: str, model, tokenizer, tasks, shot_items, out: Path, **options) -> None:
    for task, items in tasks:
        summary, rows = evaluate_task(model, tokenizer, items, shot_items=shot_items, **options)
        file = save_task_outputs(out, task, rows)
        summary = {"task": task, "model": name, "outputs": file.name, **summary}
        record = save_eval(out, "tasks", task, summary, name)
    print(f"\nfew-shot exact match (per-item outputs in {out / TASK_OUTPUTS}):\n")
    print(tasks_table({n: record["tasks"][n] for n, _ in tasks}))


def _harness(name: str, lm_eval_tasks: str, out: Path, **options) -> None:
    names = [t.strip() for t in lm_eval_tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--lm-eval-tasks is empty")
    results = run_lm_eval(name, names, **options)
    write_json_atomic(open_output(out) / LM_EVAL_FILE, results)
    metrics = lm_eval_metrics(results)
    save_eval(out, "lm_eval", None, {"metrics": metrics, "file": LM_EVAL_FILE}, name)
    print(f"\nlm-evaluation-harness (full results in {out / LM_EVAL_FILE}):\n")
    print(lm_eval_table(metrics))
