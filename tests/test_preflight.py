"""`rho experiment` refuses, in one line and before any stage trains, what would fail later:
`--training` values of the wrong type or unsupported, `--heldout` without files, models it
cannot start from, an embedding layer the base lacks, and stores shorter than one window."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import write_texts

from rho.cli import main
from rho.errors import UserError
from rho.experiment.settings import ExperimentConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("preflight-data")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(50)]

    def docs(n: int) -> list[str]:
        return [" ".join(rng.choice(words) for _ in range(60)) for _ in range(n)]

    return {
        name: str(write_texts(root / f"{name}.jsonl", docs(n)))
        for name, n in (("corpus", 30), ("base", 10), ("curated", 10), ("target", 20))
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A saved two-layer model (a model directory --base)."""
    from rho.models import build_model

    path = tmp_path_factory.mktemp("model") / "base"
    build_model("tiny", 64, max_positions=64).save_pretrained(path)
    return str(path)


def experiment(tmp_path: Path, data: dict, capsys, **options) -> str:
    """`rho experiment` with ``options`` over a small config: it must fail with one line, having
    trained nothing. Returns the line."""
    config = {
        "corpus": [data["corpus"]],
        "heldout": [f"target={data['target']}"],
        "out": str(tmp_path / "out"),
        "base": "tiny",
        "base_data": [data["base"]],
        "vocab": 300,
        "seq_len": 16,
        "batch_size": 2,
        "arms": "clm",
        "seeds": [0],
        "analyze": False,
        **options,
    }
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config))
    assert main(["experiment", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    out = tmp_path / "out"
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("checkpoint-*"))
    return err


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"bf16": "no"}, "bf16 is 'no'"),
        ({"gradient_accumulation_steps": True}, "gradient_accumulation_steps is True"),
        ({"push_to_hub": True}, "does not push to the Hub"),
        ({"hub_model_id": "me/model"}, "does not push to the Hub"),
        ({"optim": "bogus"}, "optim is 'bogus' \\(choose from"),
        ({"loss_impl": "bogus"}, "loss_impl is 'bogus'"),
        ({"ratio": 0.5}, "'ratio' is not a transformers.TrainingArguments option"),
        ('{"warmup_steps": ' + "9" * 5000 + "}", "--training is not JSON"),
        ("[" * 5000 + "]" * 5000, "--training is not JSON"),
        ("x" * 100_000, "--training is too long"),
    ],
)
def test_training_values_are_checked_strictly(training, message):
    with pytest.raises(UserError, match=message):
        ExperimentConfig(training=training)


def test_the_loss_path_is_a_training_option():
    assert ExperimentConfig(training={"loss_impl": "full"}).training == {"loss_impl": "full"}


def test_training_flag_is_one_line(capsys):
    assert main(["experiment", "--training", '{"bf16": "no"}']) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bf16 is 'no'" in err


def test_heldout_without_files_is_refused():
    with pytest.raises(UserError, match="names no file"):
        ExperimentConfig(heldout=["a=,,"])


def test_preset_reference_base_needs_base_data(tmp_path, data, model_dir, capsys):
    err = experiment(tmp_path, data, capsys, base=model_dir, base_data=[], reference_base="tiny")
    assert "--reference_base tiny is pretrained on --base_data" in err
    assert not (tmp_path / "out").exists()


def test_a_reference_base_that_is_no_model_is_refused(tmp_path, data, capsys):
    err = experiment(tmp_path, data, capsys, reference_base=str(tmp_path / "nope"))
    assert "is neither a preset" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("base", ["tiny", "model"])
def test_embed_layer_the_base_lacks(tmp_path, data, model_dir, capsys, base):
    base = model_dir if base == "model" else base
    err = experiment(tmp_path, data, capsys, base=base, arms="clm,proto-clm", embed_layer=99)
    assert "--embed_layer 99: the base has hidden states 0..2" in err
    assert not (tmp_path / "out").exists()


def test_prototype_arms_from_scratch(tmp_path, data, capsys):
    err = experiment(tmp_path, data, capsys, arms="clm,proto-clm", from_scratch=True)
    assert "embeds with a trained model: not with --from_scratch" in err
    assert not (tmp_path / "out").exists()


def test_a_corpus_shorter_than_one_window(tmp_path, data, capsys):
    """Found on the data stage's token counts, before the base is pretrained."""
    short = str(write_texts(tmp_path / "short.jsonl", ["w1 w2 w3"]))
    err = experiment(tmp_path, data, capsys, corpus=[short])
    assert "--corpus:" in err and "shorter than one window (--seq_len 16)" in err
