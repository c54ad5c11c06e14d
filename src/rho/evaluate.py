"""Evaluate checkpoints: held-out loss per domain, few-shot exact-match tasks, lm-eval bridge.

Held-out loss (``evaluate_store``) follows the alignment rule of store.py: the TokenStore is cut
into non-overlapping ``seq_len`` windows from position 0 and the first token of each window, which
has no context, is not counted. It reports the mean loss (nats per token), perplexity and bits per
byte = total nats / ln 2 / total UTF-8 bytes of the scored tokens, overall and per domain (each
token belongs to its document's domain). Special tokens such as EOS count 0 bytes; their loss is
counted, as predicting where a document ends is part of modelling the text.

Few-shot tasks (``evaluate_task``) read ``question`` / ``answer`` items from a jsonl file (or a
built-in task, see rho.tasks), prompt with k solved examples, decode greedily until a stop
sequence, and score by exact match: numerically when the gold answer is a number (the last number
of the output, fractions compared as floats), else on the first line of the output.

Every run of ``rho eval`` merges its results into ``eval.json`` (for machines) and rewrites
``eval.md`` (for people) in its output directory; ``rho eval --compare`` puts runs side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rho.errors import UserError
from rho.store import TokenStore, read_json, write_json_atomic

EVAL_FILE = "eval.json"
EVAL_MD = "eval.md"
TASK_OUTPUTS = "task_outputs.jsonl"
LM_EVAL_FILE = "lm_eval_results.json"
EVAL_FORMAT = "rho.eval"
STOP_SEQUENCES = ("\n\n", "Question:")
LN2 = math.log(2.0)


# --- Bytes per token ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet (each byte 0..255 shown as a printable char)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_types(tokenizer) -> set[str]:
    """Types of the fast tokenizer's decoder (nested Sequence decoders included)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return set()
    found, todo = set(), [decoder]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "type" in node:
                found.add(str(node["type"]))
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def byte_lengths(tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """UTF-8 bytes of each token id's text when decoded on its own (int64, one per id).

    Byte-level BPE tokens map back to their exact bytes (a token holding half of a multi-byte
    character counts its half); SentencePiece pieces count ``▁`` as a space and ``<0xNN>`` as one
    byte; special tokens (EOS, padding) count 0.
    """
    size = int(vocab_size if vocab_size is not None else len(tokenizer))
    table = np.zeros(size, dtype=np.int64)
    kinds = _decoder_types(tokenizer)
    byte_level = "ByteLevel" in kinds
    to_byte = _unicode_to_byte()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {
        i: t for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items() if i < size
    }
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    for i, piece in enumerate(pieces):
        if piece is None or i in special or (i in added and added[i].special):
            continue
        if i in added:  # added tokens are stored as plain text, not in the byte alphabet
            table[i] = len(added[i].content.encode("utf-8"))
        elif byte_level:
            table[i] = sum(1 if ch in to_byte else len(ch.encode("utf-8")) for ch in piece)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            table[i] = 1
        else:
            if "WordPiece" in kinds and piece.startswith("##"):
                piece = piece[2:]
            table[i] = len(piece.replace("▁", " ").encode("utf-8"))
    return table


# --- Held-out loss per domain ---------------------------------------------------------------------


def _domain_of(store: TokenStore, first: int, end: int) -> np.ndarray:
    """Domain index of tokens [first, end) (all 0 when the store has no domains)."""
    if store.doc_domains is None:
        return np.zeros(end - first, dtype=np.int64)
    docs = np.searchsorted(store.doc_offsets, np.arange(first, end), side="right") - 1
    return np.asarray(store.doc_domains[docs], dtype=np.int64)


def _metrics(nats: float, tokens: int, n_bytes: int) -> dict:
    loss = nats / tokens if tokens else math.nan
    return {
        "tokens": int(tokens),
        "bytes": int(n_bytes),
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "bits_per_byte": nats / LN2 / n_bytes if n_bytes else math.nan,
    }


def _prepare_model(model, dtype: str | None, trust_remote_code: bool = False):
    """A path or hub name is loaded (float32 unless ``dtype``); a module is cast only if asked."""
    from rho.models import load_model, parse_dtype

    if isinstance(model, (str, Path)):
        return str(model), load_model(model, dtype or "float32", trust_remote_code)
    if dtype is not None:
        model = model.to(parse_dtype(dtype))
    return type(model).__name__, model


def _check_positions(model, length: int, what: str) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and length > limit:
        raise UserError(f"{what} of {length} exceeds the model's {limit} positions")


def evaluate_store(
    model,
    tokens: str | Path | TokenStore,
    seq_len: int = 256,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    *,
    dtype: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict:
    """Loss, perplexity and bits per byte of ``model`` (a loaded model, directory or hub name) on
    every window of a TokenStore, overall and per domain. Returns a JSON-ready dict."""
    from rho.models import check_vocab
    from rho.score import batch_windows, default_device, window_losses

    store = tokens if isinstance(tokens, TokenStore) else TokenStore(tokens)
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    name, model = _prepare_model(model, dtype, trust_remote_code)
    check_vocab(model, store.vocab_size)
    _check_positions(model, min(seq_len, store.n_tokens), "--seq-len")
    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    table = byte_lengths(store.tokenizer(), store.vocab_size)

    names = store.domain_names if store.doc_domains is not None else []
    n_dom = max(1, len(names))
    nats = np.zeros(n_dom, dtype=np.float64)
    counts = np.zeros(n_dom, dtype=np.int64)
    n_bytes = np.zeros(n_dom, dtype=np.int64)
    start = time.perf_counter()
    bar = tqdm(total=store.n_tokens, desc="eval", unit="tok", unit_scale=True, disable=not progress)
    for windows in batch_windows(store.n_tokens, seq_len, batch_size):
        first = windows.start * seq_len
        end = min(windows.stop * seq_len, store.n_tokens)
        ids = np.asarray(store.tokens[first:end], dtype=np.int64)
        batch = torch.from_numpy(ids).view(len(windows), -1).to(device)
        losses = window_losses(model, batch).reshape(-1).double().cpu().numpy()
        scored = np.arange(first, end) % seq_len != 0  # a window's first token has no context
        domains = _domain_of(store, first, end)[scored]
        nats += np.bincount(domains, weights=losses[scored], minlength=n_dom)
        counts += np.bincount(domains, minlength=n_dom)
        n_bytes += np.bincount(domains, weights=table[ids[scored]], minlength=n_dom).astype(
            np.int64
        )
        bar.update(end - first)
    bar.close()
    return {
        "model": name,
        "tokens": str(store.path),
        "token_hash": store.content_hash,
        "seq_len": int(seq_len),
        "n_tokens": store.n_tokens,
        "overall": _metrics(nats.sum(), counts.sum(), n_bytes.sum()),
        "domains": {
            domain: _metrics(nats[i], counts[i], n_bytes[i]) for i, domain in enumerate(names)
        },
        "seconds": round(time.perf_counter() - start, 3),
    }


# --- Numeric answers ------------------------------------------------------------------------------

_UNSIGNED = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(
    # A minus counts only when it is not attached to an operand before it (5-3 is not -3).
    rf"(?P<neg>(?<![\w)\]}}.])[-−])?(?:"
    rf"\\[dt]?frac\s*\{{\s*(?P<tn_neg>[-−])?\s*(?P<tn>{_UNSIGNED})\s*\}}"
    rf"\s*\{{\s*(?P<td_neg>[-−])?\s*(?P<td>{_UNSIGNED})\s*\}}"
    rf"|(?P<fn>{_UNSIGNED})\s*/\s*(?P<fd>{_UNSIGNED})"
    rf"|(?P<n>{_UNSIGNED}))"
)


def _plain_digits(text: str | None) -> str | None:
    if not text or text in "-−":
        return text
    text = text.replace(",", "")
    return "0" + text if text.startswith(".") else text


def _number_text(match: re.Match) -> str:
    g = {k: _plain_digits(v) for k, v in match.groupdict().items()}
    negative = bool(g["neg"])
    if g["tn"] is not None:
        negative ^= bool(g["tn_neg"]) ^ bool(g["td_neg"])
        body = f"{g['tn']}/{g['td']}"
    elif g["fn"] is not None:
        body = f"{g['fn']}/{g['fd']}"
    else:
        body = g["n"]
    return ("-" if negative else "") + body


def extract_answer(text: str) -> str | None:
    """The last number in ``text`` as plain text, or None when there is none.

    Handles negatives (``-3``; but ``5-3`` gives ``3``), decimals, thousands separators
    (``1,234`` -> ``1234``), fractions (``3/4``) and LaTeX fractions (``\\frac{3}{4}`` -> ``3/4``).
    """
    matches = list(_NUMBER_RE.finditer(text or ""))
    return _number_text(matches[-1]) if matches else None


def number_value(text: str | None) -> float | None:
    """Float value of an extracted number (``3/4`` -> 0.75); None when unparsable or x/0."""
    if text is None:
        return None
    text = text.strip()
    negative = text.startswith("-")
    body = text[1:] if negative else text
    try:
        if "/" in body:
            num, den = (float(part) for part in body.split("/"))
            if den == 0:
                return None
            value = num / den
        else:
            value = float(body)
    except ValueError:
        return None
    return -value if negative else value


def parse_number(text: str) -> float | None:
    """Value of ``text`` when the whole string is one number (``$1,234.``, ``-\\frac{1}{2}``,
    ``3/4``, ``50%``), else None."""
    text = (text or "").strip().removeprefix("$").rstrip(".%").strip()
    match = _NUMBER_RE.fullmatch(text)
    return number_value(_number_text(match)) if match else None


def gold_answer(answer: str) -> str | None:
    """The number a gold answer stands for: the last number after ``####`` (GSM8K style) if
    present, else the last number of the whole answer."""
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return extract_answer(text)


def answers_match(predicted: str | None, gold: str | None, tolerance: float = 1e-6) -> bool:
    """Numeric exact match: values within ``tolerance`` (absolute, or relative for big numbers)."""
    p, g = number_value(predicted), number_value(gold)
    if p is None or g is None:
        return False
    return math.isclose(p, g, rel_tol=1e-9, abs_tol=tolerance)


def _normalize_text(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".").strip().casefold()


# --- Few-shot generative tasks --------------------------------------------------------------------


def read_task_file(path: str | Path) -> list[dict]:
    """Items of a jsonl task file: one JSON object per line with ``question`` and ``answer``."""
    path = Path(path)
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"task file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"task file {path} is unreadable: {err}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict) or "question" not in record or "answer" not in record:
            raise UserError(f"{path}:{number}: needs 'question' and 'answer' fields")
        items.append(
            {**record, "question": str(record["question"]), "answer": str(record["answer"])}
        )
    if not items:
        raise UserError(f"task file {path} holds no items")
    return items


def load_task(spec: str) -> tuple[str, list[dict]]:
    """(name, items) of a task given as a jsonl path or a built-in name (see rho.tasks)."""
    from rho.tasks import BUILTIN_TASKS, load_builtin

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


def cut_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The text before the first stop sequence."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _stop_criteria(tokenizer, prompt_len: int, stops: Sequence[str]):
    from transformers import StoppingCriteria, StoppingCriteriaList

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
    from rho.score import default_device

    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError("the tokenizer has neither a padding nor an EOS token: cannot batch")
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    limit = getattr(model.config, "max_position_embeddings", None)
    max_prompt = None if limit is None else limit - max_new_tokens
    if max_prompt is not None and max_prompt < 1:
        raise UserError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the "
            f"model's {limit} positions"
        )
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
            prompt_len = enc["input_ids"].shape[1]
            out = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                eos_token_id=eos,
                stopping_criteria=_stop_criteria(tokenizer, prompt_len, stops),
            )
            texts = tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
            for i, text in zip(rows, texts, strict=True):
                outputs[i] = cut_at_stop(text, stops)
            bar.update(len(rows))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
        bar.close()
    return outputs


