"""GPU throughput of one preset: scoring and training tokens/s, model-FLOPs utilisation, memory.

    python bench/gpu_bench.py                     # preset 100m, vocab 32000, 16 x 1024 tokens
    python bench/gpu_bench.py --peak-tflops 400   # a card the table below does not know

Rows: "score" is window_losses (rho score's batch step: bf16 weights, sdpa, inference_mode).
Training rows run trainer.train() for warm-up + timed steps with TrainingArguments(bf16=True):
"clm" is SelectiveTrainer with --selection none, "slm-offline" reads reference losses from a
LossStore, "slm-online" runs a float32 reference model as `rho train --ref_model` loads it,
"slm-online-bf16ref" the same with the reference in bf16, and "hf-clm" the stock Trainer with the
model's own loss, for scale. Tokens/s count every input token (SLM processes all, trains on 60%).

MFU = model FLOPs/s over the card's dense bf16 peak; model FLOPs are 2·N per scored token and 6·N
per trained token (the learner's only: what online SLM pays for its reference forward shows in the
SLM/CLM ratio). N counts every weight once, the tied embedding/LM head once: the LM head is a
matmul, the lookup is free. Attention scores (12·layers·hidden·seq_len per trained token, ~17% more
for 100m at 1024) are left out, so MFU is slightly conservative. Timed with torch.cuda.synchronize
after the warm-up steps; peak memory is torch.cuda.max_memory_allocated over each row's run.

Without CUDA: preset tiny, float32, a few steps (a smoke test printing the same table).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Dense bf16 peaks in TFLOP/s (no sparsity), first match on the device name wins.
PEAKS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
)
CUDA = torch.cuda.is_available()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def reset_memory() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if torch.cuda.memory_allocated() > 64 << 20:  # a previous row's model still held
            print(f"note: {torch.cuda.memory_allocated() / 2**30:.2f} GiB still allocated")


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else None


def peak_tflops(override: float | None) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name() if CUDA else "cpu"
    return override or next((p for key, p in PEAKS if key in name), None), name


def build_stores(root: Path, vocab: int, windows: int, seq_len: int, reference, dtype: str):
    from rho.io.store import write_token_store
    from rho.scoring.score import score_store

    ids = np.random.default_rng(0).integers(0, vocab, windows * seq_len)
    (root / "tokenizer").mkdir()  # never decoded: an empty tokenizer folder will do
    tokens = write_token_store(
        root / "tokens", ids, [0, len(ids)], root / "tokenizer", vocab_size=vocab, eos_id=0
    )
    device = "cuda" if CUDA else "cpu"
    losses = score_store(
        reference, tokens, root / "losses", seq_len, dtype=dtype, device=device, progress=False
    )
    return tokens, losses


def time_scoring(model, tokens, seq_len: int, batch: int, warmup: int, steps: int) -> float:
    """Tokens/s of window_losses on batches of ``batch`` windows (cycling through the store)."""
    from rho.scoring.windows import window_losses

    device = next(model.parameters()).device
    ids = torch.from_numpy(np.asarray(tokens.tokens, dtype=np.int64)).view(-1, seq_len)
    rows = torch.arange((warmup + steps) * batch) % len(ids)
    batches = ids[rows].to(device).split(batch)
    for b in batches[:warmup]:
        window_losses(model, b)
    sync()
    start = time.perf_counter()
    for b in batches[warmup:]:
        window_losses(model, b)
    sync()
    return steps * batch * seq_len / (time.perf_counter() - start)


def time_training(trainer, warmup: int) -> float:
    """trainer.train() for its max_steps; tokens/s over the steps after ``warmup``."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    marks: dict[int, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, args.max_steps):
                sync()
                marks[state.global_step] = time.perf_counter()

    trainer.add_callback(Timer())
    trainer.remove_callback(PrinterCallback)  # no per-run summary lines between the table's
    trainer.train()
    a = trainer.args
    steps = a.max_steps - warmup
    tokens = steps * a.per_device_train_batch_size * trainer.train_dataset.seq_len
    return tokens / (marks[a.max_steps] - marks[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="100m" if CUDA else "tiny")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=1024 if CUDA else 64)
    parser.add_argument("--batch-size", type=int, default=16 if CUDA else 4, help="training")
    parser.add_argument("--score-batch-size", type=int, default=32 if CUDA else 8)
    parser.add_argument("--warmup", type=int, default=5 if CUDA else 1, help="untimed steps")
    parser.add_argument("--steps", type=int, default=25 if CUDA else 3, help="timed steps")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import transformers
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from rho.data.batches import WindowCollator, WindowDataset
    from rho.models import build_model, count_parameters
    from rho.training.trainer import SelectiveTrainer, SelectiveTrainingArguments

    hf_logging.set_verbosity_error()
    dtype = "bfloat16" if CUDA else "float32"
    peak, card = peak_tflops(args.peak_tflops)
    steps = args.warmup + args.steps
    windows = steps * args.batch_size

    # Built once on the CPU; every row starts from a copy of the same weights.
    initial = {
        s: build_model(args.preset, args.vocab, seed=s, max_positions=args.seq_len) for s in (0, 1)
    }

    def model(seed: int):
        return copy.deepcopy(initial[seed])

    n_params = count_parameters(initial[0])
    n_body = count_parameters(initial[0], embeddings=False)
    attention = initial[0].config._attn_implementation
    print(f"device: {card} | peak bf16: {peak or 'unknown (pass --peak-tflops)'} TFLOP/s")
    print(f"torch {torch.__version__} | transformers {transformers.__version__} | attn {attention}")
    print(
        f"preset {args.preset}: N = {n_params / 1e6:.3g}M ({n_body / 1e6:.3g}M without the tied "
        f"embedding) | vocab {args.vocab} | {dtype} | train {args.batch_size} x {args.seq_len}, "
        f"score {args.score_batch_size} x {args.seq_len} | {args.warmup} warm-up + "
        f"{args.steps} timed steps"
    )

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reset_memory()
        reference = model(1)
        tokens, losses = build_stores(root, args.vocab, windows, args.seq_len, reference, dtype)
        reset_memory()
        speed = time_scoring(
            reference, tokens, args.seq_len, args.score_batch_size, args.warmup, args.steps
        )
        rows["score"] = dict(tokens_per_s=speed, flops_per_token=2 * n_params, peak_gib=peak_gib())
        del reference

        collator = WindowCollator(args.seq_len, pad_id=tokens.eos_id)
        train_args = dict(
            bf16=CUDA,
            use_cpu=not CUDA,
            max_steps=steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=3e-4,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        modes = {
            "hf-clm": ("stock", None, None),
            "clm": ("none", None, None),
            "slm-offline": ("token", losses, None),
            "slm-online": ("token", None, torch.float32),
            "slm-online-bf16ref": ("token", None, torch.bfloat16),
        }
        for name, (selection, loss_store, ref_dtype) in modes.items():
            reset_memory()
            kw = dict(
                model=model(0),
                train_dataset=WindowDataset(tokens, args.seq_len, loss_store),
                data_collator=collator,
            )
            out = str(root / name)
            if selection == "stock":
                trainer = Trainer(**kw, args=TrainingArguments(output_dir=out, **train_args))
            else:
                ref = model(1).to(ref_dtype) if ref_dtype is not None else None
                targs = SelectiveTrainingArguments(
                    output_dir=out, **train_args, selection=selection, ratio=0.6, score="excess"
                )
                trainer = SelectiveTrainer(**kw, args=targs, ref_model=ref)
            speed = time_training(trainer, args.warmup)
            rows[name] = dict(tokens_per_s=speed, flops_per_token=6 * n_params, peak_gib=peak_gib())
            del trainer, kw

    clm = rows["clm"]["tokens_per_s"]
    print(f"\n{'row':<20}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'vs clm':>8}{'peak GiB':>10}")
    for name, r in rows.items():
        tflops = r["tokens_per_s"] * r["flops_per_token"] / 1e12
        r["tflops"], r["mfu"] = tflops, tflops / peak if peak else None
        r["vs_clm"] = None if name == "score" else r["tokens_per_s"] / clm
        mfu = f"{r['mfu']:.1%}" if peak else "-"
        ratio = "" if name == "score" else f"{r['vs_clm']:.2f}"
        memory = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{name:<20}{r['tokens_per_s']:>12,.0f}{tflops:>10.2f}{mfu:>8}{ratio:>8}{memory:>10}")
    offline, online = rows["slm-offline"]["vs_clm"], rows["slm-online"]["vs_clm"]
    print(f"\nSLM/CLM throughput: offline {offline:.2f}, online {online:.2f}")
    if args.json:
        meta = dict(card=card, peak_tflops=peak, n_params=n_params, args=vars(args))
        Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
