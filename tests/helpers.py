"""What several test modules share (their fixtures are in conftest.py): documents and corpus
files, stores and checkpoints, running `rho`, and the checks of one-line errors and reports.
Test modules import from here, never from each other."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from rho.experiment.report import PAPER
from rho.io.store import TokenStore
from rho.testhook import HOLD_ENV
from rho.training.runs import METRICS_FILE
from rho.training.trainer import SelectiveTrainingArguments

# --- Documents and corpus files ----------------------------------------------------------------

WORDS = (
    "the a cat dog sat ran on under mat tree bird sang while far away and then it was "
    "quick brown fox jumps over lazy river stone light dark morning evening rain sun"
).split()


def make_docs(
    n_docs: int,
    seed: int = 0,
    min_words: int = 5,
    max_words: int = 80,
    words: list[str] = WORDS,
) -> list[str]:
    """Documents of random words (the same for the same arguments)."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(n_docs)
    ]


def markov_docs(n_docs: int, seed: int) -> list[str]:
    """Text a tiny model learns fast: each word is followed by one of three likely successors."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghijklmnoprstu") for _ in range(rng.randint(2, 6)))
        for _ in range(80)
    ]
    follow = {w: rng.sample(words, 3) for w in words}
    docs = []
    for _ in range(n_docs):
        word, text = rng.choice(words), []
        for _ in range(rng.randint(20, 90)):
            text.append(word)
            word = rng.choice(follow[word]) if rng.random() < 0.9 else rng.choice(words)
        docs.append(" ".join(text) + ".")
    return docs


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_texts(path: Path, texts: list[str]) -> Path:
    """A jsonl corpus of one {"text": ...} record per text."""
    return write_jsonl(path, [{"text": t} for t in texts])


def without_noise(record: dict) -> str:
    """A demo document's text with its noise spans cut out, whitespace collapsed."""
    text, parts, last = record["text"], [], 0
    for start, end in record["noise_spans"]:
        parts.append(text[last:start])
        last = end
    parts.append(text[last:])
    return " ".join("".join(parts).split())


def sentences(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + "."
                    for _ in range(n))  # fmt: skip


def write_corpus(path: Path, texts: list[str]) -> str:
    return str(write_texts(path, texts))


def experiment_files(root: Path) -> dict:
    """`rho experiment`'s tiny inputs: a target domain (its own words), general text, and
    noise; one held-out target document is copied into the corpus: decontamination must drop
    it."""
    rng = random.Random(0)
    target_words = [f"th{i}m" for i in range(40)] + ["the", "of", "is"]
    general_words = [f"gen{i}" for i in range(60)] + ["the", "of", "is"]
    target = [sentences(rng, target_words, 12) for _ in range(60)]
    general = [sentences(rng, general_words, 12) for _ in range(60)]
    noise = ["".join(rng.choice("qxzj#$%0123") for _ in range(400)) for _ in range(20)]
    leaked = target[50]
    corpus = target[:20] + general[:40] + noise + [leaked]
    return {
        "curated": write_corpus(root / "curated.jsonl", target[20:40]),
        "corpus": write_corpus(root / "corpus.jsonl", corpus),
        "base": write_corpus(root / "base.jsonl", general[:40]),
        "target": write_corpus(root / "target.jsonl", target[40:60]),
        "general": write_corpus(root / "general.jsonl", general[40:60]),
        "leaked": leaked,
    }


