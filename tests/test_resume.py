"""A resumed `rho train` continues what its checkpoint trained, or is refused in one line naming
the difference (issue 34); rho_options.json is one typed model (rho.training.run_options) for its
writer
and every reader; damaged run files are one-line errors; tokenize parts resume on content."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import markov_docs, targs, write_texts

from rho.cli import main
from rho.errors import UserError
from rho.training.options import ModelDataArguments, SelectionArguments
from rho.training.run_options import DataOptions, RunOptions, SelectionOptions, read_run_options
from rho.training.runs import (
    MANIFEST_FILE,
    METRICS_FILE,
    OPTIONS_FILE,
    prepare_run_dir,
    run_checkpoints,
    write_manifest,
)

SEQ = 32


def train(stores, out: Path, **options) -> list[str]:
    """`rho train` argv: 2 steps of a tiny plain CLM on the shared tokens, a checkpoint at step
    2; ``options`` (flag names without the dashes) change or add options, None drops one."""
    base = dict(
        tokens=stores.tokens, preset="tiny", seq_len=SEQ, selection="none", output_dir=out,
        per_device_train_batch_size=2, use_cpu=True, report_to="none", disable_tqdm="true",
        dataloader_num_workers=0, max_steps=2, save_steps=2, learning_rate=1e-3,
    )  # fmt: skip
    argv = ["train"]
    for name, value in {**base, **options}.items():
        if value is not None:
            argv += [f"--{name}"] + ([] if value is True else [str(value)])
    return argv


def slm(stores) -> dict:
    return dict(selection="token", ref_losses=stores.losses)


RESUME = dict(max_steps=4, resume_from_checkpoint="last")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def refused(capsys, argv: list[str], *needles: str) -> str:
    """`rho ARGV` in this process: exit 2, one line on stderr holding every needle."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rho train: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def other(stores, tmp_path_factory):
    """Other data of the same vocabulary: a TokenStore of other text (same tokenizer) and a
    second LossStore of the shared tokens, from another reference model."""
    from rho.data.tokenize import tokenize_corpus
    from rho.models import build_model
    from rho.scoring.score import score_store

    root = tmp_path_factory.mktemp("other")
    corpus = write_texts(root / "c.jsonl", markov_docs(150, seed=11))
    tokens = tokenize_corpus(
        [str(corpus)], root / "tokens", tokenizer=stores.store.tokenizer_dir, progress=False
    )
    ref = build_model("tiny", stores.vocab, seed=77)
    score_store(ref, stores.store, root / "losses", SEQ, dtype="float32", progress=False)
    return tokens.path, root / "losses"


@pytest.fixture(scope="module")
def runs(stores, tmp_path_factory):
    """Two finished runs with a checkpoint at step 2: plain CLM and SLM."""
    root = tmp_path_factory.mktemp("runs")
    assert main(train(stores, root / "clm")) == 0
    assert main(train(stores, root / "slm", **slm(stores))) == 0
    return root / "clm", root / "slm"


# --- A resume continues what its checkpoint trained ---------------------------------------------


@pytest.mark.slow
def test_resume_with_the_same_options_continues_and_records_what_it_trained(stores, tmp_path):
    out = tmp_path / "run"
    assert main(train(stores, out, **slm(stores))) == 0
    assert main(train(stores, out, **slm(stores), **RESUME)) == 0
    assert [step for step, _ in run_checkpoints(out)] == [2, 4]
    options = read_run_options(out / OPTIONS_FILE)
    assert options.version == 2 and options.seq_len == SEQ
    assert options.tokens_hash == stores.store.meta["content_hash"]
    assert (
        options.ref_losses_hash
        == json.loads((stores.losses / "meta.json").read_text())["loss_hash"]
    )
    assert options.architecture["hidden_size"] == 32 and options.distributed.world_size == 1
    assert options.selection.ratio == 0.6 and options.data.ref_losses == str(stores.losses)


CLM_CASES = {
    "tokens": (lambda o: dict(tokens=o[0]), "holds other tokens than the checkpoint"),
    "seq_len": (lambda o: dict(seq_len=16), "--seq_len is 16, the checkpoint trained with 32"),
    "preset": (lambda o: dict(preset="300k"), "--preset 300k is another model"),
    "selection": (
        lambda o: dict(selection="sample", score="learner"),
        "--selection is sample, the checkpoint trained with none",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CLM_CASES))
def test_resume_of_other_data_or_model_is_refused(case, runs, stores, other, capsys):
    clm, _ = runs
    change, message = CLM_CASES[case]
    before = snapshot(clm)
    argv = train(stores, clm, **change(other), **RESUME)
    refused(capsys, argv, "cannot resume from", "checkpoint-2", message, "--overwrite")
    assert snapshot(clm) == before  # nothing cut back, nothing trained


SLM_CASES = {
    "ratio": (lambda o: dict(ratio=0.5), "--ratio is 0.5, the checkpoint trained with 0.6"),
    "score": (lambda o: dict(score="reference"), "--score is reference"),
    "ref_losses": (lambda o: dict(ref_losses=o[1]), "is not the LossStore the checkpoint"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SLM_CASES))
def test_resume_of_another_selection_or_reference_is_refused(case, runs, stores, other, capsys):
    _, slm_run = runs
    change, message = SLM_CASES[case]
    before = snapshot(slm_run)
    argv = train(stores, slm_run, **{**slm(stores), **change(other)}, **RESUME)
    refused(capsys, argv, "cannot resume from", message)
    assert snapshot(slm_run) == before


