"""Results files: ``eval.json`` (for machines), ``eval.md`` (for people), the per-item
``task_outputs.jsonl``, the Markdown tables printed by ``rho eval``, and ``--compare``.

The output directory is one rho made (``--out`` or ``MODEL/rho_eval``, marked as a
``rho.evaluation``
output), never one holding a user's files. Every run of ``rho eval`` merges its results into
its ``eval.json`` (other sections kept) and rewrites ``eval.md`` from it; ``compare_runs`` puts
runs side by side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from rho.errors import UserError
from rho.io.files import claim_output_dir, write_atomic, write_json_atomic, write_text_atomic
from rho.io.schema import EvalRecord, parse_json, read_json_file, validate

EVAL_DIR = "rho_eval"  # the default output: this subdirectory of the model directory
EVAL_KIND = "rho.eval"  # its marker's kind (rho.io.files.MARKER)
EVAL_FILE = "eval.json"
EVAL_MD = "eval.md"
TASK_OUTPUTS = "task_outputs.jsonl"
LM_EVAL_FILE = "lm_eval_results.json"
EVAL_FORMAT = "rho.eval"


# --- Markdown tables ------------------------------------------------------------------------------


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def loss_table(result: dict) -> str:
    """Markdown table of one held-out loss result: overall, then each domain."""
    header = ["domain", "tokens", "bytes", "loss", "perplexity", "bits/byte"]
    parts = [("overall", result["overall"]), *result.get("domains", {}).items()]
    rows = [
        [name, m["tokens"], m["bytes"], m["loss"], m["perplexity"], m["bits_per_byte"]]
        for name, m in parts
    ]
    return markdown_table(header, rows)


def tasks_table(tasks: dict) -> str:
    header = ["task", "shots", "items", "correct", "accuracy"]
    rows = [[n, t["shots"], t["items"], t["correct"], t["accuracy"]] for n, t in tasks.items()]
    return markdown_table(header, rows)


def lm_eval_table(metrics: dict) -> str:
    rows = [[task, metric, value] for task, ms in metrics.items() for metric, value in ms.items()]
    return markdown_table(["task", "metric", "value"], rows)


def render_markdown(record: dict) -> str:
    """eval.md: every section of an eval.json."""
    out = [f"# Evaluation of {record.get('model', '?')}", ""]
    for name, result in record.get("loss", {}).items():
        out += [
            f"## Held-out loss: {name}",
            "",
            f"`{result['tokens']}`, seq_len {result['seq_len']} (loss in nats per token)",
            "",
            loss_table(result),
            "",
        ]
    if record.get("tasks"):
        out += ["## Few-shot tasks (exact match)", "", tasks_table(record["tasks"]), ""]
    if (record.get("lm_eval") or {}).get("metrics"):
        out += ["## lm-evaluation-harness", "", lm_eval_table(record["lm_eval"]["metrics"]), ""]
    return "\n".join(out)


# --- eval.json, eval.md, task_outputs.jsonl -------------------------------------------------------


def read_eval_file(file: Path) -> dict:
    """An eval.json, its every section checked (rho.io.schema.EvalRecord): what is read is what
    the tables below index."""
    record = read_json_file(file)
    if record.get("format") != EVAL_FORMAT:
        raise UserError(f"{file} is not a rho eval file")
    validate(EvalRecord, record, f"{file} is corrupted")
    return record


def load_eval(out: Path) -> dict:
    file = out / EVAL_FILE
    if not file.exists():
        return {"format": EVAL_FORMAT, "version": 1}
    return read_eval_file(file)


def open_output(out: Path) -> Path:
    """The output directory, made and marked as a ``rho.evaluation`` output if new (``rho eval``
    checked it before any work: new, empty or an earlier eval's)."""
    claim_output_dir(out, EVAL_KIND)
    return out


def save_eval(out: Path, section: str, key: str | None, value: dict, model: str) -> dict:
    """Merge one result into ``out``/eval.json (other sections kept) and rewrite eval.md."""
    open_output(out)
    record = load_eval(out)
    record["model"] = model
    if key is None:
        record[section] = value
    else:
        record.setdefault(section, {})[key] = value
    write_json_atomic(out / EVAL_FILE, record)
    write_text_atomic(out / EVAL_MD, render_markdown(record))
    return record


def save_task_outputs(out: Path, task: str, rows: list[dict]) -> Path:
    """Replace this task's rows in task_outputs.jsonl, keeping every other line as it is (other
    tasks' rows, and a line that does not parse: nothing is dropped unread)."""
    open_output(out)
    file = out / TASK_OUTPUTS
    kept = []
    if file.exists():
        for line in filter(None, file.read_bytes().split(b"\n")):
            try:
                row = parse_json(line, str(file))
            except UserError:
                row = None
            if not (isinstance(row, dict) and row.get("task") == task):
                kept.append(line)
    new = [json.dumps({"task": task, **row}, ensure_ascii=False).encode() for row in rows]
    write_atomic(file, lambda f: f.write(b"".join(line + b"\n" for line in kept + new)))
    return file


# --- --compare ------------------------------------------------------------------------------------


def compare_rows(record: dict) -> dict[str, tuple[float | None, bool]]:
    """Flatten an eval.json into {row label: (value, higher is better)}; a value is None where
    eval.json holds null (NaN or inf when it was written)."""
    rows: dict[str, tuple[float | None, bool]] = {}
    for name, result in record.get("loss", {}).items():
        for domain, m in [("overall", result["overall"]), *result.get("domains", {}).items()]:
            rows[f"{name} · {domain} · loss"] = (m["loss"], False)
            if domain == "overall":
                rows[f"{name} · {domain} · perplexity"] = (m["perplexity"], False)
            rows[f"{name} · {domain} · bits/byte"] = (m["bits_per_byte"], False)
    for name, task in record.get("tasks", {}).items():
        rows[f"task {name} · {task['shots']}-shot accuracy"] = (task["accuracy"], True)
    for task, metrics in (record.get("lm_eval") or {}).get("metrics", {}).items():
        for metric, value in metrics.items():
            rows[f"lm-eval {task} · {metric}"] = (value, True)
    return rows


def _read_run(run: str | Path) -> tuple[str, dict]:
    """(label, record) of a run directory (its eval.json, else its ``rho_eval``'s) or an
    eval.json."""
    path = Path(run)
    file = path if path.is_file() else path / EVAL_FILE
    if path.is_dir() and not file.exists() and (path / EVAL_DIR / EVAL_FILE).exists():
        file = path / EVAL_DIR / EVAL_FILE
    if not file.exists():
        raise UserError(f"{run}: no {EVAL_FILE} (run `rho eval` on it first)")
    record = read_eval_file(file)
    named = path if path.is_dir() else file.parent if file.name == EVAL_FILE else file
    return named.name or str(run), record


def compare_runs(runs: Sequence[str | Path]) -> str:
    """Markdown table: one row per metric, one column per run; the best of each row in bold."""
    if not runs:
        raise UserError("--compare needs at least one run directory")
    labels, tables = [], []
    for run in runs:
        label, record = _read_run(run)
        labels.append(label)
        tables.append(compare_rows(record))
    if len(set(labels)) < len(labels):
        labels = [str(run) for run in runs]
    metrics = list(dict.fromkeys(label for table in tables for label in table))
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for metric in metrics:
        cells = [table.get(metric) for table in tables]
        values = [c[0] for c in cells if c is not None and _is_number(c[0])]
        best = None
        if len(values) > 1:
            higher = next(c[1] for c in cells if c is not None)
            best = max(values) if higher else min(values)
        text = []
        for cell in cells:
            if cell is None:
                text.append("—")
            else:
                shown = _fmt(cell[0])
                text.append(f"**{shown}**" if best is not None and cell[0] == best else shown)
        lines.append(f"| {metric} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)
