"""Scoring throughput against training throughput, measured in one run on one preset.

Scoring is what `rho score` runs per batch (``rho.scoring.score.window_losses``: a forward pass
under
``torch.inference_mode`` plus the chunked per-token cross-entropy). Training is one step of the
same model with the HF causal-LM loss: forward, backward and an AdamW step. The two alternate,
repeat after repeat (in alternating order), so machine noise hits both alike; the ratio is the
median of the per-repeat ratios. A forward-only pass costs about a third of a training step, so
the ratio should approach 3.

    python bench/bench_score.py [--preset 1m] [--steps 4] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from rho.models import build_model, count_parameters
from rho.scoring.windows import window_losses


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="1m", help="rho.models preset (default 1m)")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="steps per repeat and kind")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    scorer = build_model(args.preset, args.vocab).to(device).eval()
    learner = copy.deepcopy(scorer).train()
    optimizer = torch.optim.AdamW(learner.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(args.vocab, (args.batch_size, args.seq_len), generator=generator).to(device)
    tokens = ids.numel()

    def score_step():
        window_losses(scorer, ids)

    def train_step():
        loss = learner(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def forward_only():
        scorer(input_ids=ids, use_cache=False)

    for fn in (score_step, train_step, forward_only):
        fn()  # warm up (allocator, kernels)

    kinds = {"score": score_step, "train": train_step}
    rates: dict[str, list[float]] = {name: [] for name in kinds}
    forwards: list[float] = []
    for repeat in range(args.repeats):
        order = list(kinds) if repeat % 2 == 0 else list(reversed(kinds))
        for name in order:
            rates[name].append(tokens * args.steps / timed(kinds[name], args.steps, device))
        forwards.append(timed(forward_only, args.steps, device) / args.steps)
    ratios = [s / t for s, t in zip(rates["score"], rates["train"], strict=True)]

    score, train = statistics.median(rates["score"]), statistics.median(rates["train"])
    print(
        f"preset {args.preset} ({count_parameters(scorer) / 1e6:.2f}M params), vocab {args.vocab}, "
        f"batch {args.batch_size} x seq {args.seq_len}, {next(scorer.parameters()).dtype}, "
        f"{device}, {torch.get_num_threads()} threads, {args.repeats} x {args.steps} steps"
    )
    print(f"scoring  {score:>10,.0f} tokens/s   (rho.scoring.score.window_losses, inference_mode)")
    print(f"training {train:>10,.0f} tokens/s   (forward + backward + AdamW step)")
    print(
        f"ratio scoring/training: {statistics.median(ratios):.2f}x "
        f"(per repeat {min(ratios):.2f}..{max(ratios):.2f}; aim >= 2.5x)"
    )
    step, forward = tokens / score, statistics.median(forwards)
    print(
        f"scoring step {step * 1e3:.1f} ms = model forward {forward * 1e3:.1f} ms "
        f"+ per-token loss {(step - forward) * 1e3:.1f} ms; "
        f"training step {tokens / train * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
