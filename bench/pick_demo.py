"""Pick the demo's prototype and proxy settings on pick seeds and the pick share of validation.

Runs `rho demo --pick true` with clm alone into --out (the data, the base and clm, once), then
each candidate beside clm in its own copy of that directory (OUT-ARM-N: a rerun resumes each
candidate; --jobs runs several at once), on seeds 100 and 101, which the demo never reports, and
on the pick share of the held-out validation documents (demo.yaml's pick_share), which the
demo's curves and target never read; test sets are not read. Ranks the candidates of each group
by the one-off FLOPs to reach clm's final loss on the target's pick share (the compute frontier,
on the pick curves; a candidate reaching it on every pick seed first), then by the final loss
there. Writes the table and the picks to docs/demo-choices.md; the picks are then written into
src/rho/experiment/demo.yaml by hand.

    OMP_NUM_THREADS=1 python bench/pick_demo.py --out /tmp/rho-pick --jobs 3  # 46 min, 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PICK_SEEDS = ["100", "101"]  # disjoint from every seed the demo reports
COMMON = ["--seeds", *PICK_SEEDS, "--reference_seeds", *PICK_SEEDS, "--seeded_arms", "all",
          "--analyze", "false", "--pick", "true"]  # fmt: skip
GROUPS = {
    # the prototype arm: which hidden state embeds a window, how many windows it keeps, which
    "proto-clm": [
        ["--embed_layer", layer, "--proto_keep", keep, "--proto_from", side]
        for layer in ("0", "-1")
        for keep, side in (("0.5", "hard"), ("0.5", "easy"), ("0.7", "hard"))
    ],
    # the proxy reference's size (the learner is the 1m preset, 0.69M parameters)
    "slm-proxy": [["--reference_base", size] for size in ("tiny", "300k")],
}


def demo(out: Path, arms: str, flags: list[str]) -> dict:
    """`rho demo --pick true` on the pick seeds into ``out``; its results.json."""
    command = [sys.executable, "-m", "rho", "demo", "--out", str(out), "--arms", arms, *COMMON,
               *flags]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads((out / "results.json").read_text())


def run(out: Path, arm: str, flags: list[str], number: int) -> dict:
    """One candidate beside clm, in a copy of ``out`` (where clm is trained already)."""
    own = out.with_name(f"{out.name}-{arm}-{number}")
    if not own.exists():
        shutil.copytree(out, own, symlinks=True)
    start = time.perf_counter()
    results = demo(own, f"clm,{arm}", flags)
    target = results["data"]["axes"][0]
    summary = results["summary"]
    frontier = summary["axes"][summary["target_axis"]]["frontier"]["arms"][arm]["ratio_one_off"]
    return {
        "flags": " ".join(flags),
        "pick": final_mean(results, arm, target),
        "one_off": None if frontier is None else frontier["mean"],
        "clm_pick": final_mean(results, "clm", target),
        "seconds": round(time.perf_counter() - start),
    }


def final_mean(results: dict, arm: str, axis: str) -> float:
    """An arm's final loss on the axis's pick share (a --pick run's "validation"), mean over
    the pick seeds."""
    losses = [row["final"]["validation"][axis] for row in results["runs"][arm]]
    return sum(losses) / len(losses)


def rank(rows: list[dict]) -> list[dict]:
    """Reaching the target on every pick seed first, by one-off FLOPs; then the rest by the
    final loss on the pick share."""
    return sorted(rows, key=lambda r: (r["one_off"] is None, r["one_off"] or 0, r["pick"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/rho-pick"))
    parser.add_argument("--doc", type=Path, default=Path("docs/demo-choices.md"))
    parser.add_argument("--jobs", type=int, default=1, help="candidates run at once")
    args = parser.parse_args()
    demo(args.out, "clm", [])  # the data, the base and clm, which every candidate reuses
    candidates = [(arm, flags, n) for arm, group in GROUPS.items() for n, flags in enumerate(group)]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: run(args.out, *c), candidates))
    lines = [
        "# How the demo's prototype and proxy settings were picked",
        "",
        f"`OMP_NUM_THREADS=1 python bench/pick_demo.py --jobs {args.jobs}`: "
        f"`rho demo {' '.join(COMMON)}`, each "
        "candidate beside clm: pick seeds the demo never reports, and the pick share of the "
        "held-out validation documents (demo.yaml's `pick_share`), which the demo's curves and "
        "target never read. Ranked by the one-off FLOPs to reach clm's final loss on the "
        "target's pick share (mean over the pick seeds, as a ratio to clm's run; '-' = not "
        "reached on every pick seed), then by the final loss there. Test sets are not read. "
        "Every other setting is demo.yaml's.",
        "",
    ]
    for arm in GROUPS:
        ranked = rank([row for row, c in zip(rows, candidates, strict=True) if c[0] == arm])
        lines += [f"## {arm}", "", "| flags | one-off FLOPs to the target (× clm) | loss on "
                  f"the pick share (target) | seconds ({args.jobs} at once) |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for r in ranked:
            one_off = "-" if r["one_off"] is None else f"{r['one_off']:.3f}"
            lines.append(f"| `{r['flags']}` | {one_off} | {r['pick']:.4f} | {r['seconds']} |")
        lines += ["", f"clm's loss on the pick share: {ranked[0]['clm_pick']:.4f}. "
                  f"Picked: `{ranked[0]['flags']}`.", ""]  # fmt: skip
    args.doc.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