def score_output(output: str, answer: str) -> tuple[str | None, bool]:
    """(extracted, correct): numeric match when the gold answer is a number, else the first line
    of the output against the answer (case and spacing ignored)."""
    gold = gold_answer(answer)
    if gold is not None:
        extracted = extract_answer(output)
        return extracted, answers_match(extracted, gold)
    first = output.strip().split("\n", 1)[0].strip()
    return first, _normalize_text(first) == _normalize_text(answer)


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
    if shots < 0:
        raise UserError(f"--shots must be non-negative, got {shots}")
    pool = list(shot_items) if shot_items is not None else list(items)
    if shots > len(pool):
        raise UserError(f"--shots {shots} asks for more examples than the {len(pool)} available")
    examples = pool[:shots]
    evaluated = list(items) if shot_items is not None else list(items)[shots:]
    if limit is not None:
        evaluated = evaluated[: max(0, limit)]
    if not evaluated:
        raise UserError("no items left to evaluate (after the shots and --limit)")
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
    rows = []
    for index, (item, prompt, output) in enumerate(zip(evaluated, prompts, outputs, strict=True)):
        extracted, correct = score_output(output, item["answer"])
        rows.append(
            {
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
        )
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


# --- lm-evaluation-harness bridge -----------------------------------------------------------------


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise UserError(
            f"the lm-eval bridge needs lm-evaluation-harness ({err}): pip install 'rho[eval]'"
        ) from None
    return lm_eval, TaskManager


def _plain(value):
    """numpy scalars and other oddities -> JSON-ready values."""
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
    from rho.score import default_device

    if include_path is not None and not Path(include_path).exists():
        raise UserError(f"--lm-eval-include {include_path} does not exist")
    if not include_defaults and include_path is None:
        raise UserError("--lm-eval-local-only needs --lm-eval-include DIR")
    options = {} if include_defaults else {"include_defaults": False}
    manager = TaskManager(include_path=str(include_path) if include_path else None, **options)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        import difflib

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


# --- Results files: eval.json, eval.md, --compare -------------------------------------------------


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    if record.get("lm_eval"):
        out += ["## lm-evaluation-harness", "", lm_eval_table(record["lm_eval"]["metrics"]), ""]
    return "\n".join(out)


def load_eval(out: Path) -> dict:
    file = out / EVAL_FILE
    if not file.exists():
        return {"format": EVAL_FORMAT, "version": 1}
    record = read_json(file)
    if record.get("format") != EVAL_FORMAT:
        raise UserError(f"{file} exists and is not a rho eval file")
    return record


def save_eval(out: Path, section: str, key: str | None, value: dict, model: str) -> dict:
    """Merge one result into ``out``/eval.json (other sections kept) and rewrite eval.md."""
    out.mkdir(parents=True, exist_ok=True)
    record = load_eval(out)
    record["model"] = model
    if key is None:
        record[section] = value
    else:
        record.setdefault(section, {})[key] = value
    write_json_atomic(out / EVAL_FILE, _plain(record))
    _write_text_atomic(out / EVAL_MD, render_markdown(record))
    return record


def _save_task_outputs(out: Path, task: str, rows: list[dict]) -> Path:
    """Replace this task's rows in task_outputs.jsonl, keeping other tasks' rows."""
    out.mkdir(parents=True, exist_ok=True)
    file = out / TASK_OUTPUTS
    kept = []
    if file.exists():
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("task") != task:
                kept.append(line)
    new = [json.dumps({"task": task, **row}, ensure_ascii=False) for row in rows]
    _write_text_atomic(file, "".join(line + "\n" for line in kept + new))
    return file


def compare_rows(record: dict) -> dict[str, tuple[float, bool]]:
    """Flatten an eval.json into {row label: (value, higher is better)}."""
    rows: dict[str, tuple[float, bool]] = {}
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


def compare_runs(runs: Sequence[str | Path]) -> str:
    """Markdown table: one row per metric, one column per run; the best of each row in bold."""
    if not runs:
        raise UserError("--compare needs at least one run directory")
    labels, tables = [], []
    for run in runs:
        path = Path(run)
        file = path if path.is_file() else path / EVAL_FILE
        if not file.exists():
            raise UserError(f"{run}: no {EVAL_FILE} (run `rho eval` on it first)")
        record = read_json(file)
        if record.get("format") != EVAL_FORMAT:
            raise UserError(f"{file} is not a rho eval file")
        tables.append(compare_rows(record))
        labels.append((file.parent if file.name == EVAL_FILE else file).name or str(run))
    if len(set(labels)) < len(labels):
        labels = [str(run) for run in runs]
    metrics = list(dict.fromkeys(label for table in tables for label in table))
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for metric in metrics:
        cells = [table.get(metric) for table in tables]
        values = [c[0] for c in cells if c is not None and not math.isnan(c[0])]
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


# --- CLI ------------------------------------------------------------------------------------------


def _load_tokenizer(name_or_dir, fallback: str | Path | None = None):
    from transformers import AutoTokenizer

    for candidate in [c for c in (name_or_dir, fallback) if c is not None]:
        try:
            return AutoTokenizer.from_pretrained(str(candidate))
        except (OSError, ValueError, TypeError):
            continue
    raise UserError(
        f"no tokenizer found in {name_or_dir}: pass --tokenizer DIR (for example a TokenStore's "
        "tokenizer/ directory)"
    )


def _check_same_tokenizer(model_path: str, store: TokenStore) -> None:
    """A checkpoint saved with its tokenizer must use the store's vocabulary (ids would mean
    other text otherwise)."""
    path = Path(model_path)
    if not ((path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()):
        return
    from transformers import AutoTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(path).get_vocab()
    except (OSError, ValueError, TypeError):
        return
    if theirs != store.tokenizer().get_vocab():
        raise UserError(
            f"{model_path} was saved with another tokenizer than {store.path}: token ids would "
            "not mean the same text"
        )


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


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        if args.model or args.tokens or args.task or args.lm_eval_tasks:
            raise UserError("--compare takes only run directories")
        print(compare_runs(args.compare))
        return 0
    if not args.model:
        raise UserError("--model is required (or use --compare RUN_A RUN_B ...)")
    if not (args.tokens or args.task or args.lm_eval_tasks):
        raise UserError("nothing to evaluate: give --tokens, --task and/or --lm-eval-tasks")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.out:
        out = Path(args.out)
    elif Path(args.model).is_dir():
        out = Path(args.model)
    else:
        raise UserError(f"--model {args.model!r} is not a local directory: pass --out DIR")
    progress = not args.quiet

    model = None
    stores = [TokenStore(path) for path in args.tokens or []]
    tasks = [load_task(spec) for spec in args.task or []]
    shot_items = read_task_file(args.shots_file) if args.shots_file else None
    if stores or tasks:
        _, model = _prepare_model(args.model, args.dtype, args.trust_remote_code)
    for store in stores:
        _check_same_tokenizer(args.model, store)
        result = evaluate_store(
            model, store, args.seq_len, args.batch_size, args.device, progress=progress
        )
        result["model"] = args.model
        save_eval(out, "loss", store.path.name, result, args.model)
        print(f"\nheld-out loss on {store.path} (seq_len {args.seq_len}):\n")
        print(loss_table(result))
    if tasks:
        fallback = stores[0].tokenizer_dir if stores else None
        tokenizer = _load_tokenizer(args.tokenizer or args.model, fallback)
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
                progress=progress,
            )
            file = _save_task_outputs(out, name, rows)
            summary = {"task": name, "model": args.model, "outputs": file.name, **summary}
            record = save_eval(out, "tasks", name, summary, args.model)
        print(f"\nfew-shot exact match (per-item outputs in {out / TASK_OUTPUTS}):\n")
        print(tasks_table({n: record["tasks"][n] for n, _ in tasks}))
    if args.lm_eval_tasks:
        names = [t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()]
        if not names:
            raise UserError("--lm-eval-tasks is empty")
        del model  # the harness loads its own copy
        results = run_lm_eval(
            args.model,
            names,
            include_path=args.lm_eval_include,
            limit=args.limit,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
            tokenizer=args.tokenizer,
            trust_remote_code=args.trust_remote_code,
            include_defaults=not args.lm_eval_local_only,
        )
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / LM_EVAL_FILE, results)
        metrics = lm_eval_metrics(results)
        save_eval(out, "lm_eval", None, {"metrics": metrics, "file": LM_EVAL_FILE}, args.model)
        print(f"\nlm-evaluation-harness (full results in {out / LM_EVAL_FILE}):\n")
        print(lm_eval_table(metrics))
    print(f"\nwrote {out / EVAL_FILE} and {out / EVAL_MD}")
    return 0
