"""`rho demo`'s command line: its options, mapped onto a DemoConfig, then the demo."""

from __future__ import annotations

import argparse

from rho.errors import UserError
from rho.experiment.config import ARMS, DemoConfig, parse_arms
from rho.experiment.demo import demo
from rho.select import check_ratio


def demo_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho demo", description="Selective Language Modeling end to end on the demo corpus."
    )
    parser.add_argument("--out", default="rho-demo", help="output directory (replaced on rerun)")
    parser.add_argument("--quick", action="store_true", help="smoke-test scale (about a minute)")
    parser.add_argument("--preset", help="model preset (default: 1m; quick: tiny)")
    parser.add_argument("--ratio", type=float, help="SLM selection ratio (default 0.6)")
    parser.add_argument("--seed", type=int, help="seed (default 0)")
    parser.add_argument(
        "--arms",
        default="clm,slm",
        help=f"comma list of {', '.join(ARMS)}, or all (clm and slm always run; default clm,slm)",
    )
    parser.add_argument(
        "--candidate-factor", type=int, help="RHO-LOSS arms: candidates per trained window (4)"
    )
    args = parser.parse_args(argv)
    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    for key in ("preset", "ratio", "seed", "candidate_factor"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.candidate_factor is not None and args.candidate_factor < 1:
        raise UserError("--candidate-factor must be >= 1")
    check_ratio(cfg.ratio, "--ratio")  # every option is checked before any work
    cfg.arms = parse_arms(args.arms)
    demo(args.out, args.quick, cfg)
    return 0