def write_config(path: Path, data: dict, out: Path, **extra) -> Path:
    """A tiny `rho experiment` config on ``experiment_files``' inputs (``extra`` on top)."""
    config = {
        "curated": [data["curated"]],
        "corpus": [data["corpus"]],
        "base_data": [data["base"]],
        "heldout": [f"target={data['target']}", f"general={data['general']}"],
        "out": str(out),
        "base": "tiny",
        "vocab": 400,
        "seq_len": 32,
        "batch_size": 4,
        "train_tokens": 1024,
        "evals": 2,
        "eval_windows": 4,
        "seeds": [0, 1],
        "dynamics_checkpoints": 2,
        **extra,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


# --- Stores and checkpoints --------------------------------------------------------------------


def one_line_files(root: Path, names=("curated", "corpus", "base", "target", "general")) -> dict:
    """A one-document jsonl file per name: inputs a plan can hash (nothing reads them further)."""
    out = {}
    for name in names:
        path = root / f"{name}.jsonl"
        path.write_text(f'{{"text": "{name} text"}}\n')
        out[name] = str(path)
    return out


def planned_config(files: dict, **kw):
    """An ExperimentConfig over ``one_line_files``: a tiny base, seeds 0 and 1 for clm and slm
    (``kw`` on top)."""
    from rho.experiment.settings import ExperimentConfig

    return ExperimentConfig(
        curated=[files["curated"]],
        corpus=[files["corpus"]],
        base_data=[files["base"]],
        heldout=[f"target={files['target']}", f"general={files['general']}"],
        **{"base": "tiny", "seeds": [0, 1], "seeded_arms": "clm,slm", **kw},
    )


def tokenized(root: Path, records: list[dict], vocab: int | None = 300, **options) -> TokenStore:
    """``records`` written to root/corpus.jsonl and tokenized into root/tokens: with a trained
    tokenizer of ``vocab`` ids, or with ``tokenizer=DIR`` (vocab None)."""
    from rho.data.tokenize import tokenize_corpus

    corpus = write_jsonl(root / "corpus.jsonl", records)
    out = root / options.pop("name", "tokens")
    return tokenize_corpus([str(corpus)], out, train_vocab=vocab, progress=False, **options)


def make_checkpoint(path: Path, store: TokenStore, seed: int = 3) -> Path:
    """A tiny model saved with the store's tokenizer, like a `rho train` output directory."""
    from rho.models import build_model

    build_model("tiny", store.vocab_size, seed=seed).save_pretrained(path)
    store.tokenizer().save_pretrained(path)
    return path


EVAL_WORDS = "the cat sat on a mat while rain fell far away and then one dog ran".split()


def make_eval_store(root: Path) -> TokenStore:
    """An ASCII corpus in two domains (ASCII: decoding one id alone gives its exact bytes)."""
    records = [
        {"text": text, "domain": "prose" if i % 3 else "math"}
        for i, text in enumerate(make_docs(60, seed=0, min_words=4, max_words=29, words=EVAL_WORDS))
    ]
    records += [{"text": f"{i} plus {i} is {2 * i}.", "domain": "math"} for i in range(20)]
    return tokenized(root, records, vocab=320)


def make_task(tmp_path: Path, n: int = 7) -> Path:
    """A few-shot task file of additions, one answer written GSM8K-style."""
    records = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(n)]
    records[3]["answer"] = "She has 3 and 3 more.\n#### 6"
    return write_jsonl(tmp_path / "add.jsonl", records)


SEQ = 32  # the window length of make_stores' LossStore


class Stores:
    """Paths of a training TokenStore, its LossStore and the reference model that scored it."""


def make_stores(root: Path, n_docs: int, corpus_seed: int, ref_seed: int) -> Stores:
    """A TokenStore and its LossStore (fp32) from a tiny reference model initialised apart from
    the learner and saved with the training tokenizer."""
    from rho.models import build_model
    from rho.scoring.score import score_store

    s = Stores()
    s.tokens = root / "tokens"
    s.store = tokenized(root, [{"text": d} for d in markov_docs(n_docs, corpus_seed)], vocab=400)
    s.vocab = s.store.vocab_size
    s.ref_dir = root / "ref"
    s.ref = build_model("tiny", s.vocab, seed=ref_seed)  # not the learner's seed
    s.ref.save_pretrained(s.ref_dir)
    s.store.tokenizer().save_pretrained(s.ref_dir)
    s.losses = root / "losses"
    score_store(s.ref, s.store, s.losses, SEQ, dtype="float32", progress=False, device="cpu")
    return s


def targs(out: Path, **kw) -> SelectiveTrainingArguments:
    """One CPU step of a quiet Trainer, rho's selection defaults (token, ratio 0.6); ``kw``
    overrides."""
    base = dict(
        output_dir=str(out),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        learning_rate=3e-3,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return SelectiveTrainingArguments(**{**base, **kw})


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / METRICS_FILE).read_text().splitlines()]


