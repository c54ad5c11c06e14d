"""Nothing lost, round two (issue 24): rho never writes into a directory it did not make, a killed
`rho train` leaves nothing a later command trusts, degenerate inputs are refused, a pickle's
payload never runs, and corpus text never reaches matplotlib's math parser."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HANG_GUARD_S, SUBPROCESS_ENV, hold_env, run_rho, wait_until_held
from safetensors.torch import load_file, save_file

from rho.errors import UserError
from rho.io.files import MARKER
from rho.scoring.loss_writer import loss_store_meta, write_loss_store
from rho.training.runs import (
    MANIFEST_FILE,
    METRICS_FILE,
    RUN_KIND,
    manifest_problem,
    run_checkpoints,
    whole_checkpoints,
)

SEQ = 32


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def train_args(token_store, out: Path, *extra, model: Path | None = None) -> list:
    start = ["--preset", "tiny"] if model is None else ["--model", model]
    return [
        "train", "--tokens", token_store.path, *start, "--seq_len", SEQ,
        "--output_dir", out, "--per_device_train_batch_size", 2, "--use_cpu",
        "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", 1,
        "--dataloader_num_workers", 0, "--selection", "none", *extra,
    ]  # fmt: skip


# --- 1. Only replace what rho made ----------------------------------------------------------------


def users_model_dir(path: Path, model_dir: Path) -> Path:
    """A copy of a model someone keeps: rho must never touch it."""
    path.mkdir()
    for file in model_dir.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    (path / "notes.txt").write_text("my notes\n")
    return path


@pytest.mark.slow
def test_train_never_writes_into_a_directory_it_did_not_make(tmp_path, token_store, model_dir):
    mine = users_model_dir(tmp_path / "my-model-copy", model_dir)
    before = snapshot(mine)
    for extra in ([], ["--overwrite"], ["--resume_from_checkpoint", "last"]):
        proc = run_rho(*train_args(token_store, mine, "--max_steps", 1, *extra))
        one_line_error(proc, str(mine))
        assert snapshot(mine) == before  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-model-copy"]  # no lock left behind


@pytest.mark.slow
def test_train_reruns_into_its_own_run_only_when_asked(tmp_path, token_store):
    out = tmp_path / "run"
    first = run_rho(*train_args(token_store, out, "--max_steps", 2, "--save_strategy", "no"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / MARKER).read_text().startswith(RUN_KIND)
    assert [step for step, _ in run_checkpoints(out)] == [2]  # the final model, whole
    before = snapshot(out)
    again = run_rho(*train_args(token_store, out, "--max_steps", 3, "--save_strategy", "no"))
    one_line_error(again, "finished rho run", "--overwrite")
    assert snapshot(out) == before
    replaced = run_rho(
        *train_args(token_store, out, "--max_steps", 3, "--save_strategy", "no", "--overwrite")
    )
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert metrics_steps(out) == [1, 2, 3]  # one run's log


@pytest.mark.slow
def test_dynamics_and_sweep_refuse_an_out_holding_user_files(
    tmp_path, token_store, model_dir, capsys
):
    from rho.cli import main

    out = tmp_path / "results"
    out.mkdir()
    (out / "dynamics.md").write_text("my own notes, not rho's\n")
    (out / "runs").mkdir()
    before = snapshot(out)
    dynamics = ["analyze", "dynamics", "--checkpoints", model_dir, model_dir, "--tokens"]
    dynamics += [token_store.path, "--seq-len", SEQ, "--out", out, "--overwrite"]
    assert main(list(map(str, dynamics))) == 2
    assert "rho did not make" in capsys.readouterr().err
    losses = tmp_path / "losses"
    write_loss_store(
        losses,
        token_store,
        np.ones(token_store.n_tokens, dtype=np.float16),
        loss_store_meta(token_store, SEQ, 4),
    )
    sweep = ["sweep", "--ratios", "0.5", "--tokens", token_store.path, "--ref-losses", losses]
    sweep += ["--eval-tokens", token_store.path, "--out", out, "--max-steps", "1", "--overwrite"]
    assert main(list(map(str, sweep))) == 2
    assert "rho did not make" in capsys.readouterr().err
    assert snapshot(out) == before
    # A sweep run directory someone replaced with their own files is not deleted either.
    sweep_out = tmp_path / "sweep"
    (sweep_out / "runs" / "ratio-0.5").mkdir(parents=True)
    (sweep_out / MARKER).write_text("rho.Sweep\n")
    (sweep_out / "runs" / "ratio-0.5" / "mine.txt").write_text("keep me\n")
    sweep[sweep.index(out)] = sweep_out
    assert main(list(map(str, sweep))) == 2
    assert "rho did not make" in capsys.readouterr().err
    assert (sweep_out / "runs" / "ratio-0.5" / "mine.txt").read_text() == "keep me\n"


# --- 2. A killed run leaves nothing later commands trust ------------------------------------------


def metrics_steps(out: Path) -> list[int]:
    """The steps of the training-loss records (one per step with --logging_steps 1)."""
    records = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


@pytest.mark.slow
def test_killed_train_resumes_from_its_last_whole_checkpoint(tmp_path, token_store):
    out = tmp_path / "run"
    args = train_args(token_store, out, "--max_steps", 400, "--save_steps", 3)
    held = tmp_path / "held"  # killed where it waits after publishing its third checkpoint
    proc = subprocess.Popen(
        [sys.executable, "-m", "rho", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=hold_env("checkpoint.published", 3, held),
    )
    try:
        wait_until_held(held, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [step for step, _ in whole_checkpoints(out)] == [3, 6, 9]
    # What kill -9 in the middle of a save leaves (the old Trainer wrote checkpoints in place):
    # a newer checkpoint with the model but no trainer state, no optimizer, no manifest.
    newest = whole_checkpoints(out)[-1][0]
    half = out / f"checkpoint-{newest + 100}"
    half.mkdir()
    (half / "config.json").write_text((out / f"checkpoint-{newest}" / "config.json").read_text())
    listed = run_checkpoints(out)
    assert all(manifest_problem(path) is None for _, path in listed)
    assert half not in [path for _, path in listed] and out not in [path for _, path in listed]

    rerun = run_rho(*train_args(token_store, out, "--max_steps", 60, "--save_steps", 3))
    one_line_error(rerun, "unfinished rho run", "--resume_from_checkpoint last")
    broken = run_rho(
        *train_args(token_store, out, "--max_steps", 60, "--resume_from_checkpoint", half)
    )
    one_line_error(broken, "is not whole")

    last = whole_checkpoints(out)[-1][0]
    resumed = run_rho(
        *train_args(
            token_store,
            out,
            "--max_steps",
            last + 4,
            "--save_steps",
            3,
            "--resume_from_checkpoint",
            "last",
        )  # fmt: skip
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = metrics_steps(out)
    assert steps == list(range(1, last + 5))  # one run's log: no restart, nothing twice
    assert not half.exists() and not list(out.glob(".checkpoint-*"))
    assert run_checkpoints(out)[-1][0] == last + 4


def small_run(tmp_path: Path, token_store, *extra) -> Path:
    out = tmp_path / "run"
    proc = run_rho(*train_args(token_store, out, "--max_steps", 4, "--save_steps", 2, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_truncated_optimizer_state_is_not_a_checkpoint(tmp_path, token_store):
    out = small_run(tmp_path, token_store)
    assert [s for s, _ in run_checkpoints(out)] == [2, 4]  # the final model (step 4) is no newer
    optimizer = out / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # a full disk
    assert [s for s, _ in whole_checkpoints(out)] == [2]
    assert "optimizer.pt has" in manifest_problem(out / "checkpoint-4")
    resume = run_rho(
        *train_args(
            token_store,
            tmp_path / "elsewhere",
            "--max_steps",
            6,
            "--resume_from_checkpoint",
            out / "checkpoint-4",
        )  # fmt: skip
    )
    one_line_error(resume, "checkpoint-4 is not whole", "optimizer.pt")
    assert not (tmp_path / "elsewhere").exists()


def limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_save_that_fails_midway_leaves_no_checkpoint(tmp_path, token_store):
    """A real failing write (the file size limit standing in for a full disk) while the optimizer
    state is saved: no checkpoint-N appears, and a rerun cleans the scratch and starts afresh."""
    whole = small_run(tmp_path, token_store, "--save_strategy", "steps")
    sizes = {p.name: p.stat().st_size for p in (whole / "checkpoint-2").iterdir()}
    limit = sizes["optimizer.pt"] - 100  # the model fits, the optimizer state does not
    assert sizes["model.safetensors"] < limit
    out = tmp_path / "full"
    args = train_args(token_store, out, "--max_steps", 4, "--save_steps", 2)
    failed = subprocess.run(
        [sys.executable, "-m", "rho", *map(str, args)],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        preexec_fn=limit_file_size(limit),
        timeout=HANG_GUARD_S,
    )
    assert failed.returncode != 0
    assert not list(out.glob("checkpoint-*"))  # nothing listed as a checkpoint
    with pytest.raises(UserError, match="no whole model"):
        run_checkpoints(out)
    again = run_rho(*train_args(token_store, out, "--max_steps", 4, "--save_steps", 2))
    one_line_error(again, "no whole checkpoint", "--overwrite")
    overwrite = train_args(token_store, out, "--max_steps", 4, "--save_steps", 2, "--overwrite")
    fresh = run_rho(*overwrite)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert [s for s, _ in run_checkpoints(out)] == [2, 4]
    assert not list(out.glob(".checkpoint-*"))


def test_checkpoints_are_saved_through_the_scratch_directory(tmp_path, token_store):
    """rho relies on Trainer._save_checkpoint writing into self._get_output_dir(trial): if a
    transformers release changes that, this fails (and so does every save, loudly)."""
    import inspect

    from transformers import Trainer

    source = inspect.getsource(Trainer._save_checkpoint)
    assert "self._get_output_dir(trial=trial)" in source
    out = small_run(tmp_path, token_store)
    for step in (2, 4):
        checkpoint = out / f"checkpoint-{step}"
        manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
        assert manifest["step"] == step
        assert {"optimizer.pt", "trainer_state.json", "model.safetensors"} <= set(manifest["files"])
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert ".tmp-" not in json.dumps(state)  # no scratch path leaks into the saved state
    assert not list(out.glob(".checkpoint-*"))


# --- 4. Degenerate inputs -------------------------------------------------------------------------


def nan_model(path: Path, model_dir: Path) -> Path:
    from rho.models import load_model

    model = load_model(model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    model.save_pretrained(path)
    return path


@pytest.mark.slow
def test_all_nan_reference_losses_are_refused_by_score_and_train(tmp_path, token_store, model_dir):
    broken = nan_model(tmp_path / "nan-model", model_dir)
    score = run_rho(
        "score", "--model", broken, "--tokens", token_store.path, "--out", tmp_path / "L",
        "--seq-len", SEQ, "--batch-size", 16, "--device", "cpu",
    )  # fmt: skip
    one_line_error(score, "finite", "reference")
    assert not json.loads((tmp_path / "L" / "meta.json").read_text())["complete"]

    nan_store = tmp_path / "nan-losses"
    meta = loss_store_meta(token_store, SEQ, 16)
    write_loss_store(nan_store, token_store, np.full(token_store.n_tokens, np.nan), meta)
    train = run_rho(
        *train_args(
            token_store,
            tmp_path / "run",
            "--max_steps",
            2,
            "--selection",
            "token",
            "--ref_losses",
            nan_store,
        )  # fmt: skip
    )
    one_line_error(train, "0.0% of the reference losses are finite")
    assert not (tmp_path / "run" / METRICS_FILE).exists()


def without_a_weight(path: Path, model_dir: Path) -> Path:
    path.mkdir()
    for file in model_dir.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    weights = load_file(path / "model.safetensors")
    weights.pop("model.layers.0.mlp.down_proj.weight")
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.slow
def test_a_model_with_missing_weights_is_refused_unless_allowed(tmp_path, token_store, model_dir):
    partial = without_a_weight(tmp_path / "partial", model_dir)
    common = ["--tokens", token_store.path, "--seq-len", SEQ, "--device", "cpu"]
    refused = run_rho("score", "--model", partial, *common, "--out", tmp_path / "L")
    one_line_error(refused, "lacks 1 weights", "down_proj", "--allow-missing-weights")
    assert not (tmp_path / "L").exists()
    allowed = run_rho(
        "score", "--model", partial, *common, "--out", tmp_path / "L", "--allow-missing-weights"
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    train = train_args(
        token_store, tmp_path / "run", "--max_steps", 1, "--save_strategy", "no", model=partial
    )
    one_line_error(run_rho(*train), "lacks 1 weights", "--allow_missing_weights")
    assert not (tmp_path / "run" / METRICS_FILE).exists()
    assert run_rho(*train, "--allow_missing_weights").returncode == 0


# --- 7. A pickle's payload never runs, and torch's advice is never repeated -----------------------


class CallsSystem:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_os_system_pickle_is_refused_without_torchs_advice(tmp_path, token_store, model_dir):
    from rho.models import load_model

    marker = tmp_path / "PAYLOAD-RAN"
    evil = tmp_path / "evil"
    evil.mkdir()
    load_model(model_dir).config.save_pretrained(evil)
    torch.save({"model.embed_tokens.weight": CallsSystem(marker)}, evil / "pytorch_model.bin")
    proc = run_rho(
        "score", "--model", evil, "--tokens", token_store.path, "--out", tmp_path / "L",
        "--seq-len", SEQ,
    )  # fmt: skip
    refusal = one_line_error(proc, "refused", "unsafe pickle", "could run code", "system")
    for advice in ("weights_only", "Re-running", "trust", "safe_globals", "allowlist"):
        assert advice not in refusal
    assert not marker.exists()
    assert not (tmp_path / "L").exists()


# --- 9. Corpus text is shown, never parsed as math ------------------------------------------------

MATH_TEXT = ["$x_1$", "$$", r"\frac{a}{b}", "100%", "a_b", "x^2", "cost $5", r"$\alpha", "}{"]


def test_plots_show_math_text_literally(tmp_path):
    from rho.analysis import plots

    x = [1, 2, 3]
    names = [f"step {t}" for t in MATH_TEXT[:3]]
    lines = [(label, np.array([1.0, 2.0, 1.5])) for label in MATH_TEXT]
    panels = [("L→L", lines[:5]), ("H→H", lines[5:])]
    files = [
        plots.fluctuating_tokens(x, "$step$", panels, 1.5, tmp_path / "f.png", names),
        plots.category_curves(
            x,
            r"\frac{1}{2}",
            np.ones((4, 3)),
            {
                "rows": [
                    {"category": c, "percent": 25.0, "paper_1b_percent": 25}
                    for c in ("H→L", "L→L", "H→H", "L→H")
                ]
            },  # fmt: skip
            tmp_path / "c.png",
            names,
        ),
        plots.selection_heatmap(np.ones((3, 3)), names, tmp_path / "h.png"),
        plots.selection_lines(np.ones((3, 3)), x, names, tmp_path / "l.png"),
        plots.spread_histogram({"$a$": np.array([0.1, 0.2])}, "std", tmp_path / "s.png"),
        plots.sweep([0.5, 1.0], [1.0, 1.1], {}, tmp_path / "w.png", " $unbalanced"),
        plots.selected_vs_unselected(
            {"SLM $x_1$": {"selected": ([1], [1.0]), "unselected": ([1], [2.0])}},
            0.6,
            tmp_path / "v.png",
        ),
    ]
    assert all(f.stat().st_size > 1000 for f in files)
