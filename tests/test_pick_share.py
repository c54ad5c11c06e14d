"""The pick share (rho.experiment.prepare): settings are picked on a share of the validation
documents that no other run's curves or target read, and the test set is the same either way."""

from __future__ import annotations

import json

import pytest

from rho.errors import UserError
from rho.experiment.decontam import NgramIndex
from rho.experiment.prepare import split_heldout
from rho.experiment.settings import ExperimentConfig


def docs(path) -> set[str]:
    return {json.loads(line)["text"] for line in path.read_text().splitlines()}


def split(tmp_path, name: str, **options) -> dict[str, set[str]]:
    """The data stage's validation and test documents of one held-out set of 200 documents."""
    heldout = tmp_path / "heldout.jsonl"
    texts = [f"document {i} about {'x' * (i % 7)}" for i in range(200)]
    heldout.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = ExperimentConfig(heldout=[f"math={heldout}"], **options)
    files, _ = split_heldout(cfg.view("data"), NgramIndex.build([]), tmp_path / name)
    return {split: docs(tmp_path / name / f"math-{split}.jsonl") for split in files["math"]}


def test_the_pick_share_is_a_disjoint_part_of_the_validation_documents(tmp_path):
    plain = split(tmp_path, "plain")
    target = split(tmp_path, "target", pick_share=0.3)
    pick = split(tmp_path, "pick", pick_share=0.3, pick=True)
    assert not target["validation"] & pick["validation"]  # the target never reads a pick doc
    assert target["validation"] | pick["validation"] == plain["validation"]
    assert plain["test"] == target["test"] == pick["test"]  # the test set is untouched
    share = len(pick["validation"]) / len(plain["validation"])
    assert 0.15 < share < 0.45  # about 0.3 of ~100 documents, by a hash


def test_pick_needs_a_pick_share():
    with pytest.raises(UserError, match="--pick_share"):
        ExperimentConfig(pick=True)
    with pytest.raises(UserError, match="--pick_share"):
        ExperimentConfig(pick_share=1.0)
