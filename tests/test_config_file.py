"""`--config FILE.yaml` (and `rho eval --task FILE`): only regular files, bounded before reading;
each option once; choices checked as the flag checks them; options that do not apply refused."""

from __future__ import annotations

import os

import pytest
from helpers import parse_options

from rho.cli import main
from rho.errors import UserError

SCORE = ["--tokens", "t", "--out", "o", "--model", "m"]
TRAIN = ["--tokens", "t", "--preset", "tiny", "--output_dir", "o"]


def test_devices_and_fifos_are_refused_before_reading(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer came
    for path in ("/dev/zero", fifo):
        with pytest.raises(UserError, match="is not a regular file"):
            parse_options("score", [*SCORE, "--config", path])
    with pytest.raises(UserError, match="is not a regular file \\(a directory\\)"):
        parse_options("score", [*SCORE, "--config", tmp_path])


def test_task_files_are_regular_files_too():
    from rho.evaluation.fewshot import read_task_file

    with pytest.raises(UserError, match="is not a regular file"):
        read_task_file("/dev/zero")


CONFIG_ERRORS = {
    "seq-len: 8\nseq_len: 16\n": "'seq-len' and 'seq_len' are the same option",
    "seq_len: 8\nseq_len: 16\n": "the key 'seq_len' is given twice",
    "dtype: float8\n": "dtype is 'float8' \\(choose from float32, bfloat16, float16\\)",
}


def test_score_config_keys_once_and_choices(tmp_path):
    """Each option once (either spelling, or a YAML key repeated); a choice as the flag's."""
    for text, message in CONFIG_ERRORS.items():
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(UserError, match=message):
            parse_options("score", [*SCORE, "--config", tmp_path / "c.yaml"])


@pytest.mark.parametrize("key", ["save_strategy", "optim", "lr_scheduler_type"])
def test_enum_values_in_a_config_are_one_line_like_the_flag(tmp_path, capsys, key):
    config = tmp_path / "c.yaml"
    config.write_text(f"{key}: bogus\n")
    assert main(["train", *TRAIN, "--config", str(config)]) == 2
    from_file = capsys.readouterr().err
    assert from_file.count("\n") == 1 and f"{key} is 'bogus' (choose from" in from_file
    assert main(["train", *TRAIN, f"--{key}", "bogus"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    config.write_text(f"{key}: {'steps' if key == 'save_strategy' else 'adamw_torch'}\n")
    if key != "lr_scheduler_type":
        parse_options("train", [*TRAIN, "--config", config])  # a valid value passes


def test_duplicate_keys_in_the_experiment_config(tmp_path):
    from rho.experiment.settings import load_yaml

    config = tmp_path / "c.yaml"
    config.write_text("ratio: 0.5\nbase: tiny\nratio: 0.7\n")
    with pytest.raises(UserError, match="the key 'ratio' is given twice"):
        load_yaml(config)
    config.write_text("training: {bf16: true, bf16: false}\n")
    with pytest.raises(UserError, match="the key 'bf16' is given twice"):
        load_yaml(config)


PRUNE = ["--tokens", "t", "--losses", "l", "--out", "o"]


@pytest.mark.parametrize(
    "given", [["--keep_from", "easy"], ["--seed", "3"], ["--batch_size", "4"], ["--clusters", "2"]]
)
def test_prototype_options_are_refused_with_another_by(tmp_path, given):
    with pytest.raises(UserError, match="is an option of --by prototype"):
        parse_options("prune", [*PRUNE, *given])
    config = tmp_path / "c.yaml"
    config.write_text(f"{given[0][2:]}: {given[1]}\n")
    with pytest.raises(UserError, match="is an option of --by prototype"):
        parse_options("prune", [*PRUNE, "--config", config])
    (options,) = parse_options("prune", [*PRUNE, "--by", "prototype", *given])
    assert str(getattr(options, given[0][2:])) == given[1]
    (plain,) = parse_options("prune", PRUNE)  # the defaults, not given
    assert (plain.keep_from, plain.seed, plain.batch_size, plain.embed_layer) == ("hard", 0, 16, -1)
