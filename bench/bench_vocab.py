"""Real vocabularies on a CPU: one SLM loss step (forward, per-token loss, selection at ratio
0.6, backward) through the full logits against the chunked linear cross-entropy
(rho.selection.linear_ce), for a small-hidden Llama at each vocabulary.

- peak memory: each variant's step in a fresh subprocess, peak RSS (VmHWM) minus the RSS
  just before the step (model, inputs and Python already resident);
- step time and scoring (no-grad losses) time: both variants in one process, interleaved, the
  order alternating each repeat; reported as medians of the per-repeat ratios;
- exactness: max |difference| of the per-token losses and of every parameter's gradient;
- FLOPs of the output layer per step (counted, not measured): full 6·N·H·V; chunked 2·N·H·V
  (ranking, no grad) + 6·k·N·H·V (the selected rows, forward and backward).

    python bench/bench_vocab.py                          # 32k, 128k, 256k; batch 4 x seq 2048
    python bench/bench_vocab.py --vocab 128256 --batch 1 --json
    python bench/bench_vocab.py --device cuda --vocab 128256 --json   # bf16 on a GPU

``--json`` prints, as its last line, one object for the last ``--vocab``: vocab, peak_ratio,
time_ratio, max_loss_diff, max_grad_diff (and batch, seq, score_time_ratio, flops_ratio).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial

import torch

RATIO = 0.6
DEVICE = torch.device("cpu")  # --device
VARIANTS = ("full", "chunked")


def build(vocab: int, batch: int, seq: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=seq, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    dtype = torch.float32 if DEVICE.type == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_config(config).to(DEVICE, dtype)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    targets = torch.cat([ids[:, 1:], torch.full((batch, 1), -100)], dim=1)
    ref = torch.rand(batch, seq, generator=g) * 10
    return model, ids.to(DEVICE), targets.to(DEVICE), ref.to(DEVICE)


def step(model, ids, targets, ref, variant: str):
    """One SLM loss step as the trainer runs it (rho.training.trainer.compute_loss, then
    backward)."""
    from rho.selection.loss import slm_loss
    from rho.selection.output_layer import head_forward

    model.zero_grad(set_to_none=True)
    if variant == "full":
        source = model(input_ids=ids).logits
    else:
        source = head_forward(model, {"input_ids": ids}, "chunked")[1]
    result = slm_loss(source, targets, ref, ratio=RATIO)
    result.loss.backward()
    return result


def rss_bytes(key: str = "VmRSS") -> int:
    """This process's resident memory (VmRSS) or its high-water mark (VmHWM). VmHWM, not
    ru_maxrss: Linux carries ru_maxrss over from the parent into a child."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def peak_child(variant: str, vocab: int, batch: int, seq: int) -> None:
    """In a fresh process: the step's peak RSS (on CUDA: allocated memory) over the amount
    before it, in bytes (printed)."""
    model, ids, targets, ref = build(vocab, batch, seq)
    if DEVICE.type == "cuda":
        before = torch.cuda.memory_allocated()
        step(model, ids, targets, ref, variant)
        return print(torch.cuda.max_memory_allocated() - before)
    before = rss_bytes()
    step(model, ids, targets, ref, variant)
    print(rss_bytes("VmHWM") - before)


def peak(variant: str, vocab: int, batch: int, seq: int) -> int:
    argv = [sys.executable, __file__, "--_peak", variant, "--vocab", str(vocab)]
    argv += ["--batch", str(batch), "--seq", str(seq), "--device", str(DEVICE)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(vocab: int, batch: int, seq: int, repeats: int) -> dict:
    from rho.selection.output_layer import model_token_losses

    model, ids, targets, ref = build(vocab, batch, seq)
    inputs, results, grads = {"input_ids": ids}, {}, {}
    for variant in VARIANTS:  # exactness (and a warm-up of both)
        results[variant] = step(model, ids, targets, ref, variant)
        grads[variant] = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss_diff = (results["chunked"].token_loss - results["full"].token_loss.detach()).abs().max()
    grad_diff = max((grads["chunked"][n] - g).abs().max().item() for n, g in grads["full"].items())
    same_selection = torch.equal(results["chunked"].selected, results["full"].selected)
    del results, grads
    steps, scores = [], []
    for r in range(repeats):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        t = {v: timed(lambda v=v: step(model, ids, targets, ref, v)) for v in order}
        steps.append(t["chunked"] / t["full"])
        with torch.inference_mode():
            s = {v: timed(partial(model_token_losses, model, inputs, targets, v)) for v in order}
        scores.append(s["chunked"] / s["full"])
    return {
        "time_ratio": statistics.median(steps),
        "score_time_ratio": statistics.median(scores),
        "max_loss_diff": float(loss_diff),
        "max_grad_diff": grad_diff,
        "same_selection": same_selection,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256, 256000])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 there)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--_peak", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args._peak:
        return peak_child(args._peak, args.vocab[0], args.batch, args.seq)
    n = args.batch * args.seq
    print(f"batch {args.batch} x seq {args.seq}, hidden 64, ratio {RATIO}, {DEVICE}", end="")
    print(f", {args.threads} thread(s)")
    row = {}
    for vocab in args.vocab:
        peaks = {v: peak(v, vocab, args.batch, args.seq) for v in VARIANTS}
        row = {"vocab": vocab, "peak_ratio": peaks["chunked"] / peaks["full"]}
        row.update(compare(vocab, args.batch, args.seq, args.repeats))
        row.update(batch=args.batch, seq=args.seq, flops_ratio=(2 + 6 * RATIO) / 6)
        saved = 4 * (1 - RATIO) * n * 64 * vocab / 1e9
        print(
            f"vocab {vocab:>7,}: peak {peaks['full'] / 2**20:,.0f} -> "
            f"{peaks['chunked'] / 2**20:,.0f} MiB (x{row['peak_ratio']:.3f}); "
            f"step time x{row['time_ratio']:.2f}; scoring time x{row['score_time_ratio']:.2f}; "
            f"selected-only backward saves {saved:.1f} GFLOP, output layer "
            f"x{row['flops_ratio']:.2f} of full's FLOPs; max diff loss "
            f"{row['max_loss_diff']:.1e} grad {row['max_grad_diff']:.1e}; "
            f"same selection {row['same_selection']}"
        )
    if args.json:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
