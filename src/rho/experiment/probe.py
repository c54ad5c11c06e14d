"""A short probe of this device for `rho experiment --plan`'s wall-time estimate: each model's
architecture, freshly initialised, trains (forward, backward, AdamW step) and forwards without a
gradient on random tokens at the config's micro-batch and seq_len, timed over a few steps after
a warm-up. Nothing is written; the estimate leaves out evaluations, data preparation, pruning
and the analyses."""

from __future__ import annotations

import contextlib
import platform
import time

import torch
from transformers import AutoModelForCausalLM

from rho.experiment.records.plan import Probe, Throughput
from rho.models import count_parameters

STEPS = 3  # timed, after one warm-up step


def device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"CPU ({platform.machine()}, {threads} thread{'s' if threads > 1 else ''})"


def timed(step, device: torch.device) -> float:
    """Mean seconds of ``step()`` over STEPS calls, after one warm-up call."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / STEPS


def throughput(config, rows: int, seq_len: int, bf16: bool, device: torch.device) -> Throughput:
    """Seconds per token trained and per token forwarded of ``config``'s architecture."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(device)
        ids = torch.randint(config.vocab_size, (rows, seq_len), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()

    def train() -> None:
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.inference_mode(), autocast:
            model(input_ids=ids)

    tokens = rows * seq_len
    return Throughput(
        n_params=count_parameters(model),
        train_token_seconds=timed(train, device) / tokens,
        forward_token_seconds=timed(forward, device) / tokens,
    )


def probe(configs: dict, rows: int, seq_len: int, bf16: bool, threads: int) -> Probe:
    """Each of ``configs`` (model name -> architecture) probed on this device, with ``threads``
    CPU threads (a worker's share of the cores)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = {name: throughput(c, rows, seq_len, bf16, device) for name, c in configs.items()}
    finally:
        torch.set_num_threads(before)
    return Probe(
        device=device_name(device, threads),
        threads=threads,
        batch_size=rows,
        seq_len=seq_len,
        steps=STEPS,
        models=models,
    )
