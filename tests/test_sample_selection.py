"""Sample-level selection: online RHO-LOSS (`--selection sample`, `sample+token`) in the trainer,
the compute it logs, and the demo's arms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SEQ, Stores, make_stores, targs, train_logs, two_ranks_and_one_process
from torch.utils.data import Subset

from rho.errors import UserError
from rho.models import count_parameters
from rho.selection.select import n_keep, top_windows, window_scores
from rho.training.options import ModelDataArguments, SelectionArguments
from rho.training.runs import COMPUTE_FILE
from rho.training.train import build_trainer

NAN = float("nan")
B, FACTOR = 2, 4


# --- The pure functions ---------------------------------------------------------------------------


def test_window_scores_are_mean_reducible_loss_over_valid_targets():
    learner = torch.tensor(
        [
            [3.0, 2.0, 5.0, 0.0],  # target 3 ignored (padding)
            [1.0, 1.0, 1.0, 1.0],  # reference missing at target 0
            [4.0, 4.0, 4.0, 4.0],  # no valid target at all
        ]
    )
    ref = torch.tensor(
        [
            [1.0, 1.0, 2.0, 9.0],
            [NAN, 0.5, 0.0, 0.5],
            [NAN, NAN, 1.0, 1.0],
        ]
    )
    targets = torch.tensor([[5, 6, 7, -100], [1, 2, 3, 4], [-100, 8, -100, -100]])
    excess = window_scores(learner, targets, ref, "excess")
    assert excess[0] == pytest.approx((2 + 1 + 3) / 3)  # padding's huge ref loss left out
    assert excess[1] == pytest.approx((0.5 + 1 + 0.5) / 3)  # NaN reference left out
    assert math.isnan(excess[2])
    assert window_scores(learner, targets, ref, "reference")[0] == pytest.approx(-4 / 3)
    # learner: no reference needed, so only ignored targets are left out
    torch.testing.assert_close(
        window_scores(learner, targets, None, "learner"), torch.tensor([10 / 3, 1.0, 4.0])
    )
    assert window_scores(None, targets, ref, "reference")[1] == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="random"):
        window_scores(learner, targets, ref, "random")


def test_top_windows_best_first_nan_last_ties_by_position_in_row_order():
    scores = torch.tensor([1.0, 3.0, NAN, 3.0, 2.0, -math.inf])
    assert top_windows(scores, 1).tolist() == [1]  # tie between rows 1 and 3: the first wins
    assert top_windows(scores, 3).tolist() == [1, 3, 4]
    assert top_windows(scores, 5).tolist() == [0, 1, 3, 4, 5]  # -inf still before NaN
    assert top_windows(scores, 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert top_windows(torch.full((4,), 7.0), 2).tolist() == [0, 1]
    assert top_windows(scores, 0).tolist() == []
    with pytest.raises(ValueError):
        top_windows(scores, 7)


def test_candidate_factor_must_be_positive():
    with pytest.raises(UserError, match="candidate_factor"):
        SelectionArguments(selection="sample", candidate_factor=0)
    sample = SelectionArguments(selection="sample", ratio=0.5)
    assert sample.selects_windows and not sample.selects_tokens and sample.needs_reference
    assert sample.ratio_at(0) == 1.0  # whole windows: every token of a kept window trains
    both = SelectionArguments(selection="sample+token", ratio=0.5)
    assert both.selects_windows and both.selects_tokens and both.ratio_at(0) == 0.5
    assert not SelectionArguments(selection="sample", score="learner").needs_reference


# --- The trainer ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Stores:
    return make_stores(tmp_path_factory.mktemp("sample"), n_docs=120, corpus_seed=3, ref_seed=321)


def sample_trainer(s: Stores, out: Path, sel: dict | None = None, data: dict | None = None, **kw):
    sel = {"selection": "sample", "candidate_factor": FACTOR, **(sel or {})}
    data = {"tokens": str(s.tokens), "preset": "tiny", "ref_losses": str(s.losses), **(data or {})}
    kw = {"per_device_train_batch_size": B, **kw}
    trainer = build_trainer(ModelDataArguments(**data), targs(out, **sel, **kw))
    # Full windows only (the store's last one is short), so token counts are exact.
    trainer.train_dataset = Subset(trainer.train_dataset, range(len(trainer.train_dataset) - 1))
    return trainer


def by_hand(trainer, candidates: dict, ratio: float) -> tuple[list[int], int]:
    """The windows RHO-LOSS keeps and the tokens the step then selects, recomputed here."""
    ids, labels = candidates["input_ids"], candidates["labels"]
    with torch.no_grad():
        logits = trainer.model(input_ids=ids).logits[:, :-1]
        learner = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none")
    excess = learner - candidates["ref_loss"][:, 1:]
    valid = (labels[:, 1:] != -100) & ~torch.isnan(candidates["ref_loss"][:, 1:])
    means = torch.where(valid, excess, 0.0).sum(-1) / valid.sum(-1)
    keep = sorted(torch.topk(means, B).indices.tolist())
    return keep, n_keep(ratio, int(valid[keep].sum()))


@pytest.mark.parametrize("selection,ratio", [("sample", 1.0), ("sample+token", 0.6)])
def test_get_batch_samples_keeps_the_best_windows_and_counts_their_tokens(
    stores, tmp_path, selection, ratio
):
    """Two micro-batches (accumulation 2) of F × B candidates each: each is replaced by its top-B
    windows by mean excess loss, and the normaliser is the count of tokens the step will select
    in the kept windows."""
    trainer = sample_trainer(
        stores, tmp_path, sel={"selection": selection, "ratio": ratio},
        gradient_accumulation_steps=2,
    )  # fmt: skip
    data, collate = trainer.train_dataset, trainer.data_collator
    assert len(trainer.get_train_dataloader()) == math.ceil(len(data) / (FACTOR * B))
    candidates = [collate([data[i] for i in range(m * 8, m * 8 + 8)]) for m in (0, 1)]
    batches, n_items = trainer.get_batch_samples(iter(candidates), 2, trainer.args.device)
    expected = 0
    for batch, cand in zip(batches, candidates, strict=True):
        keep, n_selected = by_hand(trainer, cand, ratio)
        assert batch["input_ids"].shape == (B, SEQ)
        for key in ("input_ids", "labels", "ref_loss"):
            torch.testing.assert_close(batch[key], cand[key][keep], equal_nan=True)
        expected += n_selected
    if selection == "sample":  # every valid token of the kept windows
        assert expected == sum(int(trainer._valid(b).sum()) for b in batches)
    assert n_items.item() == expected
    counters = trainer.meter.counters
    assert counters["candidate_windows"] == 2 * FACTOR * B and counters["windows_trained"] == 2 * B
    assert counters["candidate_tokens"] == 2 * FACTOR * B * SEQ
    assert counters["tokens_trained"] == 2 * B * SEQ


def test_windows_with_the_same_score_are_kept_by_position(stores, tmp_path):
    """score=reference on identical candidates: all tie, the first B rows are kept."""
    trainer = sample_trainer(stores, tmp_path, sel={"score": "reference"})
    batch = trainer.data_collator([trainer.train_dataset[5]] * (FACTOR * B))
    batch["input_ids"][:, 0] = torch.arange(FACTOR * B)  # tell the rows apart (position 0: no ref)
    (kept,), _ = trainer.get_batch_samples(iter([batch]), 1, trainer.args.device)
    assert kept["input_ids"][:, 0].tolist() == list(range(B))
    assert trainer.meter.counters["candidate_tokens"] == 0  # no learner forward for this score


def test_random_windows_need_no_forward_and_no_reference(stores, tmp_path):
    """score=random: a seeded uniform draw over the global candidates (the same for any number
    of processes), no learner forward, no reference needed."""
    data = {"ref_losses": None, "seq_len": SEQ}
    trainer = sample_trainer(stores, tmp_path, sel={"score": "random"}, data=data)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(FACTOR * B)])
    (kept,), _ = trainer.get_batch_samples(iter([batch]), 1, trainer.args.device)
    again = sample_trainer(stores, tmp_path, sel={"score": "random"}, data=data)
    (same,), _ = again.get_batch_samples(iter([batch]), 1, again.args.device)
    assert kept["input_ids"].shape == (B, SEQ) and "ref_loss" not in kept
    torch.testing.assert_close(kept["input_ids"], same["input_ids"])  # seeded
    assert trainer.meter.counters["candidate_tokens"] == 0


@pytest.mark.parametrize("selection", ["sample", "sample+token"])
def test_short_sample_training_run(stores, tmp_path, selection):
    steps = 4
    trainer = sample_trainer(stores, tmp_path, sel={"selection": selection}, max_steps=steps)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"
    logs = train_logs(tmp_path)
    assert [m["step"] for m in logs] == list(range(1, steps + 1))
    n = count_parameters(trainer.model)
    n_valid = B * (SEQ - 1)
    for m in logs:
        s = m["step"]
        assert m["windows_trained"] == B * s and m["candidate_windows"] == FACTOR * B * s
        assert m["tokens_seen"] == B * SEQ * s  # tokens trained on, not candidates
        assert m["flops_train"] == 6 * n * B * SEQ * s
        assert m["flops_candidates"] == 2 * n * FACTOR * B * SEQ * s
        assert m["flops_ref_online"] == 0 and m["train_seconds"] > 0
        expected = 1.0 if selection == "sample" else n_keep(0.6, n_valid) / n_valid
        assert m["selected_fraction"] == pytest.approx(expected)
        assert math.isfinite(m["excess_mean"])
    # An epoch is a pass of candidates: 4 steps drew 4 · F · B windows.
    assert logs[-1]["epoch"] == pytest.approx(steps / math.ceil(len(trainer.train_dataset) / 8))


def test_plain_runs_log_comparable_compute(stores, tmp_path):
    trainer = sample_trainer(stores, tmp_path, sel={"selection": "none"}, max_steps=2)
    trainer.train()
    n = count_parameters(trainer.model)
    last = train_logs(tmp_path)[-1]
    assert last["candidate_windows"] == last["windows_trained"] == 2 * B
    assert last["flops_train"] == 6 * n * 2 * B * SEQ and last["flops_candidates"] == 0


def test_online_reference_scores_the_candidates_once(stores, tmp_path):
    """An online reference scores every candidate (2·N_ref per token) and its losses travel with
    the kept rows, so sample+token selects inside them without a second reference forward."""
    data = {"ref_losses": None, "ref_model": str(stores.ref_dir), "seq_len": SEQ}
    online = sample_trainer(stores, tmp_path / "on", sel={"selection": "sample+token"}, data=data,
                            max_steps=2)  # fmt: skip
    offline = sample_trainer(stores, tmp_path / "off", sel={"selection": "sample+token"},
                             max_steps=2)  # fmt: skip
    calls = []
    hook = online.ref_model.register_forward_hook(lambda m, i, o: calls.append(i))
    online.train()
    hook.remove()
    offline.train()
    n_ref = count_parameters(online.ref_model)
    on, off = train_logs(tmp_path / "on"), train_logs(tmp_path / "off")
    assert len(calls) == 2 * FACTOR  # 2 steps × F chunks of B rows: candidates only
    for a, b in zip(on, off, strict=True):
        assert a["flops_ref_online"] == 2 * n_ref * FACTOR * B * SEQ * a["step"]
        # same reference, stored in float16 offline: the same windows and nearly the same loss
        assert a["loss_all"] == pytest.approx(b["loss_all"], abs=2e-3)
        assert a["windows_trained"] == b["windows_trained"]


def test_resume_continues_the_selection_and_the_compute(stores, tmp_path):
    kw = dict(max_steps=4, save_strategy="steps", save_steps=2)
    sample_trainer(stores, tmp_path / "whole", **kw).train()
    assert (tmp_path / "whole" / "checkpoint-2" / COMPUTE_FILE).exists()
    resumed = sample_trainer(stores, tmp_path / "resumed", **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    whole, after = train_logs(tmp_path / "whole"), train_logs(tmp_path / "resumed")
    assert [m["step"] for m in after] == [3, 4]
    for a, b in zip(whole[2:], after, strict=True):
        for key in ("loss", "loss_all", "candidate_windows", "windows_trained", "flops_train"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (key, a["step"])


# --- torchrun: the same windows for any number of processes ---------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_keep_the_windows_of_one(stores, tmp_path):
    """2 ranks × (F · 2) candidates rank together like 1 process × (F · 4): the same global
    candidates, the same chosen windows and trained rows (rank 0's share then rank 1's), the same
    token selection, losses and final weights."""
    steps = 6
    common = [
        "train",
        "--selection", "sample+token",
        "--candidate_factor", str(FACTOR),
        "--tokens", stores.tokens,
        "--ref_losses", stores.losses,
        "--preset", "tiny",
        "--use_cpu",
        "--report_to", "none",
        "--save_strategy", "no",
        "--max_steps", str(steps),
        "--logging_steps", "1",
        "--learning_rate", "3e-3",
        "--seed", "0",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    two_ranks_and_one_process(common, tmp_path)

    def load(dump, step, rank, kind=""):
        return np.load(tmp_path / dump / f"step{step:05d}-micro0-rank{rank}{kind}.npz")

    moved = False
    for step in range(steps):
        single, cand1 = load("dump1", step, 0), load("dump1", step, 0, "-candidates")
        ranks = [load("dump2", step, r) for r in (0, 1)]
        cands = [load("dump2", step, r, "-candidates") for r in (0, 1)]
        # The global candidate batch is rank 0's candidates then rank 1's: the single batch.
        assert cand1["input_ids"].shape[0] == FACTOR * 4
        np.testing.assert_array_equal(
            np.concatenate([c["input_ids"] for c in cands]), cand1["input_ids"]
        )
        for c in cands:
            np.testing.assert_array_equal(c["chosen"], cand1["chosen"])
            np.testing.assert_allclose(c["scores"], cand1["scores"], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(cand1["input_ids"][cand1["chosen"]], single["input_ids"])
        np.testing.assert_array_equal(
            np.concatenate([r["input_ids"] for r in ranks]), single["input_ids"]
        )
        np.testing.assert_array_equal(
            np.concatenate([r["selected"] for r in ranks]), single["selected"]
        )
        # rank 0 trained on a candidate of rank 1 (or the reverse): rows crossed ranks
        moved |= bool((cand1["chosen"][:2] >= FACTOR * 2).any() or (cand1["chosen"][2:] < 8).any())
    assert moved, "the global top never differed from each rank's own top"

    logs_two, logs_one = train_logs(tmp_path / "two"), train_logs(tmp_path / "one")
    assert len(logs_two) == len(logs_one) == steps
    for a, b in zip(logs_two, logs_one, strict=True):
        for key in ("loss", "loss_all", "selected_fraction", "tokens_seen", "flops_candidates"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (key, a["step"])
        assert a["windows_trained"] == 4 * a["step"] and a["candidate_windows"] == 16 * a["step"]

    from safetensors.torch import load_file

    w_two = load_file(tmp_path / "two" / "model.safetensors")
    for name, tensor in load_file(tmp_path / "one" / "model.safetensors").items():
        torch.testing.assert_close(w_two[name], tensor, rtol=1e-4, atol=2e-5, msg=name)


def test_stored_reference_losses_enter_candidate_scores_in_model_alignment(stores, tmp_path):
    """A stored loss at t is about token t; the learner's loss at t is about token t + 1. Eight
    identical candidates differ only in the stored reference loss of their last token: RHO-LOSS
    must subtract it from the learner's loss of that token (the last target) and keep the two
    windows whose last token the reference found easiest. Left unshifted, the last stored loss
    would meet no target, every window would tie, and the first two would be kept."""
    trainer = sample_trainer(stores, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[5]] * (FACTOR * B))
    ref = torch.ones(FACTOR * B, SEQ)
    ref[:, 0] = NAN  # a window start: no context, no reference loss
    easiest = [3, 6]
    ref[easiest, -1] = -20.0  # the reference found these rows' last token very easy
    batch["ref_loss"] = ref
    (kept,), _ = trainer.get_batch_samples(iter([batch]), 1, trainer.args.device)
    assert kept["ref_loss"][:, -1].tolist() == [-20.0, -20.0]

    # By hand, in model alignment: target t (token t + 1) against the stored loss at t + 1.
    ids = batch["input_ids"][:1]
    with torch.no_grad():
        logits = trainer.model(input_ids=ids).logits[0, :-1]
    learner = F.cross_entropy(logits, ids[0, 1:], reduction="none")
    means = (learner - ref[:, 1:]).mean(-1)
    assert sorted(torch.topk(means, B).indices.tolist()) == easiest
