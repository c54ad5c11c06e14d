"""Training-step throughput: plain CLM vs SLM with offline and with online reference losses.

Every mode runs the real SelectiveTrainer step (``get_batch_samples`` for the step's normaliser,
then ``training_step``: compute_loss -> slm_loss, backward) plus an AdamW step, on the same
model size, batches and threads. Modes are interleaved (the order rotates each repeat) so
machine noise hits them alike; ratios are medians of the per-repeat ratios.

    python bench/bench_train.py                   # preset 1m, batch 16 x seq 256, vocab 4096
    python bench/bench_train.py --threads 1      # steadier when the machine is busy

The data are random (Zipf-distributed) token ids in a real TokenStore, and the offline reference
losses a real LossStore scored by the reference model, collated by WindowDataset/WindowCollator
before timing (data loading is left out of every mode alike). "hf-clm" is the model's own loss
(``model(labels=...)``, F.cross_entropy) in a bare loop, for scale: its ratio to clm shows what
rho's per-token loss and the Trainer step cost over the stock loss.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_stores(root: Path, vocab: int, n_windows: int, seq_len: int, ref_model):
    from rho.io.store import LossStore, write_token_store
    from rho.scoring.score import score_store

    rng = np.random.default_rng(0)
    n_tokens = n_windows * seq_len
    tokens = np.minimum(rng.zipf(1.2, n_tokens) - 1, vocab - 1)  # ids 0..vocab-1, Zipf-like
    (root / "tokenizer").mkdir()  # the bench never decodes: an empty tokenizer folder will do
    store = write_token_store(
        root / "tokens", tokens, [0, n_tokens], root / "tokenizer", vocab_size=vocab, eos_id=0
    )
    score_store(ref_model, store, root / "losses", seq_len, progress=False, device="cpu")
    return store, LossStore(root / "losses", store, seq_len)


def make_trainer(model, out: Path, selection: str, ref_model=None, dataset=None):
    from rho.training.trainer import SelectiveTrainer, SelectiveTrainingArguments

    args = SelectiveTrainingArguments(
        output_dir=str(out), use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no",
        selection=selection, ratio=0.6, score="excess", scope="batch",
    )  # fmt: skip
    return SelectiveTrainer(model=model, args=args, train_dataset=dataset, ref_model=ref_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="1m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per mode per repeat")
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from rho.data.batches import WindowCollator, WindowDataset
    from rho.models import build_model, count_parameters

    hf_logging.set_verbosity_error()
    learner = build_model(args.preset, args.vocab, seed=0, max_positions=args.seq)
    reference = build_model(args.preset, args.vocab, seed=1, max_positions=args.seq)
    n_batches = 4
    with tempfile.TemporaryDirectory(prefix="rho-bench-") as tmp:
        tmp = Path(tmp)
        store, losses = build_stores(tmp, args.vocab, n_batches * args.batch, args.seq, reference)
        offline_data = WindowDataset(store, args.seq, losses)
        plain_data = WindowDataset(store, args.seq)
        collate = WindowCollator(args.seq)

        def batches(data):
            rows = [data[i] for i in range(len(data))]
            return [collate(rows[i : i + args.batch]) for i in range(0, len(rows), args.batch)]

        modes = {
            "clm": (make_trainer(copy.deepcopy(learner), tmp / "a", "none"), batches(plain_data)),
            "slm-offline": (
                make_trainer(copy.deepcopy(learner), tmp / "b", "token", dataset=offline_data),
                batches(offline_data),
            ),
            "slm-online": (
                make_trainer(copy.deepcopy(learner), tmp / "c", "token", ref_model=reference),
                batches(plain_data),
            ),
            "hf-clm": (None, batches(plain_data)),
        }
        hf_model = copy.deepcopy(learner)
        optims = {
            name: torch.optim.AdamW(
                (trainer.model if trainer else hf_model).parameters(), lr=1e-4, fused=False
            )
            for name, (trainer, _) in modes.items()
        }

        def step(name: str, i: int) -> None:
            trainer, data = modes[name]
            batch = data[i % len(data)]
            if trainer is None:  # the stock loss, for scale
                hf_model.train()
                hf_model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()
            else:
                micro, n_selected = trainer.get_batch_samples(iter([batch]), 1, trainer.args.device)
                trainer.training_step(trainer.model, micro[0], n_selected)
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)

        for name in modes:  # warm-up
            step(name, 0)
        names = list(modes)
        tps: dict[str, list[float]] = {name: [] for name in names}  # wall clock
        cpu: dict[str, list[float]] = {name: [] for name in names}  # this process's CPU time
        tokens = args.batch * args.seq
        for rep in range(args.repeats):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                start, start_cpu = time.perf_counter(), time.process_time()
                for i in range(args.steps):
                    step(name, i)
                tps[name].append(args.steps * tokens / (time.perf_counter() - start))
                cpu[name].append(args.steps * tokens / (time.process_time() - start_cpu))

    params = count_parameters(learner)
    print(
        f"\npreset {args.preset} ({params / 1e6:.2f}M params), batch {args.batch} x seq "
        f"{args.seq}, vocab {args.vocab}, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats x {args.steps} steps per mode, interleaved"
    )
    print(
        f"{'mode':<13}{'tokens/s':>10}{'best':>8}{'ratio to clm':>14}{'range':>12}"
        f"{'CPU-time ratio':>16}"
    )
    aims = {"slm-offline": 0.97, "slm-online": 0.70}
    for name in names:
        paired = sorted(a / b for a, b in zip(tps[name], tps["clm"], strict=True))
        by_cpu = statistics.median(a / b for a, b in zip(cpu[name], cpu["clm"], strict=True))
        aim = f"  (aim >= {aims[name]:.2f})" if name in aims else ""
        print(
            f"{name:<13}{statistics.median(tps[name]):>10,.0f}{max(tps[name]):>8,.0f}"
            f"{statistics.median(paired):>14.3f}{f'{paired[0]:.2f}..{paired[-1]:.2f}':>12}"
            f"{by_cpu:>16.3f}{aim}"
        )
    print(
        "tokens/s: wall clock, median over repeats. ratio to clm: median over repeats of "
        "(mode / clm in the same repeat);\nrange: its min..max. CPU-time ratio: the same from "
        "this process's CPU time (steadier on a busy machine, best with --threads 1)."
    )


if __name__ == "__main__":
    main()
