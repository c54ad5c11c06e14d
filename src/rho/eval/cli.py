"""`rho eval`: its options and the order of its steps; the work is done in the modules it calls
(heldout, fewshot, lm_eval_bridge) and every result is written by results.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from rho.cli import pick
from rho.errors import UserError
from rho.eval.fewshot import evaluate_task, load_task, load_tokenizer, read_task_file
from rho.eval.heldout import check_same_tokenizer, evaluate_store, prepare_model
from rho.eval.lm_eval_bridge import lm_eval_metrics, run_lm_eval
from rho.eval.results import (
    EVAL_FILE,
    EVAL_MD,
    LM_EVAL_FILE,
    TASK_OUTPUTS,
    compare_runs,
    lm_eval_table,
    loss_table,
    save_eval,
    save_task_outputs,
    tasks_table,
)
from rho.files import write_json_atomic
from rho.options import check_output_path, parse_device
from rho.store import TokenStore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rho eval",
        description=(
            "Evaluate a checkpoint: held-out loss / perplexity / bits per byte per domain "
            "(--tokens), few-shot exact-match tasks (--task), lm-evaluation-harness tasks "
            "(--lm-eval-tasks); or put earlier runs side by side (--compare)."
        ),
    )
    parser.add_argument("--model", help="checkpoint directory or hub name")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="run dirs (or eval.json)")
    parser.add_argument("--out", help="where eval.json / eval.md go (default: the checkpoint dir)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best)")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="windows / prompts per batch (16)"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code")
    parser.add_argument("--tokenizer", help="tokenizer dir for tasks (default: the checkpoint's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    loss = parser.add_argument_group("held-out loss")
    loss.add_argument("--tokens", nargs="+", metavar="DIR", help="TokenStore(s) to evaluate on")
    loss.add_argument("--seq-len", type=int, default=256, help="window length in tokens (256)")
    task = parser.add_argument_group("few-shot tasks")
    task.add_argument("--task", nargs="+", metavar="TASK", help="jsonl file(s) or 'champ'")
    task.add_argument("--shots", type=int, default=4, help="solved examples in each prompt (4)")
    task.add_argument("--shots-file", help="jsonl to take the shots from (default: the task)")
    task.add_argument("--max-new-tokens", type=int, default=256, help="generation budget (256)")
    task.add_argument("--limit", type=int, help="evaluate at most N items per task")
    harness = parser.add_argument_group("lm-evaluation-harness (pip install 'rho[eval]')")
    harness.add_argument("--lm-eval-tasks", help="comma-separated task names, e.g. gsm8k")
    harness.add_argument("--lm-eval-include", help="directory of extra task YAMLs")
    harness.add_argument("--num-fewshot", type=int, help="override the tasks' few-shot count")
    harness.add_argument(
        "--lm-eval-local-only",
        action="store_true",
        help="index only --lm-eval-include's tasks, not the harness's built-ins (faster start)",
    )
    return parser


def _output_dir(args: argparse.Namespace) -> Path:
    if args.out:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file: give a directory")
        check_output_path(args.out)
        return Path(args.out)
    if Path(args.model).is_dir():
        check_output_path(Path(args.model) / "eval.json", "--model")
        return Path(args.model)
    raise UserError(f"--model {args.model!r} is not a local directory: pass --out DIR")


def _check_args(args: argparse.Namespace) -> None:
    if not args.model:
        raise UserError("--model is required (or use --compare RUN_A RUN_B ...)")
    if not (args.tokens or args.task or args.lm_eval_tasks):
        raise UserError("nothing to evaluate: give --tokens, --task and/or --lm-eval-tasks")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.seq_len < 2:
        raise UserError(f"--seq-len must be at least 2, got {args.seq_len}")
    if args.device is not None:
        parse_device(args.device)  # a bogus or absent device: one line, before any work


def _held_out(args, model, stores: list[TokenStore], out: Path) -> None:
    for store in stores:
        check_same_tokenizer(args.model, store)
        result = evaluate_store(
            model, store, args.seq_len, args.batch_size, args.device, progress=not args.quiet
        )
        result["model"] = args.model
        save_eval(out, "loss", store.path.name, result, args.model)
        print(f"\nheld-out loss on {store.path} (seq_len {args.seq_len}):\n")
        print(loss_table(result))


def _few_shot(args, model, tasks, shot_items, stores: list[TokenStore], out: Path) -> None:
    fallback = stores[0].tokenizer_dir if stores else None
    tokenizer = load_tokenizer(args.tokenizer or args.model, fallback)
    for name, items in tasks:
        summary, rows = evaluate_task(
            model,
            tokenizer,
            items,
            shots=args.shots,
            shot_items=shot_items,
            limit=args.limit,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            device=args.device,
            progress=not args.quiet,
        )
        file = save_task_outputs(out, name, rows)
        summary = {"task": name, "model": args.model, "outputs": file.name, **summary}
        record = save_eval(out, "tasks", name, summary, args.model)
    print(f"\nfew-shot exact match (per-item outputs in {out / TASK_OUTPUTS}):\n")
    print(tasks_table({n: record["tasks"][n] for n, _ in tasks}))


def _harness(args, out: Path) -> None:
    names = [t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--lm-eval-tasks is empty")
    options = ("limit", "num_fewshot", "batch_size", "device", "dtype", "tokenizer")
    results = run_lm_eval(
        args.model,
        names,
        include_path=args.lm_eval_include,
        include_defaults=not args.lm_eval_local_only,
        **pick(args, *options, "trust_remote_code"),
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / LM_EVAL_FILE, results)
    metrics = lm_eval_metrics(results)
    save_eval(out, "lm_eval", None, {"metrics": metrics, "file": LM_EVAL_FILE}, args.model)
    print(f"\nlm-evaluation-harness (full results in {out / LM_EVAL_FILE}):\n")
    print(lm_eval_table(metrics))


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        if args.model or args.tokens or args.task or args.lm_eval_tasks:
            raise UserError("--compare takes only run directories")
        print(compare_runs(args.compare))
        return 0
    _check_args(args)
    out = _output_dir(args)

    model = None
    stores = [TokenStore(path) for path in args.tokens or []]
    tasks = [load_task(spec) for spec in args.task or []]
    shot_items = read_task_file(args.shots_file) if args.shots_file else None
    if stores or tasks:
        _, model = prepare_model(args.model, args.dtype, args.trust_remote_code)
    _held_out(args, model, stores, out)
    if tasks:
        _few_shot(args, model, tasks, shot_items, stores, out)
    if args.lm_eval_tasks:
        del model  # the harness loads its own copy
        _harness(args, out)
    print(f"\nwrote {out / EVAL_FILE} and {out / EVAL_MD}")
    return 0