@pytest.mark.slow
def test_resume_from_an_older_or_damaged_record_is_refused(runs, stores, tmp_path, capsys):
    """A checkpoint whose rho_options.json predates the identity fields cannot be checked: one
    line; a damaged one: one line naming the file."""
    clm = tmp_path / "clm"
    shutil.copytree(runs[0], clm)
    record = clm / "checkpoint-2" / OPTIONS_FILE
    older = json.loads(record.read_text())
    for key in ("version", "tokens_hash", "ref_losses_hash", "architecture"):
        del older[key]
    record.write_text(json.dumps(older))
    write_manifest(record.parent, 2)  # still whole: only its record is older
    assert read_run_options(record).tokens_hash is None  # an older file reads, as "not recorded"
    argv = train(stores, clm, **RESUME)
    refused(capsys, argv, "does not record what it trained on", "--overwrite")
    record.write_text('{"selection": {"selection": "token", "ratio": "x"}}')
    write_manifest(record.parent, 2)
    refused(capsys, argv, f"{record} is damaged", "selection")


# --- rho_options.json: one model ----------------------------------------------------------------


def test_run_options_mirror_the_option_dataclasses():
    """Every selection and data option is recorded, each a required field (no reader restates
    a default)."""
    pairs = ((SelectionOptions, SelectionArguments), (DataOptions, ModelDataArguments))
    for model, options in pairs:
        assert set(model.model_fields) == {f.name for f in dataclasses.fields(options)}
        assert all(field.is_required() for field in model.model_fields.values())
    assert RunOptions.model_fields["selection"].is_required()


def test_the_record_of_options_given_from_python(stores, tmp_path):
    from rho.training.train import build_trainer

    data = ModelDataArguments(tokens=Path(stores.tokens), preset="tiny", seq_len=SEQ)
    record = build_trainer(data, targs(tmp_path / "run", selection="none")).rho_options
    assert record.data.tokens == str(stores.tokens) and record.ref_losses_hash is None
    assert record.tokens_hash == stores.store.meta["content_hash"] and record.seq_len == SEQ
    assert RunOptions.model_validate(record.to_json()) == record  # written as it is read


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"selection": 5}', "selection"),
        ('{"selection": {"selection": "token"}}', "missing selection.ratio"),
        ("[1, 2]", "not a JSON object"),
        ('{"selection": {}, "seq_len": Infinity}', "selection"),
        (b'{"selection": "\xff"}', "rho_options.json"),
    ],
)
def test_a_damaged_options_file_is_one_line_for_analyze_selection(tmp_path, text, needle, capsys):
    run = tmp_path / "run"
    run.mkdir()
    data = text if isinstance(text, bytes) else text.encode()
    (run / OPTIONS_FILE).write_bytes(data)
    write_manifest(run, 0, [])  # a whole (empty) model: the options file is read
    capsys.readouterr()
    argv = ["analyze", "selection", "--runs", str(run), str(run), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


# --- Damaged run files on resume ------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_log_and_manifest_are_no_traceback_on_resume(runs, stores, tmp_path, capsys):
    clm = tmp_path / "clm"
    shutil.copytree(runs[0], clm)
    log = clm / METRICS_FILE
    log.write_bytes(log.read_bytes() + b'{"step": 1, "x": "\xff\xfe"}\n')
    manifest = clm / "checkpoint-2" / MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('"step": 2', '"step": Infinity'))
    refused(capsys, train(stores, clm, **RESUME), "holds no whole checkpoint")
    with pytest.raises(UserError, match="is not whole: rho_manifest.json is damaged"):
        prepare_run_dir(clm, str(clm / "checkpoint-2"), False)
    manifest.write_text(manifest.read_text().replace('"step": Infinity', '"step": 2'))
    assert prepare_run_dir(clm, "last", False) == str(clm / "checkpoint-2")
    assert b"\xff" not in log.read_bytes()  # the damaged line: replaced, no traceback


# --- Tokenize parts resume on the input's content ------------------------------------------------


def test_parts_of_a_dataset_edited_in_place_are_not_reused(tmp_path, monkeypatch, token_store):
    """An HF dataset directory changed in place, sizes and modification times restored: the
    parts of the killed run are not reused (they once were: 174,489 tokens, not 175,406)."""
    import datasets

    from rho.data import token_parts
    from rho.data.tokenize import tokenize_corpus

    ds = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": markov_docs(80, seed=1)}).save_to_disk(str(ds))
    monkeypatch.setattr(token_parts, "CHUNK_BYTES", 1000)
    real = token_parts.write_part

    def one_part_then_ctrl_c(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    out, tokenizer = tmp_path / "out", token_store.tokenizer_dir
    monkeypatch.setattr(token_parts, "write_part", one_part_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus([str(ds)], out, tokenizer=tokenizer, progress=False)
    assert len(list(token_parts.parts_dir(out).glob("part-*"))) == 1
    monkeypatch.setattr(token_parts, "write_part", real)
    (arrow,) = ds.glob("*.arrow")
    times = {p: os.stat(p) for p in ds.iterdir()}
    data = arrow.read_bytes()
    at = data.index(b".")  # the end of the first document
    arrow.write_bytes(data[: at - 1] + b"Z" + data[at:])  # its last letter changed: same size
    for path, st in times.items():
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert all(os.stat(p).st_mtime_ns == st.st_mtime_ns for p, st in times.items())
    store = tokenize_corpus([str(ds)], out, tokenizer=tokenizer, progress=False)
    fresh = tokenize_corpus([str(ds)], tmp_path / "fresh", tokenizer=tokenizer, progress=False)
    assert store.content_hash == fresh.content_hash
    assert store.meta["sources"][0]["sha256"]  # a directory's content is recorded too
