"""The lm-evaluation-harness bridge: run the harness's Hugging Face backend on a checkpoint and
read its metrics. lm-eval is an optional dependency (``pip install 'rho[eval]'``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rho.errors import UserError
from rho.scoring.windows import default_device


def _import_lm_eval():
    # Deferred: lm-eval is an optional dependency (rho[eval]) and slow to import.
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise UserError(
            f"the lm-eval bridge needs lm-evaluation-harness ({err}): pip install 'rho[eval]'"
        ) from None
    return lm_eval, TaskManager


def _plain(value):
    """The harness's results as JSON-ready values: numpy scalars become Python numbers, other
    objects their text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def lm_eval_metrics(results: dict) -> dict:
    """{task: {metric: value}} from lm-eval's results, without stderr entries."""
    table = {}
    for task, entries in (results.get("results") or {}).items():
        metrics = {}
        for key, value in entries.items():
            metric = key.split(",")
            if len(metric) == 2 and not metric[0].endswith("_stderr"):
                if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                    metrics[key] = float(value)
        table[task] = metrics
    return table


def run_lm_eval(
    model_path: str | Path,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str = "float32",
    tokenizer: str | Path | None = None,
    trust_remote_code: bool = False,
    include_defaults: bool = True,
) -> dict:
    """Run lm-evaluation-harness's HF backend on a checkpoint; returns its results dict (per-sample
    logs are not kept). ``include_defaults=False`` indexes only ``include_path``'s tasks, not the
    harness's own thousands (saves ~10 s of start-up)."""
    lm_eval, TaskManager = _import_lm_eval()
    if include_path is not None and not Path(include_path).exists():
        raise UserError(f"--lm-eval-include {include_path} does not exist")
    if not include_defaults and include_path is None:
        raise UserError("--lm-eval-local-only needs --lm-eval-include DIR")
    options = {} if include_defaults else {"include_defaults": False}
    manager = TaskManager(include_path=str(include_path) if include_path else None, **options)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hints = {t: difflib.get_close_matches(t, known, n=3) for t in unknown}
        detail = "; ".join(f"{t} (close: {', '.join(h) or 'none'})" for t, h in hints.items())
        raise UserError(f"lm-eval does not know the task(s) {detail}")
    model_args = f"pretrained={model_path},dtype={dtype}"
    if tokenizer is not None:
        model_args += f",tokenizer={tokenizer}"
    if trust_remote_code:
        model_args += ",trust_remote_code=True"
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=str(device or default_device()),
        limit=limit,
        task_manager=manager,
        log_samples=False,
    )
    if results is None:  # non-zero ranks under a distributed launch
        return {}
    results.pop("samples", None)
    return _plain(results)
