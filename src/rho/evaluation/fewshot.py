"""Few-shot generative tasks: task files, prompts, greedy generation cut at stop sequences, and
k-shot exact-match accuracy (``evaluate_task``).

A task is a jsonl file of ``question`` / ``answer`` items or a built-in task (see tasks.py). Each
prompt holds k solved examples ("Question: ...\\nAnswer: ...\\n\\n") and then the open question;
the model decodes greedily until a stop sequence and answers.py grades the output.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, StoppingCriteria, StoppingCriteriaList

from rho.errors import UserError
from rho.evaluation.answers import gold_answer, grade_output
from rho.evaluation.tasks import BUILTIN_TASKS, load_builtin
from rho.io.schema import TaskItem, parse_json, read_text_bounded, validate
from rho.scoring.windows import default_device, max_positions

STOP_SEQUENCES = ("\n\n", "Question:")
MAX_TASK_BYTES = 1 << 30


# --- Tasks and prompts ----------------------------------------------------------------------------


def read_task_file(path: str | Path) -> list[dict]:
    """Items of a jsonl task file: one JSON object per line with ``question`` and ``answer``
    (text, or numbers taken as text). Every line is parsed by the bounded JSON reader and
    validated (rho.io.schema.TaskItem): bad lines are a one-line UserError naming ``path:line``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"task file {path} does not exist")
    raw = read_text_bounded(path, MAX_TASK_BYTES, "task file")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"task file {path} is not valid UTF-8 (byte {err.start})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}:{number}")
        if not isinstance(record, dict) or "question" not in record or "answer" not in record:
            raise UserError(f"{path}:{number}: needs 'question' and 'answer' fields")
        item = validate(TaskItem, record, f"{path}:{number}")
        items.append({**record, "question": str(item.question), "answer": str(item.answer)})
    if not items:
        raise UserError(f"task file {path} holds no items")
    return items


def load_task(spec: str) -> tuple[str, list[dict]]:
    """(name, items) of a task given as a jsonl path or a built-in name (see tasks.py)."""
    path = Path(spec)
    if path.exists() or spec.endswith((".jsonl", ".json")):
        return path.stem, read_task_file(path)
    if spec in BUILTIN_TASKS:
        return spec, load_builtin(spec)
    raise UserError(
        f"--task {spec!r} is neither a .jsonl file nor a built-in task ({', '.join(BUILTIN_TASKS)})"
    )


def format_example(question: str, answer: str | None = None) -> str:
    """One solved example ("Question: ...\\nAnswer: ...\\n\\n"), or the open prompt for one."""
    if answer is None:
        return f"Question: {question.strip()}\nAnswer:"
    return f"Question: {question.strip()}\nAnswer: {str(answer).strip()}\n\n"


def build_prompt(shots: Sequence[dict], question: str) -> str:
    return "".join(format_example(s["question"], s["answer"]) for s in shots) + format_example(
        question
    )


def load_tokenizer(name_or_dir, fallback: str | Path | None = None):
    """The tokenizer of ``name_or_dir``, else of ``fallback`` (a TokenStore's tokenizer/)."""
    for candidate in [c for c in (name_or_dir, fallback) if c is not None]:
        try:
            return AutoTokenizer.from_pretrained(str(candidate))
        except Exception:  # noqa: BLE001 (a damaged tokenizer.json raises plain Exception)
            continue
    raise UserError(
        f"no tokenizer found in {name_or_dir}: pass --tokenizer DIR (for example a TokenStore's "
        "tokenizer/ directory)"
    )


# --- Generation -----------------------------------------------------------------------------------