def train_logs(out: Path) -> list[dict]:
    return [m for m in read_metrics(out) if "loss" in m]


def last_record(run_dir: str | Path, key: str = "flops_train") -> dict:
    """The run's last metrics record holding ``key``."""
    return [r for r in read_metrics(run_dir) if key in r][-1]


# --- Running rho -------------------------------------------------------------------------------

# One thread per process: tiny models gain nothing from more, and on a busy machine threads that
# wait for each other make runs many times slower.
# A subprocess's timeout is a guard against a hang, never a clock: generous enough for a
# machine whose cores are all busy.
HANG_GUARD_S = 3600
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def hold_env(point: str, n: int, file: Path) -> dict:
    """The environment that stops a `rho` subprocess the ``n``th time it passes ``point``
    (rho.testhook): it writes ``file`` and waits there, to be signalled at a known point."""
    return {**SUBPROCESS_ENV, HOLD_ENV: f"{point}:{n}:{file}"}


def wait_until_held(file: Path, proc: subprocess.Popen, guard: float = HANG_GUARD_S) -> None:
    """Until ``proc`` waits at its hold point; ``guard`` seconds only stop a hung test."""
    deadline = time.monotonic() + guard
    while not file.exists():
        if proc.poll() is not None:
            err = proc.stderr.read()[-3000:] if proc.stderr else ""
            raise AssertionError(f"rho ended before its hold point (rc {proc.returncode}):\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("rho never reached its hold point")
        time.sleep(0.01)


def run_rho(
    *args: str, env: dict | None = None, timeout: float = HANG_GUARD_S
) -> subprocess.CompletedProcess:
    """`python -m rho ARGS` in a real subprocess (this interpreter, so the venv's rho)."""
    return subprocess.run(
        [sys.executable, "-m", "rho", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**SUBPROCESS_ENV, **(env or {})},
    )


def rho_command(name: str, argv: list) -> int:
    """`rho NAME ARGV` in this process; a UserError is raised, not printed."""
    import importlib

    from rho.commands.parser import run

    command = importlib.import_module(f"rho.commands.{name}").COMMAND
    return run(command, f"rho {name}", [str(a) for a in argv])


def parse_options(name: str, argv: list) -> tuple:
    """The options dataclasses `rho NAME ARGV` would run with."""
    import importlib

    from rho.commands.parser import CommandParser

    command = importlib.import_module(f"rho.commands.{name}").COMMAND
    return CommandParser(command, f"rho {name}").parse([str(a) for a in argv])


def two_ranks_and_one_process(common: list, tmp_path: Path) -> None:
    """`rho COMMON` under torchrun with 2 ranks × 2 rows (dumps in tmp_path/dump2) and in one
    process × 4 rows (tmp_path/dump1): the same global micro-batches, to compare selections."""
    from rho.training.trainer import DUMP_ENV

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    for launch, name, rows in (
        ([*torchrun, "2", "-m", "rho"], "two", "2"),
        ([sys.executable, "-m", "rho"], "one", "4"),
    ):
        dump = tmp_path / ("dump2" if name == "two" else "dump1")
        run = subprocess.run(
            [*launch, *map(str, common), "--output_dir", str(tmp_path / name)]
            + ["--per_device_train_batch_size", rows],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            env={**SUBPROCESS_ENV, DUMP_ENV: str(dump)},
        )
        assert run.returncode == 0, run.stderr[-3000:]


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- Checks ------------------------------------------------------------------------------------


def assert_one_line_error(proc: subprocess.CompletedProcess, match: str, command="train") -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [
        line for line in proc.stderr.splitlines() if line.startswith(f"rho {command}: error:")
    ]
    assert len(errors) == 1 and match in errors[0], proc.stderr[-2000:]


# Every figure of an experiment report is recorded in its results.json.
NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?")


def numbers_in(value) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers_in(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers_in(v)]
    return []


def recorded(text: str, values: list[float]) -> bool:
    """Is the printed number ``text`` some recorded value at the precision it was printed?"""
    percent = text.endswith("%")
    body = text.rstrip("%").replace(",", "")
    mantissa, _, exponent = body.partition("e")
    x = float(body)
    decimals = len(mantissa.partition(".")[2])
    step = 10.0 ** (-decimals) * 10.0 ** int(exponent or 0)
    if not decimals and not exponent and mantissa.strip("+-") != "0":
        step *= 10 ** (len(mantissa) - len(mantissa.rstrip("0")))  # 120 may be 2 sig. figures
    scales = (100.0, 1.0) if percent else (1.0,)  # a percent is recorded as 0.342 or as 34.2
    tolerance = step / 2 + 1e-9 * abs(x)
    return any(abs(v * scale - x) <= tolerance for v in values for scale in scales)


def assert_traceable(report: str, results: dict) -> None:
    """Every number in report.md is a value in results.json, as printed (the paper's quoted
    figures and fixed phrases aside)."""
    choices = results.get("config", {}).get("choices") or ""  # the config's own words, quoted
    for constant in (*PAPER.values(), "13-grams", "Figure 3", "Figures 6, 8", "Figure 13"):
        report = report.replace(constant, "")
    report = report.replace(choices, "") if choices else report
    values = numbers_in(results)
    values += [abs(v) for v in values if v < 0]  # "0.0001 below the target" prints −0.0001
    missing = [m.group() for m in NUMBER.finditer(report) if not recorded(m.group(), values)]
    assert not missing, f"numbers in report.md not in results.json: {missing[:20]}"


# --- Hand-made experiment results --------------------------------------------------------------


def hand_run(seed: int, losses: dict[str, float]):
    """One seed of an arm as results.json holds it, with the given final losses (validation and
    test alike) and a two-point validation curve from 6.0 down to them over 100 tokens (10
    FLOPs and 0.01 s per token); the fields nothing here reads are placeholders."""
    from rho.experiment.records import ArmRun

    return ArmRun.model_validate({
        "run": "run", "steps": 4, "warmup_steps": 1, "windows_read": 1, "windows_trained": 1,
        "sample_windows": {}, "n_params": 1, "seed": seed,
        "final": {"validation": dict(losses), "test": dict(losses)},
        "curve": {"tokens": [0, 100], "flops": [0.0, 1000.0], "seconds": [0.0, 1.0],
                  **{axis: [6.0, loss] for axis, loss in losses.items()}},
        "train_tokens": 100, "flops_train": 1000.0, "seconds_train": 1.0,
    })  # fmt: skip


def hand_results(losses: dict[str, dict[str, list[float]]], **config):
    """A whole Results (results.json's model) from final losses per arm, axis and seed (arm ->
    axis -> one loss per seed, the i-th of every axis being seed i); its summary is computed
    by rho.experiment.facts, the rest are placeholders. ``config``: ExperimentConfig fields
    (eval_windows 0: the curves are the whole validation set's)."""
    from rho.experiment.environment import environment
    from rho.experiment.facts import summarise
    from rho.experiment.records import BaseOverlap, DataSummary, Results
    from rho.experiment.settings import ExperimentConfig

    cfg = ExperimentConfig(**{"eval_windows": 0, **config})
    axes = list(losses["clm"])
    runs = {
        arm: [
            hand_run(seed, {axis: values[seed] for axis, values in per_axis.items()})
            for seed in range(len(next(iter(per_axis.values()))))
        ]
        for arm, per_axis in losses.items()
    }
    overlap = BaseOverlap(documents=0, base_documents=0, corpus_documents=1,
                          share_of_corpus_characters=0.0)  # fmt: skip
    return Results(
        config=cfg,
        data=DataSummary(
            axes=axes,
            decontamination={},
            tokens={"corpus": 1000, "curated": 100},
            base_overlap=overlap,
        ),  # fmt: skip
        stages={"data": "k"},
        runs=runs,
        overhead={},
        analyses=None,
        seconds={},
        references={},
        draws={},
        summary=summarise(runs, axes, {}, cfg, pretrained_base=False, references={}),
        environment=environment(),
        ladder={},
    )
