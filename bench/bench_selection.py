"""Sample- and token-level selection side by side: the compute each needs to reach CLM's final
held-out loss, on the demo corpus, in one run.

Runs `rho demo` with every arm (CLM, SLM, offline window pruning + CLM / + SLM, online RHO-LOSS,
RHO-LOSS + SLM inside the kept windows), all with the same optimizer steps, batch, initialisation
and seed, and prints, for each arm, its final held-out loss and — to reach CLM's final loss —
its training tokens, training FLOPs (candidate forwards included), total FLOPs (reference
training and corpus scoring included for the arms that use reference losses) and wall time, as
ratios to CLM (below 1 = cheaper).

    python bench/bench_selection.py --quick      # tiny model, 12% of the corpus: ~2 minutes
    python bench/bench_selection.py              # preset 1m, 40% of the corpus: ~9 minutes
    python bench/bench_selection.py --candidate-factor 10 --out /tmp/bench

The selection analyses of the demo (selected.html, dynamics) are skipped: only the runs and the
table. Wall times are measured in this one run on this machine (training steps only, evaluation
excluded; totals add the reference's training, the scoring and the pruning), so they are
comparable between arms but move with machine load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def config(quick: bool, factor: int | None):
    from rho.experiment.config import ARMS, DemoConfig

    if quick:
        cfg = DemoConfig.quick()
    else:  # the full demo's model on 40% of the corpus, a single pass
        cfg = DemoConfig(corpus_fraction=0.4, evals=10, eval_windows=64)
    cfg = replace(cfg, arms=ARMS, analyze=False)
    if factor is not None:
        cfg = replace(cfg, candidate_factor=factor)
    return cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, small corpus")
    parser.add_argument("--candidate-factor", type=int, help="RHO-LOSS candidates per window (4)")
    parser.add_argument("--preset", help="model preset (default 1m; quick: tiny)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", help="output directory (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from rho.experiment.demo import demo
    from rho.experiment.report import arms_explained, arms_markdown

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config(args.quick, args.candidate_factor)
    if args.preset:
        cfg = replace(cfg, preset=args.preset)
    out = Path(args.out or tempfile.mkdtemp(prefix="rho-bench-selection-")) / "demo"
    started = time.perf_counter()
    results = demo(out, args.quick, cfg)
    elapsed = time.perf_counter() - started

    arms = results["arms"]
    print("\n" + "=" * 100)
    print(
        f"bench_selection ({'quick' if args.quick else 'mid'}): preset {cfg.preset}, "
        f"{results['corpus_tokens']:,} corpus tokens, {arms['clm']['end']['tokens']:,} trained "
        f"tokens per arm, candidate factor {cfg.candidate_factor}, {torch.get_num_threads()} "
        f"threads, {elapsed:.0f} s in all"
    )
    print("To reach CLM's final held-out loss, as a ratio to CLM (below 1 = cheaper):\n")
    print(arms_markdown(results))
    print()
    print(*arms_explained(results))
    print("\nabsolute, end of each run:")
    for arm, a in arms.items():
        e = a["end"]
        print(
            f"  {arm:14s} loss {a['final_heldout_loss']:.4f}  trained {e['tokens']:>9,} tok  "
            f"candidates {e['candidate_windows']:>6,} win  train {e['flops_train']:.3g}  "
            f"cand {e['flops_candidates']:.3g}  overhead {a['overhead_flops']:.3g} FLOPs  "
            f"{e['train_seconds']:.1f} s (+{a['overhead_seconds']:.1f} s)"
        )
    print(f"\nresults: {out / 'results.json'}  report: {out / 'report.md'}")
    (out / "bench_selection.json").write_text(json.dumps({"arms": arms}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