def cut_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The text before the first stop sequence."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _stop_criteria(tokenizer, prompt_len: int, stops: Sequence[str]):
    window = max(map(len, stops)) + 8  # tokens decoded per check: enough to hold any stop

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = tokenizer.batch_decode(
                input_ids[:, prompt_len:][:, -window:], skip_special_tokens=True
            )
            done = [any(s in tail for s in stops) for tail in tails]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    stops: Sequence[str] = STOP_SEQUENCES,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy completions of ``prompts`` (batched, left-padded, longest first), each cut at the
    first stop sequence. Prompts longer than the model's context lose tokens from the left."""
    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError("the tokenizer has neither a padding nor an EOS token: cannot batch")
    eos = getattr(model.generation_config, "eos_token_id", None)
    greedy = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": pad,
        "eos_token_id": eos if eos is not None else tokenizer.eos_token_id,
    }
    max_prompt = _prompt_room(model, max_new_tokens)
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generate", unit="item", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            enc = tokenizer(
                [prompts[i] for i in rows],
                return_tensors="pt",
                padding=True,
                truncation=max_prompt is not None,
                max_length=max_prompt,
            ).to(device)
            texts = _complete(model, tokenizer, enc, stops, greedy)
            for i, text in zip(rows, texts, strict=True):
                outputs[i] = cut_at_stop(text, stops)
            bar.update(len(rows))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
        bar.close()
    return outputs


def _prompt_room(model, max_new_tokens: int) -> int | None:
    """The most prompt tokens the model's positions leave beside the new ones (None: no limit)."""
    limit = max_positions(model)
    if limit is None:
        return None
    if limit - max_new_tokens < 1:
        raise UserError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the "
            f"model's {limit} positions"
        )
    return limit - max_new_tokens


def _complete(model, tokenizer, enc, stops: Sequence[str], greedy: dict) -> list[str]:
    """The decoded text each prompt of the batch ``enc`` generates after itself."""
    prompt_len = enc["input_ids"].shape[1]
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        stopping_criteria=_stop_criteria(tokenizer, prompt_len, stops),
        **greedy,
    )
    return tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)


# --- k-shot exact match ---------------------------------------------------------------------------


def evaluate_task(
    model,
    tokenizer,
    items: Sequence[dict],
    *,
    shots: int = 4,
    shot_items: Sequence[dict] | None = None,
    limit: int | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """k-shot exact-match accuracy. Shots come from ``shot_items`` or else the first ``shots``
    items, which are then not evaluated. Returns (summary, one row per evaluated item)."""
    examples, evaluated = _shots_and_questions(items, shots, shot_items, limit)
    prompts = [build_prompt(examples, item["question"]) for item in evaluated]
    start = time.perf_counter()
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    rows = [
        _graded(index, item, prompt, output)
        for index, (item, prompt, output) in enumerate(
            zip(evaluated, prompts, outputs, strict=True)
        )
    ]
    n_correct = sum(row["correct"] for row in rows)
    summary = {
        "shots": shots,
        "items": len(rows),
        "correct": n_correct,
        "accuracy": n_correct / len(rows),
        "max_new_tokens": max_new_tokens,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return summary, rows


def _shots_and_questions(items, shots: int, shot_items, limit: int | None):
    """The solved examples every prompt starts with, and the items to evaluate."""
    if shots < 0:
        raise UserError(f"--shots must be non-negative, got {shots}")
    pool = list(shot_items) if shot_items is not None else list(items)
    if shots > len(pool):
        raise UserError(f"--shots {shots} asks for more examples than the {len(pool)} available")
    evaluated = list(items) if shot_items is not None else list(items)[shots:]
    if limit is not None:
        evaluated = evaluated[: max(0, limit)]
    if not evaluated:
        raise UserError("no items left to evaluate (after the shots and --limit)")
    return pool[:shots], evaluated


def _graded(index: int, item: dict, prompt: str, output: str) -> dict:
    """One evaluated item's row: its prompt, the model's output and whether it is correct."""
    extracted, correct = grade_output(output, item["answer"])
    return {
        "index": index,
        **({"id": item["id"]} if "id" in item else {}),
        "question": item["question"],
        "answer": item["answer"],
        "gold": gold_answer(item["answer"]),
        "prompt": prompt,
        "output": output,
        "extracted": extracted,
        "correct": correct,
    }
