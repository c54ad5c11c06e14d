"""`rho train` across processes: DDP's find_unused_parameters default, --fsdp where it cannot
shard, and what a run records about how it was spread."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import HANG_GUARD_S, assert_one_line_error, run_rho
from transformers import HfArgumentParser

from rho.training.runs import OPTIONS_FILE
from rho.training.trainer import SelectiveTrainingArguments


def parsed(*argv: str) -> SelectiveTrainingArguments:
    (args,) = HfArgumentParser(SelectiveTrainingArguments).parse_args_into_dataclasses(
        args=["--output_dir", "unused", "--use_cpu", *argv]
    )
    return args


def test_find_unused_parameters_is_false_unless_asked():
    assert parsed().ddp_find_unused_parameters is False
    assert parsed("--ddp_find_unused_parameters", "true").ddp_find_unused_parameters is True
    assert parsed("--ddp_find_unused_parameters").ddp_find_unused_parameters is True


def common_args(stores, out) -> list:
    return [
        "train",
        "--tokens", stores.tokens,
        "--ref_losses", stores.losses,
        "--preset", "tiny",
        "--use_cpu",
        "--report_to", "none",
        "--save_strategy", "no",
        "--max_steps", "2",
        "--per_device_train_batch_size", "2",
        "--disable_tqdm", "true",
        "--output_dir", out,
    ]  # fmt: skip


@pytest.mark.slow
def test_fsdp_on_the_cpu_is_refused_in_one_line(stores, tmp_path):
    # transformers 4.x's --fsdp takes a value (5.x's also stands alone)
    proc = run_rho(*common_args(stores, tmp_path / "run"), "--fsdp", "full_shard")
    assert_one_line_error(proc, "--fsdp cannot shard on cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_single_process_run_records_no_ddp(stores, tmp_path):
    proc = run_rho(*common_args(stores, tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads((tmp_path / "run" / OPTIONS_FILE).read_text())["distributed"]
    assert facts == {"world_size": 1, "wrapper": "LlamaForCausalLM", "find_unused_parameters": None}


@pytest.mark.slow
def test_two_ranks_train_under_ddp_without_find_unused_parameters(stores, tmp_path):
    """A real 2-process DDP run: the model DDP wrapped had find_unused_parameters False."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "rho", *map(str, common_args(stores, tmp_path / "run"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads((tmp_path / "run" / OPTIONS_FILE).read_text())["distributed"]
    assert facts == {
        "world_size": 2,
        "wrapper": "DistributedDataParallel",
        "find_unused_parameters": False,
    }
