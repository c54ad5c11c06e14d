"""The pipeline at 10M and 100M tokens: tokenize -> score (2 ranks) -> train SLM -> eval, each
stage a real `rho` command in its own processes, with its throughput, start-up, peak memory and
disk. Not part of the test suite: it takes tens of minutes on 2 cores.

Every stage runs as a subprocess in a new session; a sampler sums the resident memory of its
whole process tree (torchrun's agent and ranks included) ten times a second: "RSS" is that sum,
"anon" the part not backed by files (RSS minus file-backed and shared pages; memory-mapped
stores count in RSS while their pages are resident). Start-up is the time from launch to the
stage's first unit of work on disk: tokenize's first part, score's first recorded batch,
train's first logged step (--logging_steps 1), eval's output.

- corpus: the shipped demo corpus (src/rho/corpora/demo, text and domain of each line) repeated
  until it holds the size's tokens; a byte-level BPE of ``--vocab`` trained on one copy.
- tokenize: `rho tokenize` (one process); tokens per second over the whole command.
- score: `torchrun --nproc_per_node 2 -m rho score` with an untrained ``tiny`` reference
  (scores are not the point). Throughput is the rate of recorded batches (both ranks) over
  ``--score-seconds`` of steady scoring, after which the command is interrupted (Ctrl-C,
  resumable); sizes up to ``--score-full`` tokens are then resumed to completion. A bigger
  store's LossStore, needed to train, is completed from the real losses of its scored windows
  repeated over the rest (``rho.scoring.loss_writer.write_loss_store``), and the report says so.
- train: `rho train --selection token --preset tiny` for ``--train-steps`` steps of 16 x 256
  tokens, one process; throughput is tokens trained per second inside optimizer steps (the
  run's own ``tokens_seen`` / ``train_seconds``); start-up is launch to the start of the first
  step (its record's time less the step's own ``train_seconds``).

Every command gets OMP_NUM_THREADS=1 (the tokenizer's own threads are not torch's); "CPU
µs/token" is the user + system time of all the stage's processes per token, steadier than wall
time on a shared machine.
- eval: `rho eval` of the trained model on the demo's held-out set (the same at every size).

    python bench/bench_scale.py --dir /tmp/rho-scale --report /tmp/rho-scale/report.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

DEMO = Path(__file__).resolve().parents[1] / "src" / "rho" / "corpora" / "demo"
SEQ, BATCH = 256, 16
STAGES = ("tokenize", "score", "train", "eval")


def sizes_arg(text: str) -> list[int]:
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    return [int(float(s[:-1]) * units[s[-1].lower()]) for s in text.split(",")]


def label(n: int) -> str:
    return f"{n / 1e6:g}M"


# --- Running a stage ------------------------------------------------------------------------------


def tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def run_stage(cmd: list, env: dict, started=None, stop_after: float | None = None) -> dict:
    """Run ``cmd``; sample its process tree's memory; call ``started()`` at every sample and note
    when it first holds; send Ctrl-C (SIGINT to the whole group) ``stop_after`` seconds after
    that."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launch = time.perf_counter()
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    root = psutil.Process(proc.pid)
    peak = {"rss": 0, "anon": 0, "largest": 0, "processes": 0}
    startup = None
    interrupted = False
    out: dict = {}

    def read() -> None:  # the pipes, drained while the command runs
        out["stdout"], out["stderr"] = proc.communicate()

    reader = threading.Thread(target=read)
    reader.start()
    while proc.poll() is None:
        rss = anon = largest = 0
        procs = tree(root)
        for p in procs:
            try:
                m = p.memory_info()
            except psutil.Error:
                continue
            rss += m.rss
            anon += m.rss - m.shared
            largest = max(largest, m.rss)
        peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
        peak["largest"] = max(peak["largest"], largest)
        peak["processes"] = max(peak["processes"], len(procs))
        now = time.perf_counter() - launch
        if started is not None and started() and startup is None:  # every sample
            startup = now
        if stop_after is not None and startup is not None and now - startup > stop_after:
            if not interrupted:
                os.killpg(proc.pid, signal.SIGINT)
                interrupted = True
        time.sleep(0.1)
    reader.join()
    wall = time.perf_counter() - launch
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 and not interrupted:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{out.get('stderr', '')[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "startup_s": startup,
        "peak_rss": peak["rss"],
        "peak_anon": peak["anon"],
        "largest_process_rss": peak["largest"],
        "processes": peak["processes"],
        "interrupted": interrupted,
        "stdout": out.get("stdout", "")[-2000:],
    }


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --- The stages -----------------------------------------------------------------------------------


def make_corpus(root: Path, tokens: int, tokens_per_copy: int) -> Path:
    path = root / f"corpus-{label(tokens)}.jsonl"
    if path.exists():
        return path
    with gzip.open(DEMO / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    lines = "".join(json.dumps({"text": r["text"], "domain": r["domain"]}) + "\n" for r in records)
    copies = math.ceil(tokens / tokens_per_copy)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.write(lines)
    tmp.rename(path)
    return path


def progress_tokens(losses: Path, n_tokens: int) -> int:
    """Tokens of the batches both ranks have recorded as scored."""
    done = None
    for file in (losses / "progress").glob("rank*.npy"):
        try:
            marks = np.load(file)
        except (ValueError, OSError, EOFError):
            continue
        done = marks if done is None else done | marks
    if done is None:
        return 0
    full = n_tokens // SEQ
    batches = [min(BATCH, full - b * BATCH) for b in range(len(done))]  # windows per batch
    windows = sum(w for w, d in zip(batches, done, strict=False) if d and w > 0)
    return windows * SEQ


def score_stage(rho, env, store: Path, ref: Path, losses: Path, n_tokens: int, args) -> dict:
    cmd = [*rho["torchrun"], "score", "--model", ref, "--tokens", store, "--out", losses]
    cmd += ["--seq-len", SEQ, "--batch-size", BATCH, "--device", "cpu"]
    env = {**env, "RHO_SCORE_SAVE_EVERY_S": "0.25"}
    seen: list[tuple[float, int]] = []  # (seconds, tokens recorded)
    t0 = time.perf_counter()

    def started() -> bool:
        if not (losses / "progress").is_dir():
            return False
        done = progress_tokens(losses, n_tokens)
        if done:
            seen.append((time.perf_counter() - t0, done))
        return bool(done)

    result = run_stage(cmd, env, started, stop_after=args.score_seconds)
    if len(seen) >= 2 and seen[-1][1] > seen[0][1]:
        (a, x), (b, y) = seen[0], seen[-1]
        result["tokens_per_s"] = (y - x) / (b - a)
        result["measured_tokens"] = y - x
    result["scored_tokens"] = (
        progress_tokens(losses, n_tokens) if result["interrupted"] else n_tokens
    )
    return result


def complete_losses(losses: Path, store: Path) -> None:
    """A bigger store's LossStore for training: the real losses of its first scored batches (the
    run's contiguous prefix) repeated over the rest; scoring it all takes hours on 2 cores."""
    from rho.io.store import TokenStore
    from rho.scoring.loss_writer import loss_store_meta, read_meta, write_loss_store

    tokens = TokenStore(store)
    meta = read_meta(losses)
    done = None
    for file in (losses / "progress").glob("rank*.npy"):
        marks = np.load(file)
        done = marks if done is None else done | marks
    prefix = int(np.argmin(done)) if not done.all() else len(done)  # batches before a gap
    head = np.asarray(np.load(losses / "ref_loss.npy", mmap_mode="r")[: prefix * BATCH * SEQ])
    whole = np.resize(head, tokens.n_tokens)  # whole windows repeated: starts stay NaN
    extra = {k: meta[k] for k in ("model", "model_hash", "score_dtype") if k in meta}
    new = loss_store_meta(tokens, SEQ, BATCH, **extra)
    shutil.rmtree(losses)
    write_loss_store(losses, tokens, whole, new)


def pipeline(size: int, root: Path, base, ref: Path, heldout: Path, args, rho, env) -> dict:
    name = label(size)
    work = root / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = make_corpus(root, size, args.tokens_per_copy)
    store, losses, run = work / "store", work / "losses", work / "run"
    stages: dict = {"corpus_bytes": corpus.stat().st_size}
    print(f"[{name}] tokenize {corpus.name}", flush=True)
    parts = store.parent / f".{store.name}.parts"
    t = run_stage(
        [*rho["rho"], "tokenize", corpus, "--out", store, "--tokenizer", base.tokenizer_dir],
        env,
        started=lambda: any(parts.glob("part-*")),
    )
    n_tokens = json.loads((store / "meta.json").read_text())["n_tokens"]
    t.update(tokens=n_tokens, tokens_per_s=n_tokens / t["wall_s"], disk=disk(store))
    t["cpu_us_per_token"] = 1e6 * t["cpu_s"] / n_tokens
    stages["tokenize"] = t
    print(f"[{name}] {n_tokens:,} tokens; score (2 ranks)", flush=True)
    s = score_stage(rho, env, store, ref, losses, n_tokens, args)
    s["cpu_us_per_token"] = 1e6 * s["cpu_s"] / s["scored_tokens"]  # the time-boxed run
    if s["interrupted"] and n_tokens <= args.score_full:
        print(f"[{name}] score: resume to completion", flush=True)
        full = score_stage(rho, env, store, ref, losses, n_tokens, argparse.Namespace(
            score_seconds=None))  # fmt: skip
        s["full_run"] = {k: full[k] for k in ("wall_s", "peak_rss", "peak_anon")}
        s["full_run"]["tokens_per_s"] = full.get("tokens_per_s")
        s["completed_by"] = "scoring"
    elif s["interrupted"]:
        start = time.perf_counter()
        complete_losses(losses, store)
        s["completed_by"] = "repeating the scored windows' losses"
        s["whole_store_passes_s"] = time.perf_counter() - start
    s["disk"] = disk(losses)
    stages["score"] = s
    print(f"[{name}] train {args.train_steps} steps", flush=True)
    cmd = [*rho["rho"], "train", "--selection", "token", "--ratio", "0.6", "--tokens", store]
    cmd += ["--ref_losses", losses, "--preset", "tiny", "--use_cpu", "--report_to", "none"]
    cmd += ["--max_steps", args.train_steps, "--per_device_train_batch_size", BATCH]
    cmd += ["--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true"]
    cmd += ["--dataloader_num_workers", "0", "--output_dir", run]
    metrics = run / "metrics.jsonl"
    tr = run_stage(cmd, env, started=lambda: metrics.exists() and metrics.stat().st_size > 0)
    records = [json.loads(x) for x in metrics.read_text().splitlines() if "train_seconds" in x]
    last = records[-1]
    # start-up: launch to the start of the first step (its record, less the step's own time)
    tr["first_step_end_s"] = tr["startup_s"]
    tr["startup_s"] -= float(records[0]["train_seconds"])
    tr.update(
        tokens=last["tokens_seen"],
        tokens_per_s=last["tokens_seen"] / last["train_seconds"],
        disk=disk(run),
    )
    tr["cpu_us_per_token"] = 1e6 * tr["cpu_s"] / last["tokens_seen"]
    stages["train"] = tr
    print(f"[{name}] eval", flush=True)
    ev_out = work / "eval"
    e = run_stage(
        [*rho["rho"], "eval", "--model", run, "--tokens", heldout, "--out", ev_out, "--quiet"],
        env,
    )  # its output appears at the end: no start-up to see
    held = json.loads((heldout / "meta.json").read_text())["n_tokens"]
    e.update(tokens=held, tokens_per_s=held / e["wall_s"], disk=disk(ev_out))
    e["cpu_us_per_token"] = 1e6 * e["cpu_s"] / held
    stages["eval"] = e
    return {"size": size, "tokens": n_tokens, "stages": stages}


# --- Report ---------------------------------------------------------------------------------------


def mib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.0f} MiB"


def report(results: list[dict], args, floor: float) -> str:
    small, big = results[0], results[-1]
    lines = [
        "| stage | size | tokens | throughput (tok/s) | CPU µs/token | start-up | peak RSS, all "
        "processes | of it anon | largest process | disk |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for stage in STAGES:
            s = r["stages"][stage]
            start = "—" if s["startup_s"] is None else f"{s['startup_s']:.1f} s"
            lines.append(
                f"| {stage} | {label(r['size'])} | {s.get('tokens', r['tokens']):,} | "
                f"{s['tokens_per_s']:,.0f} | {s['cpu_us_per_token']:.1f} | {start} | "
                f"{mib(s['peak_rss'])} | {mib(s['peak_anon'])} | "
                f"{mib(s['largest_process_rss'])} | {mib(s.get('disk'))} |"
            )
    lines.append("")
    for r in results:
        s = r["stages"]["score"]
        note = f"- score at {label(r['size'])}: throughput over {s.get('measured_tokens', 0):,} "
        note += "tokens of steady scoring; "
        if s["interrupted"]:
            note += f"interrupted {args.score_seconds:.0f} s after its first recorded batch "
            note += f"({s['scored_tokens']:,} tokens scored)"
        else:
            note += "it finished within the time box (its RSS includes the end's passes)"
        if "full_run" in s:
            f = s["full_run"]
            note += (
                f"; then resumed to completion: {f['wall_s']:.0f} s, peak RSS "
                f"{mib(f['peak_rss'])} (anon {mib(f['peak_anon'])})"
            )
        elif s.get("completed_by"):
            note += (
                f"; its LossStore was completed by {s['completed_by']} for training "
                "(rho.scoring.loss_writer.write_loss_store, whose whole-store passes of a "
                "finished store, hash, statistics and finite share, took "
                f"{s['whole_store_passes_s']:.1f} s with the write)"
            )
        lines.append(note)
        t = r["stages"]["train"]
        lines.append(
            f"- train at {label(r['size'])}: first step started {t['startup_s']:.1f} s and ended "
            f"{t['first_step_end_s']:.1f} s after launch"
        )
    lines.append(
        f"- importing transformers' Trainer alone took {floor:.1f} s on this machine (median of "
        "3, measured in the same run)"
    )
    lines += ["", f"{label(big['size'])} against {label(small['size'])}:"]
    for stage in STAGES:
        a, b = small["stages"][stage], big["stages"][stage]
        start = "—"
        if a["startup_s"] is not None and b["startup_s"] is not None:
            start = f"{b['startup_s']:.1f} s vs {a['startup_s']:.1f} s"
        lines.append(
            f"- {stage}: peak RSS {b['peak_rss'] / a['peak_rss']:.2f}× (anon "
            f"{b['peak_anon'] / a['peak_anon']:.2f}×); time per token "
            f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}× wall, "
            f"{b['cpu_us_per_token'] / a['cpu_us_per_token']:.2f}× CPU; start-up {start}"
        )
    return "\n".join(lines) + "\n"


def import_floor() -> float:
    """Seconds to import what `rho train` cannot start without (transformers' Trainer)."""
    code = "from transformers import AutoModelForCausalLM, Trainer, TrainingArguments"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="scratch directory (tens of GB free)")
    parser.add_argument("--sizes", type=sizes_arg, default=sizes_arg("10M,100M"))
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--score-seconds", type=float, default=120.0)
    parser.add_argument(
        "--score-full",
        type=sizes_arg,
        default=sizes_arg("20M"),
        help="score stores up to this size to completion (default 20M)",
    )
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--report", default=None, help="write the Markdown table here")
    args = parser.parse_args()
    args.score_full = args.score_full[0]

    from rho.data.tokenize import tokenize_corpus
    from rho.models import build_model

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    base = root / "base"
    if not (base / "meta.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        tokenize_corpus([str(DEMO / "corpus.jsonl.gz")], base, train_vocab=args.vocab,
                        progress=False)  # fmt: skip
    from rho.io.store import TokenStore

    base = TokenStore(base)
    args.tokens_per_copy = base.n_tokens
    heldout = root / "heldout"
    if not heldout.exists():
        tokenize_corpus([str(DEMO / "heldout.jsonl.gz")], heldout,
                        tokenizer=str(base.tokenizer_dir), progress=False)  # fmt: skip
    ref = root / "ref"
    if not ref.exists():
        build_model("tiny", base.vocab_size, seed=1, max_positions=SEQ).save_pretrained(ref)
    # One torch thread per process (torchrun's default for its ranks): on a shared machine,
    # threads that wait for each other make runs many times slower and the sizes incomparable.
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true", "OMP_NUM_THREADS": "1"}
    rho = {
        "rho": [sys.executable, "-m", "rho"],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc_per_node", "2", "-m", "rho"],
    }  # fmt: skip
    floor = import_floor()
    results = [pipeline(s, root, base, ref, heldout, args, rho, env) for s in args.sizes]
    (root / "results.json").write_text(json.dumps({"import_floor_s": floor, "sizes": results}))
    table = report(results, args, floor)
    print(table)
    if args.report:
        Path(args.report).write_text(table)


if __name__ == "__main__":
    main()
