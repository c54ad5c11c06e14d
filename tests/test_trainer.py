"""rho.training.trainer and rho.training.train: SelectiveTrainer on a real transformers.Trainer,
tiny Llama
models, real stores."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    SEQ,
    Stores,
    assert_one_line_error,
    read_metrics,
    run_rho,
    targs,
    train_logs,
    two_ranks_and_one_process,
)
from torch.utils.data import Subset
from transformers import TrainerCallback

import rho.training.trainer as rt
from rho.data.batches import WindowCollator, WindowDataset
from rho.errors import UserError
from rho.models import build_model, check_not_same_model
from rho.selection.select import n_keep
from rho.training.options import ModelDataArguments, SelectionArguments
from rho.training.runs import METRICS_FILE, OPTIONS_FILE
from rho.training.train import build_trainer, run_training
from rho.training.trainer import SelectiveTrainer

SEED = 0


def make_trainer(s: Stores, out: Path, data: dict | None = None, sel: dict | None = None, **kw):
    data = {"tokens": str(s.tokens), "preset": "tiny", "ref_losses": str(s.losses), **(data or {})}
    return build_trainer(ModelDataArguments(**data), targs(out, **(sel or {}), **kw))


class GradCapture(TrainerCallback):
    """Copies every parameter's gradient just before each optimizer step."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})


def first_step_grads(trainer: SelectiveTrainer) -> dict[str, torch.Tensor]:
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    return capture.grads[0]


def assert_grads_close(a: dict, b: dict, rtol=1e-4, atol=1e-7) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


# --- Offline SLM: trains, logs, checkpoints ------------------------------------------------------


@pytest.fixture(scope="module")
def offline_run(stores, tmp_path_factory):
    """The `train` stage: 20 steps of offline SLM, a checkpoint and an evaluation every 10."""
    out = tmp_path_factory.mktemp("offline") / "run"
    data = ModelDataArguments(
        tokens=str(stores.tokens),
        preset="tiny",
        ref_losses=str(stores.losses),
        eval_tokens=str(stores.tokens),
    )
    args = targs(
        out,
        max_steps=20,
        save_strategy="steps",
        save_steps=10,
        eval_strategy="steps",
        eval_steps=10,
        per_device_eval_batch_size=64,
    )
    run_training(data, args)
    return out


def test_offline_slm_changes_parameters_and_the_loss_falls(offline_run, stores):
    from rho.models import load_model

    initial = build_model("tiny", stores.vocab, seed=SEED, max_positions=SEQ)
    trained = load_model(offline_run)
    before = dict(initial.named_parameters())
    for name, param in trained.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"
    logs = train_logs(offline_run)
    assert [m["step"] for m in logs] == list(range(1, 21))
    first, last = np.mean([m["loss"] for m in logs[:5]]), np.mean([m["loss"] for m in logs[-5:]])
    assert last < first - 0.2, (first, last)


def test_offline_slm_selects_the_ratio(offline_run):
    n_valid = 4 * (SEQ - 1)  # full windows; position 0 of a window is no target
    for m in train_logs(offline_run):
        assert m["ratio"] == 0.6
        assert m["selected_fraction"] == pytest.approx(n_keep(0.6, n_valid) / n_valid)
        assert m["selected_fraction"] * n_valid == math.ceil(0.6 * n_valid)


def test_metrics_have_every_field(offline_run):
    logs = train_logs(offline_run)
    for m in logs:
        for key in (
            "loss",
            "loss_all",
            "selected_fraction",
            "excess_mean",
            "loss_selected",
            "loss_unselected",
            "tokens_seen",
        ):
            assert math.isfinite(m[key]), key
        assert m["loss"] == pytest.approx(m["loss_selected"], rel=1e-5)
        # the loss is the mean over selected tokens; the mean over all mixes both groups
        f = m["selected_fraction"]
        mixed = f * m["loss_selected"] + (1 - f) * m["loss_unselected"]
        assert m["loss_all"] == pytest.approx(mixed, rel=1e-5)
    assert [m["tokens_seen"] for m in logs] == [4 * SEQ * m["step"] for m in logs]
    evals = [m for m in read_metrics(offline_run) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [10, 20, 20]  # every --eval_steps, then the final one
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]


