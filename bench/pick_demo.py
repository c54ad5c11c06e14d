"""Pick the demo's prototype and proxy settings on validation data (seed 0), never on test.

Runs `rho demo` once per candidate into one directory (so the base, the draws and clm are
trained once and reused), and ranks the candidates of each group by the one-off FLOPs to reach
clm's final validation loss on the target (the compute frontier, on validation curves), then
by the final validation loss. Writes the table and the picks to docs/demo-choices.md; the
picks are then written into src/rho/experiment/demo.yaml by hand.

    python bench/pick_demo.py --out /tmp/pick            # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--seeds", "0", "--reference_seeds", "0", "--seeded_arms", "all", "--analyze", "false"]
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


def run(out: Path, arm: str, flags: list[str]) -> dict:
    command = [sys.executable, "-m", "rho", "demo", "--out", str(out), "--arms", f"clm,{arm}",
               *COMMON, *flags]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True)
    results = json.loads((out / "results.json").read_text())
    row = results["runs"][arm][0]
    summary = results["summary"]
    frontier = summary["axes"][summary["target_axis"]]["frontier"]["arms"][arm]["ratio_one_off"]
    return {
        "flags": " ".join(flags),
        "validation": row["final"]["validation"][results["data"]["axes"][0]],
        "one_off": None if frontier is None else frontier["mean"],
        "clm_validation": results["runs"]["clm"][0]["final"]["validation"]["math"],
        "seconds": round(time.perf_counter() - start),
    }


def rank(rows: list[dict]) -> list[dict]:
    """Reaching the target first, by one-off FLOPs; then the rest by validation loss."""
    return sorted(rows, key=lambda r: (r["one_off"] is None, r["one_off"] or 0, r["validation"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/rho-pick"))
    parser.add_argument("--doc", type=Path, default=Path("docs/demo-choices.md"))
    args = parser.parse_args()
    lines = [
        "# How the demo's prototype and proxy settings were picked",
        "",
        "`python bench/pick_demo.py`: `rho demo` with seed 0 only, each candidate beside clm, "
        "ranked by the one-off FLOPs to reach clm's final validation loss on the target (as a "
        "ratio to clm's run; '-' = never reached), then by the final validation loss. Test sets "
        "are not read. Every other setting is demo.yaml's.",
        "",
    ]
    for arm, candidates in GROUPS.items():
        rows = rank([run(args.out, arm, flags) for flags in candidates])
        lines += [f"## {arm}", "", "| flags | one-off FLOPs to the target (× clm) | "
                  "validation loss (target) | seconds |", "|---|---:|---:|---:|"]  # fmt: skip
        for r in rows:
            one_off = "-" if r["one_off"] is None else f"{r['one_off']:.3f}"
            lines.append(f"| `{r['flags']}` | {one_off} | {r['validation']:.4f} | {r['seconds']} |")
        lines += ["", f"clm's validation loss: {rows[0]['clm_validation']:.4f}. "
                  f"Picked: `{rows[0]['flags']}`.", ""]  # fmt: skip
        args.doc.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
