"""`rho demo` with one worker against two: wall and CPU seconds of each whole fresh run (its
base pretrained anew: an empty cache), one after the other on the same machine, and whether
their results agree.

    python bench/bench_workers.py                 # the demo (about 10 minutes each)
    python bench/bench_workers.py --quick         # rho demo --quick
    python bench/bench_workers.py --workers 1 2 --out /tmp/bench-workers

CPU seconds are the run's own and its children's (resource.getrusage). The runs take turns
(1, 2, ...), so a machine that gets busier or quieter over the runs biases every count alike only
if you repeat them (--repeat 2 runs 1, 2, 2, 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_demo(workers: int, out: Path, quick: bool) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, RHO_CACHE=str(out / "cache"))
    command = [sys.executable, "-m", "rho", "demo", "--out", str(out / "run")]
    command += ["--workers", str(workers)] + (["--quick"] if quick else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results = json.loads((out / "run" / "results.json").read_text())
    finals = {arm: [r["final"]["test"] for r in runs] for arm, runs in results["runs"].items()}
    return {"workers": workers, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "test": finals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default="/tmp/bench-workers")
    args = parser.parse_args()
    order = []
    for r in range(args.repeat):
        order += args.workers if r % 2 == 0 else args.workers[::-1]
    rows = []
    for i, workers in enumerate(order):
        row = run_demo(workers, Path(args.out) / f"w{workers}-{i}", args.quick)
        print(f"workers {workers}: wall {row['wall_s']:.0f} s, CPU {row['cpu_s']:.0f} s")
        rows.append(row)
    first = {w: next(r for r in rows if r["workers"] == w) for w in args.workers}
    base = first[args.workers[0]]
    for w, row in first.items():
        diff = max(
            abs(a - b)
            for arm in base["test"]
            for ra, rb in zip(base["test"][arm], row["test"][arm], strict=True)
            for a, b in zip(ra.values(), rb.values(), strict=True)
        )
        print(
            f"workers {w}: wall × {row['wall_s'] / base['wall_s']:.2f}, CPU × "
            f"{row['cpu_s'] / base['cpu_s']:.2f} of workers {args.workers[0]}'s; "
            f"largest test-loss difference {diff:.2g} nats"
        )
    Path(args.out, "bench_workers.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