def test_ratio_warmup_falls_linearly_from_one(stores, tmp_path):
    sel = {"ratio": 0.6, "ratio_warmup_steps": 4}
    make_trainer(stores, tmp_path, sel=sel, max_steps=6).train()
    n_valid = 4 * (SEQ - 1)
    logs = train_logs(tmp_path)
    assert [m["ratio"] for m in logs] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6, 0.6])
    for m in logs:
        assert m["selected_fraction"] == pytest.approx(n_keep(m["ratio"], n_valid) / n_valid)


def test_checkpoints_hold_model_tokenizer_and_options(offline_run):
    for folder in (offline_run / "checkpoint-10", offline_run / "checkpoint-20", offline_run):
        names = {p.name for p in folder.iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", OPTIONS_FILE} <= names
        options = json.loads((folder / OPTIONS_FILE).read_text())
        assert options["selection"]["ratio"] == 0.6 and options["seq_len"] == SEQ
        assert options["data"]["ref_losses"].endswith("losses")


# --- Online and offline references -----------------------------------------------------------


def capture_selection(monkeypatch) -> list:
    results = []

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    real = rt.slm_loss
    monkeypatch.setattr(rt, "slm_loss", spy)
    return results


def test_online_and_offline_reference_select_the_same_tokens(stores, tmp_path, monkeypatch):
    offline = make_trainer(stores, tmp_path / "off")
    online = make_trainer(
        stores,
        tmp_path / "on",
        data={"ref_losses": None, "ref_model": str(stores.ref_dir), "seq_len": SEQ},
    )
    assert online.ref_model is not None and "ref_loss" not in online.data_collator(
        [online.train_dataset[0]]
    )
    items = [offline.train_dataset[i] for i in range(8)]
    batch = offline.data_collator(items)
    results = capture_selection(monkeypatch)
    for trainer, inputs in (
        (offline, batch),
        (online, {k: batch[k] for k in ("input_ids", "labels")}),
    ):
        trainer.model.train()
        trainer.compute_loss(trainer.model, inputs)
    off, on = results
    # Column t is the target input_ids[:, t + 1] (the trainer may add an ignored last column).
    n = SEQ - 1
    assert not on.selected[:, n:].any() and not off.selected[:, n:].any()
    sel_on, sel_off, learner = on.selected[:, :n], off.selected[:, :n], on.token_loss[:, :n]
    # The same learner (same preset and seed) saw the same batch.
    torch.testing.assert_close(off.token_loss[:, :n], learner, rtol=0, atol=0)
    # The store holds float16: the offline excess differs from the online one by its rounding.
    with torch.no_grad():
        logits = stores.ref(input_ids=batch["input_ids"]).logits[:, :-1]
        ref_on = F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none")
    ref_off = batch["ref_loss"][:, 1:]
    gap = (ref_off - ref_on).abs().max().item()
    assert 0 < gap <= 2.0**-10 * ref_on.abs().max().item()
    assert sel_on.sum() == sel_off.sum() == n_keep(0.6, 8 * n)
    # Every token whose online excess is further than the float16 gap from the cut is kept or
    # dropped alike; only near-ties (within 2 * gap of the cut) may flip.
    excess = learner.detach() - ref_on
    cut = excess[sel_on].min()
    clear = (excess - cut).abs() > 2 * gap
    assert torch.equal(sel_on[clear], sel_off[clear])
    assert (sel_on != sel_off).sum() <= (~clear).sum()
    assert clear.float().mean() > 0.9


def test_online_reference_trains_like_offline(stores, tmp_path):
    """Same reference, same data: the learner's losses over three steps agree within the
    float16 rounding of the store (a flip of a near-tie token moves them only slightly)."""
    offline = make_trainer(stores, tmp_path / "off", max_steps=3)
    online = make_trainer(
        stores,
        tmp_path / "on",
        data={"ref_losses": None, "ref_model": str(stores.ref_dir), "seq_len": SEQ},
        max_steps=3,
    )
    offline.train()
    online.train()
    for a, b in zip(train_logs(tmp_path / "off"), train_logs(tmp_path / "on"), strict=True):
        assert a["loss_all"] == pytest.approx(b["loss_all"], abs=1e-3)
        assert a["excess_mean"] == pytest.approx(b["excess_mean"], abs=1e-3)


# --- Gradient accumulation and normalisation ----------------------------------------------------


SGD = dict(optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=0.0)


def first_windows(trainer: SelectiveTrainer, n: int = 4) -> SelectiveTrainer:
    """Train on the store's first ``n`` (full) windows only: one step of 4 rows reads them all,
    in whatever order the Trainer's sampler draws them (transformers 4.x has no sequential
    sampling option)."""
    trainer.train_dataset = Subset(trainer.train_dataset, range(n))
    return trainer


def test_grad_accumulation_equals_one_big_batch_for_sequence_scope(stores, tmp_path):
    sel = {"scope": "sequence"}
    one = make_trainer(stores, tmp_path / "one", sel=sel, per_device_train_batch_size=4, **SGD)
    two = make_trainer(
        stores,
        tmp_path / "two",
        sel=sel,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        **SGD,
    )
    one, two = first_windows(one), first_windows(two)
    grads_one, grads_two = first_step_grads(one), first_step_grads(two)
    assert_grads_close(grads_one, grads_two)
    # ...and so are the parameters after the SGD step.
    for (name, a), b in zip(one.model.named_parameters(), two.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_step_gradient_is_mean_over_all_selected_tokens(stores, tmp_path):
    """Accumulation 2, scope=batch: the step's gradient is that of (sum of the selected tokens'
    losses over both micro-batches) / (how many were selected), computed here by hand."""
    ratio = 0.6
    trainer = make_trainer(
        stores,
        tmp_path / "run",
        sel={"scope": "batch", "ratio": ratio},
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        **SGD,
    )
    first_windows(trainer)
    model = copy.deepcopy(trainer.model)  # the weights before the step
    micro_batches = []
    real_loss = trainer.compute_loss

    def spy(model, inputs, return_outputs=False, num_items_in_batch=None):
        micro_batches.append({k: v.clone() for k, v in inputs.items()})
        return real_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer.compute_loss = spy
    grads = first_step_grads(trainer)

    assert len(micro_batches) == 2
    total, n_selected = 0.0, 0
    for batch in micro_batches:  # the step's two micro-batches, as the trainer drew them
        ids, ref = batch["input_ids"], batch["ref_loss"][:, 1:]
        logits = model(input_ids=ids).logits[:, :-1]
        losses = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        )
        k = math.ceil(ratio * losses.numel())
        keep = torch.topk(losses.detach() - ref.reshape(-1), k).indices
        total = total + losses[keep].sum()
        n_selected += k
    (total / n_selected).backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    assert_grads_close(grads, expected, rtol=1e-4, atol=1e-6)


def test_a_custom_keep_rule_changes_selection_and_normaliser_together(stores, tmp_path):
    """How many tokens a selection keeps is one function (rho.selection.select): plug in another (a
    quarter of each unit, floored) and both the selection and the step's normaliser follow."""

    def quarter(ratio, sizes):
        return torch.div(sizes, 4, rounding_mode="floor")

    trainer = make_trainer(
        stores,
        tmp_path / "run",
        sel={"scope": "batch", "ratio": 0.6},
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        **SGD,
    )
    first_windows(trainer)  # full windows: two per micro-batch
    trainer.keep_rule = quarter
    selected, normalisers = [], []
    real_loss = trainer.compute_loss

    def spy(model, inputs, return_outputs=False, num_items_in_batch=None):
        normalisers.append(float(num_items_in_batch))
        return real_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer.compute_loss = spy
    real_slm = rt.slm_loss

    def counting(*args, **kwargs):
        result = real_slm(*args, **kwargs)
        selected.append(int(result.selected.sum()))
        return result

    rt.slm_loss, original = counting, rt.slm_loss
    try:
        trainer.train()
    finally:
        rt.slm_loss = original
    n_valid = 2 * (SEQ - 1)  # per micro-batch: two full windows
    assert selected == [n_valid // 4] * 2  # 15 each, where the default rule keeps 38
    assert normalisers == [2 * (n_valid // 4)] * 2  # the step divides by what was kept


# --- Resume ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["excess", "random"])
def test_resume_reproduces_the_uninterrupted_run(stores, tmp_path, score):
    sel = {"score": score}
    kw = dict(max_steps=6, save_strategy="steps", save_steps=3)
    make_trainer(stores, tmp_path / "whole", sel=sel, **kw).train()
    resumed = make_trainer(stores, tmp_path / "resumed", sel=sel, **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-3"))
    whole, after = train_logs(tmp_path / "whole"), train_logs(tmp_path / "resumed")
    assert [m["step"] for m in after] == [4, 5, 6]
    for a, b in zip(whole[3:], after, strict=True):
        for key in ("loss", "loss_all", "loss_selected", "loss_unselected", "tokens_seen"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (key, a["step"])


# --- Guards ---------------------------------------------------------------------------------------


def test_reference_must_not_be_the_training_model(stores):
    model = build_model("tiny", stores.vocab, seed=0)
    with pytest.raises(UserError, match="itself"):
        check_not_same_model(model, model)
    shared = build_model("tiny", stores.vocab, seed=5)
    shared.model.layers[0] = model.model.layers[0]  # one layer's weights are the learner's
    with pytest.raises(UserError, match="shares weights"):
        check_not_same_model(model, shared)
    with pytest.raises(UserError, match="same weights"):
        check_not_same_model(model, copy.deepcopy(model))
    check_not_same_model(model, build_model("tiny", stores.vocab, seed=5))  # a real reference


def test_trainer_refuses_itself_as_reference(stores, tmp_path):
    model = build_model("tiny", stores.vocab, seed=0)
    data = WindowDataset(stores.store, SEQ)
    with pytest.raises(UserError, match="itself"):
        SelectiveTrainer(
            model=model,
            args=targs(tmp_path),
            train_dataset=data,
            data_collator=WindowCollator(SEQ),
            ref_model=model,
        )


def test_reference_dir_with_the_learners_initial_weights(stores, tmp_path):
    same = tmp_path / "same"
    build_model("tiny", stores.vocab, seed=SEED, max_positions=SEQ).save_pretrained(same)
    with pytest.raises(UserError, match="same weights"):
        make_trainer(stores, tmp_path / "out", data={"ref_losses": None, "ref_model": str(same)})


def test_reference_vocabulary_smaller_than_the_tokenizer(stores, tmp_path):
    small = tmp_path / "small"
    build_model("tiny", stores.vocab - 10, seed=3).save_pretrained(small)
    with pytest.raises(UserError, match="vocabulary of"):
        make_trainer(stores, tmp_path / "out", data={"ref_losses": None, "ref_model": str(small)})


def test_reference_dir_with_another_tokenizer(stores, tmp_path):
    ref = tmp_path / "other_ref"
    build_model("tiny", stores.vocab, seed=3).save_pretrained(ref)
    stores.other_store.tokenizer().save_pretrained(ref)
    with pytest.raises(UserError, match="another tokenizer"):
        make_trainer(stores, tmp_path / "out", data={"ref_losses": None, "ref_model": str(ref)})


def test_loss_store_of_other_tokens(stores, tmp_path):
    with pytest.raises(UserError, match="token hash"):
        make_trainer(stores, tmp_path / "out", data={"tokens": str(stores.other_tokens)})


def test_loss_store_of_another_seq_len(stores, tmp_path):
    with pytest.raises(UserError, match="seq_len"):
        make_trainer(stores, tmp_path / "out", data={"seq_len": SEQ * 2})


def test_eval_tokens_from_another_tokenizer(stores, tmp_path):
    with pytest.raises(UserError, match="another tokenizer"):
        make_trainer(stores, tmp_path / "out", data={"eval_tokens": str(stores.other_tokens)})


def test_excess_score_needs_a_reference(stores, tmp_path):
    with pytest.raises(UserError, match="needs"):
        make_trainer(stores, tmp_path / "out", data={"ref_losses": None})
    make_trainer(stores, tmp_path / "clm", data={"ref_losses": None}, sel={"selection": "none"})
    make_trainer(stores, tmp_path / "rand", data={"ref_losses": None}, sel={"score": "random"})


def test_offline_and_online_reference_together_is_ambiguous(stores, tmp_path):
    with pytest.raises(UserError, match="not both"):
        make_trainer(stores, tmp_path / "out", data={"ref_model": str(stores.ref_dir)})


@pytest.mark.parametrize(
    "options",
    [{"ratio": 0.0}, {"ratio": 1.5}, {"score": "loss"}, {"scope": "world"}, {"selection": "all"}],
)
def test_bad_selection_options(options):
    with pytest.raises(UserError):
        SelectionArguments(**options)
    with pytest.raises(UserError):  # the same checks as part of the training arguments
        targs(Path("unused"), **options)


@pytest.mark.slow
def test_cli_errors_are_one_line(stores, tmp_path):
    common = ["--tokens", stores.tokens, "--preset", "tiny", "--use_cpu", "--report_to", "none"]
    no_ref = run_rho("train", *common, "--output_dir", tmp_path / "a", "--score", "excess")
    assert_one_line_error(no_ref, "needs --ref_losses or --ref_model")
    bad_len = run_rho(
        "train",
        *common,
        "--output_dir",
        tmp_path / "b",
        "--ref-losses",
        stores.losses,
        "--seq_len",
        "64",
    )
    assert_one_line_error(bad_len, "seq_len")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / METRICS_FILE).exists()


# --- torchrun: world-consistent selection ---------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_select_like_one(stores, tmp_path):
    """2 ranks × 2 rows with scope=batch rank the 4 rows together: the selections, losses and
    final weights equal one process with 4 rows per batch."""
    steps = 8
    common = [
        "train",
        "--tokens", stores.tokens,
        "--ref_losses", stores.losses,
        "--preset", "tiny",
        "--scope", "batch",
        "--use_cpu",
        "--report_to", "none",
        "--save_strategy", "no",
        "--max_steps", str(steps),
        "--logging_steps", "1",
        "--learning_rate", "3e-3",
        "--seed", str(SEED),
        "--disable_tqdm", "true",
    ]  # fmt: skip
    two_ranks_and_one_process(common, tmp_path)

    cross_rank = False
    for step in range(steps):
        ranks = [np.load(tmp_path / "dump2" / f"step{step:05d}-micro0-rank{r}.npz") for r in (0, 1)]
        single = np.load(tmp_path / "dump1" / f"step{step:05d}-micro0-rank0.npz")
        # The global micro-batch is rank 0's rows then rank 1's: the single process's batch.
        np.testing.assert_array_equal(
            np.concatenate([r["input_ids"] for r in ranks]), single["input_ids"]
        )
        np.testing.assert_array_equal(
            np.concatenate([r["selected"] for r in ranks]), single["selected"]
        )
        assert single["selected"].sum() == n_keep(0.6, 4 * (SEQ - 1))
        # A per-rank top-k keeps ceil(0.6 · 62) = 38 on each rank; the world ranking need not.
        cross_rank |= any(r["selected"].sum() != n_keep(0.6, 2 * (SEQ - 1)) for r in ranks)
    assert cross_rank, "the ranks never selected differently from a per-rank top-k"

    logs_two, logs_one = train_logs(tmp_path / "two"), train_logs(tmp_path / "one")
    assert len(logs_two) == len(logs_one) == steps
    for a, b in zip(logs_two, logs_one, strict=True):
        for key in ("loss", "loss_all", "selected_fraction", "tokens_seen"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (key, a["step"])
    assert logs_two[-1]["loss"] < logs_two[0]["loss"]

    from safetensors.torch import load_file

    w_two, w_one = (
        load_file(tmp_path / "two" / "model.safetensors"),
        load_file(tmp_path / "one" / "model.safetensors"),
    )
    initial = build_model("tiny", stores.vocab, seed=SEED, max_positions=SEQ).state_dict()
    for name, tensor in w_one.items():
        torch.testing.assert_close(w_two[name], tensor, rtol=1e-4, atol=2e-5, msg=name)
        assert not torch.equal(tensor, initial[name]), f"{name} did not train"
