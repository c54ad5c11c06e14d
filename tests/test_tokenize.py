"""`rho tokenize`: every input kind, domains, noise masks, EOS packing, workers, bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import HANG_GUARD_S, SUBPROCESS_ENV, make_docs, run_rho, write_jsonl

import rho
from rho.cli import main
from rho.data import token_parts
from rho.data.token_parts import token_noise
from rho.data.tokenize import tokenize_corpus
from rho.errors import UserError
from rho.io.store import TokenStore

TEXTS = make_docs(12, seed=3)


def tokenize(inputs, out, tokenizer=None, **kwargs) -> TokenStore:
    return tokenize_corpus(
        [str(i) for i in inputs], out, tokenizer=tokenizer, progress=False, **kwargs
    )


def decoded_docs(store: TokenStore) -> list[str]:
    tok = store.tokenizer()
    offsets = store.doc_offsets
    return [
        tok.decode(store.tokens[a : b - 1]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]


def write_inputs(kind: str, where) -> list:
    where.mkdir()
    if kind == "txt":
        for i, text in enumerate(TEXTS):
            (where / f"doc{i:02d}.txt").write_text(text)
        return [where / "*.txt"]  # a glob, expanded in sorted order
    if kind == "jsonl":
        return [write_jsonl(where / "c.jsonl", [{"text": t} for t in TEXTS])]
    if kind == "jsonl.gz":
        with gzip.open(where / "c.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"body": t}) + "\n" for t in TEXTS)  # --text-field body
        return [where / "c.jsonl.gz"]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": TEXTS, "n": list(range(12))}), where / "c.parquet")
        return [where / "c.parquet"]
    import datasets

    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(where / "ds"))
    return [where / "ds"]


@pytest.mark.parametrize("kind", ["txt", "jsonl", "jsonl.gz", "parquet", "hf-dataset"])
def test_every_input_kind_gives_the_same_store(tmp_path, kind, token_store):
    inputs = write_inputs(kind, tmp_path / "in")
    field = {"text_field": "body"} if kind == "jsonl.gz" else {}
    store = tokenize(inputs, tmp_path / "out", token_store.tokenizer_dir, **field)
    assert decoded_docs(store) == TEXTS
    tokens, offsets = np.asarray(store.tokens), np.asarray(store.doc_offsets)
    # EOS after each document; doc_offsets point right after it
    np.testing.assert_array_equal(np.flatnonzero(tokens == store.eos_id), offsets[1:] - 1)
    assert store.n_docs == len(TEXTS) and store.doc_domains is None
    assert store.vocab_size == token_store.vocab_size and store.tokens.dtype == np.uint16
    reference = tokenize(
        write_inputs("jsonl", tmp_path / "ref"), tmp_path / "r", token_store.tokenizer_dir
    )
    assert store.content_hash == reference.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "r", "ref"]  # no temps


def test_loaded_tokenizer_reproduces_the_trained_store(tmp_path, corpus, token_store):
    again = tokenize([corpus], tmp_path / "again", token_store.tokenizer_dir)
    assert again.content_hash == token_store.content_hash
    assert again.meta["tokenizer_hash"] == token_store.meta["tokenizer_hash"]
    assert (again.path / "noise_mask.npy").read_bytes() == (
        token_store.path / "noise_mask.npy"
    ).read_bytes()
    assert token_store.meta["sources"][0]["sha256"]  # provenance recorded


def store_files(path) -> dict[str, bytes]:
    """Every file of a store (tokenizer and meta.json included), by relative path."""
    files = sorted(f for f in path.rglob("*") if f.is_file())
    return {str(f.relative_to(path)): f.read_bytes() for f in files}


def assert_same_store(a, b) -> None:
    files_a, files_b = store_files(a), store_files(b)
    assert sorted(files_a) == sorted(files_b)
    for name, data in files_a.items():
        assert data == files_b[name], name


@pytest.fixture
def mixed_corpus(tmp_path, corpus) -> list:
    """The session corpus (noise spans now and then) and a file of documents with per-line
    domains, some noisy: both kinds of side data a store carries."""
    lines = [
        {"text": t, "domain": ("math", "code")[i % 2]}
        | ({"noise_spans": [[2, 9]]} if i % 3 == 0 else {})
        for i, t in enumerate(make_docs(60, seed=5))
    ]
    return [corpus, write_jsonl(tmp_path / "extra.jsonl", lines)]


def test_workers_and_chunks_give_an_identical_store(
    tmp_path, monkeypatch, mixed_corpus, token_store
):
    tok = token_store.tokenizer_dir
    one = tokenize(mixed_corpus, tmp_path / "one", tok)  # one chunk, one process
    assert one.n_docs == 460 and one.domain_names == ["default", "math", "code"]
    assert one.noise_mask is not None and one.noise_mask.any()
    monkeypatch.setattr(token_parts, "CHUNK_BYTES", 2000)  # many chunks for each worker
    three = tokenize(mixed_corpus, tmp_path / "three", tok, workers=3)
    assert_same_store(one.path, three.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.jsonl", "one", "three"]


def test_ids_are_the_hf_tokenizers_and_noise_spans_change_none(tmp_path, token_store):
    """Each document's ids are what the HF tokenizer's __call__ gives it (rho reads the Rust
    backend directly; documents with noise spans go through the path that also computes
    offsets), and marking spans changes no id."""
    texts = [*TEXTS, "a <|endoftext|> inside", "x" * (token_parts.PIECE_CHARS + 5000)]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"text": t} for t in texts])
    spans = [{"text": t, "noise_spans": [[0, 3]]} if i % 2 else {"text": t}
             for i, t in enumerate(texts)]  # fmt: skip
    noisy = write_jsonl(tmp_path / "noisy.jsonl", spans)
    store = tokenize([plain], tmp_path / "p", token_store.tokenizer_dir)
    marked = tokenize([noisy], tmp_path / "n", token_store.tokenizer_dir)
    assert (store.path / "tokens.npy").read_bytes() == (marked.path / "tokens.npy").read_bytes()
    assert store.noise_mask is None and marked.noise_mask[: store.doc_offsets[2]].any()
    hf = store.tokenizer()
    for i, text in enumerate(texts):
        a, b = store.doc_offsets[i], store.doc_offsets[i + 1]
        expected = [*hf(text, add_special_tokens=False)["input_ids"], store.eos_id]
        assert store.tokens[a:b].tolist() == expected, i


def test_interrupted_run_resumes_to_the_same_store(tmp_path, monkeypatch, mixed_corpus, capsys):
    reference = tokenize_corpus([str(p) for p in mixed_corpus], tmp_path / "ref", train_vocab=300)
    monkeypatch.setattr(token_parts, "CHUNK_BYTES", 3000)
    real, calls = token_parts.write_part, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(token_parts, "write_part", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus([str(p) for p in mixed_corpus], out, train_vocab=300)
    assert not out.exists()  # nothing a later command could take for a store
    assert len(list(token_parts.parts_dir(out).glob("part-*"))) == 3
    monkeypatch.setattr(token_parts, "write_part", real)
    capsys.readouterr()
    resumed = tokenize_corpus([str(p) for p in mixed_corpus], out, train_vocab=300)
    assert "3 of them kept from an interrupted run" in capsys.readouterr().out
    assert_same_store(reference.path, resumed.path)  # the trained tokenizer was kept, too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.jsonl", "out", "ref"]


def test_parts_of_other_inputs_are_never_reused(tmp_path, monkeypatch, token_store):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_docs(80, seed=1)])
    monkeypatch.setattr(token_parts, "CHUNK_BYTES", 1000)
    real = token_parts.write_part

    def one_part_then_ctrl_c(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(token_parts, "write_part", one_part_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        tokenize([corpus], out, token_store.tokenizer_dir)
    assert len(list(token_parts.parts_dir(out).glob("part-*"))) == 1
    monkeypatch.setattr(token_parts, "write_part", real)
    write_jsonl(corpus, [{"text": t} for t in make_docs(80, seed=2)])  # the input changed
    store = tokenize([corpus], out, token_store.tokenizer_dir)
    fresh = tokenize([corpus], tmp_path / "fresh", token_store.tokenizer_dir)
    assert store.content_hash == fresh.content_hash


def test_a_slot_parses_only_its_own_chunks(tmp_path, token_store):
    """Every slot reads every record but parses only those of its chunks: a broken line in
    slot 1's chunk fails slot 1 alone (so ranks do not all parse the whole corpus)."""
    from rho.data.corpus import expand_inputs
    from rho.data.tokenize import _prepare

    lines = [json.dumps({"text": t}) for t in make_docs(20, seed=4)]
    lines[15] = "{broken"
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    sources, out = expand_inputs([str(tmp_path / "c.jsonl")]), tmp_path / "out"
    _prepare(sources, out, token_store.tokenizer_dir, None, "text")
    parts = token_parts.parts_dir(out)
    plan = {**token_parts.read_plan(parts), "chunk_bytes": 1}  # one record per chunk
    assert token_parts.encode_slot(parts, sources, "text", plan, 0, 2) == (20, 10, 0)
    with pytest.raises(UserError, match="c.jsonl:16: invalid JSON"):
        token_parts.encode_slot(parts, sources, "text", plan, 1, 2)


def test_a_bad_line_in_a_worker_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, capsys, token_store
):
    monkeypatch.setattr(token_parts, "CHUNK_BYTES", 1)  # one record per chunk
    lines = [json.dumps({"text": t}) for t in make_docs(30, seed=8)]
    lines[21] = '{"text": 5}'  # chunk 21: the second worker's
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    err = tokenize_error(capsys, tmp_path, tmp_path / "c.jsonl", "--workers", "2",
                         tokenizer=token_store.tokenizer_dir)  # fmt: skip
    assert "c.jsonl:22: field 'text' is not a string" in err


def torchrun_tokenize(*args, nproc: int = 2, env: dict | None = None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += [str(nproc), "-m", "rho", "tokenize", *map(str, args)]
    env = {**SUBPROCESS_ENV, "RHO_TOKENIZE_CHUNK_BYTES": "2500", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_even_after_a_killed_rank(
    tmp_path, mixed_corpus, token_store
):
    tok = token_store.tokenizer_dir
    one = tokenize(mixed_corpus, tmp_path / "one", tok)  # one process, one chunk
    out = tmp_path / "two"
    args = [*mixed_corpus, "--out", out, "--tokenizer", tok]
    proc = torchrun_tokenize(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "chunks on 2 processes" in proc.stdout and "kept" not in proc.stdout
    assert_same_store(one.path, out)

    # Rank 1 kills itself (SIGKILL) while writing its third part; torchrun stops rank 0.
    killed = tmp_path / "killed"
    args = [*mixed_corpus, "--out", killed, "--tokenizer", tok]
    proc = torchrun_tokenize(*args, env={token_parts.FAULT_ENV: "1:3"})
    assert proc.returncode != 0 and "SIGKILL" in proc.stderr, proc.stderr[-3000:]
    assert not killed.exists()  # nothing a later command could take for a store
    assert run_rho("inspect", killed).returncode == 2
    parts = token_parts.parts_dir(killed)
    assert len(list(parts.glob("part-*"))) >= 2 and list(parts.glob(".part-*"))  # half a part
    proc = torchrun_tokenize(*args)  # the rerun resumes
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "of them kept from an interrupted run" in proc.stdout
    assert_same_store(one.path, killed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.jsonl", "killed", "one", "two"]


@pytest.mark.slow
def test_torchrun_bad_line_on_one_rank_is_one_line_on_each(tmp_path, token_store):
    lines = [json.dumps({"text": t}) for t in make_docs(40, seed=6)]
    lines[30] = "{oops"
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = [tmp_path / "c.jsonl", "--out", out, "--tokenizer", token_store.tokenizer_dir]
    proc = torchrun_tokenize(*args, env={"RHO_TOKENIZE_CHUNK_BYTES": "1"})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rho tokenize: ")]
    assert "c.jsonl:31: invalid JSON" in errors[0] + errors[1], proc.stderr[-3000:]
    assert "rank 0 failed" in errors[0] + errors[1]  # chunk 30 is rank 0's: rank 1 says so
    assert str(Path(rho.__file__).parent) not in proc.stderr  # no traceback through rho
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]  # nothing to resume


def test_uint32_tokens_for_a_big_vocabulary(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab.update({"[UNK]": 70_000, "<eos>": 70_001})
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>").save_pretrained(
        tmp_path / "tok"
    )
    write_jsonl(tmp_path / "c.jsonl", [{"text": "w69999 w1"}, {"text": "w65536"}])
    store = tokenize([tmp_path / "c.jsonl"], tmp_path / "out", tmp_path / "tok")
    assert store.tokens.dtype == np.uint32 and store.vocab_size == 70_002
    assert store.tokens.tolist() == [69_999, 1, 70_001, 65_536, 70_001]
    assert store.doc_offsets.tolist() == [0, 3, 5]


def test_domains_once_per_input_and_per_line(tmp_path, token_store):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS[:3]])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": t, "domain": "line"} for t in TEXTS[3:5]])
    per_input = tokenize([a, b], tmp_path / "p", token_store.tokenizer_dir, domains=["web", "code"])
    assert per_input.domain_names == ["web", "code"]
    assert per_input.doc_domains.tolist() == [0, 0, 0, 1, 1]
    once = tokenize([a, b], tmp_path / "o", token_store.tokenizer_dir, domains=["all"])
    assert once.domain_names == ["all"] and once.doc_domains.tolist() == [0] * 5
    lines = tokenize([a, b], tmp_path / "l", token_store.tokenizer_dir)  # the jsonl's own field
    assert lines.domain_names == ["default", "line"]
    assert lines.doc_domains.tolist() == [0, 0, 0, 1, 1]
    assert [s["domain"] for s in per_input.meta["sources"]] == ["web", "code"]
    with pytest.raises(UserError, match="one per input"):
        tokenize([a, b], tmp_path / "x", token_store.tokenizer_dir, domains=["1", "2", "3"])


def test_token_noise_hand_checked():
    offsets = [(0, 3), (3, 4), (4, 9), (9, 10), (10, 10)]
    assert token_noise(offsets, [(5, 7)], 10).tolist() == [False, False, True, False, False]
    assert token_noise(offsets, [(3, 4)], 10).tolist() == [False, True, False, False, False]
    assert token_noise(offsets, [(2, 4)], 10).tolist() == [True, True, False, False, False]
    assert token_noise(offsets, [(4, 4), (9, 99)], 10).tolist() == [False] * 3 + [True, False]
    assert token_noise(offsets, [], 10).tolist() == [False] * 5


def test_noise_mask_marks_exactly_the_tokens_in_spans(tmp_path, monkeypatch, token_store):
    monkeypatch.setattr(token_parts, "ENCODE_BATCH", 1)  # clean batches after noisy ones too
    docs = [
        {"text": "the cat sat on the mat"},  # before the first noisy document: all clean
        {"text": "the cat XXXXXX sat on the mat", "noise_spans": [[8, 14]]},
        {"text": "XXX dog ran far XX", "noise_spans": [[0, 3], [16, 18]]},
        {"text": "a quick brown fox"},
    ]
    store = tokenize(
        [write_jsonl(tmp_path / "n.jsonl", docs)], tmp_path / "o", token_store.tokenizer_dir
    )
    tok = store.tokenizer()
    marks = np.asarray(store.noise_mask)
    for token, mark in zip(store.tokens, marks, strict=True):
        # X appears only inside the spans, so a token is noise exactly when it holds an X
        assert mark == ("X" in tok.decode([int(token)])), tok.decode([int(token)])
    assert marks.any() and not marks[np.asarray(store.tokens) == store.eos_id].any()


def test_no_temporaries_after_success_or_error(tmp_path, token_store):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": t} for t in TEXTS])
    tokenize_corpus([str(good)], tmp_path / "out", train_vocab=300, progress=False)
    before = (tmp_path / "out" / "tokens.npy").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{broken\n")  # fails late: after tokenizer training
    with pytest.raises(UserError, match="bad.jsonl:13: invalid JSON"):
        tokenize_corpus(
            [str(bad)], tmp_path / "out", train_vocab=300, overwrite=True, progress=False
        )
    assert (tmp_path / "out" / "tokens.npy").read_bytes() == before  # the old store survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "out"]


# --- Bad input: one line on stderr, exit 2, nothing written ------------------------------------


def tokenize_error(capsys, tmp_path, *args, tokenizer=None) -> str:
    tok_args = ["--tokenizer", str(tokenizer)] if tokenizer else ["--train-tokenizer", "300"]
    if "--train-tokenizer" in args:
        tok_args = []
    code = main(["tokenize", *map(str, args), "--out", str(tmp_path / "out"), *tok_args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("rho tokenize: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporaries
    return err


def test_bad_inputs(tmp_path, capsys, token_store):
    t = tmp_path
    assert "does not exist" in tokenize_error(capsys, t, t / "missing.jsonl")
    assert "no input matches" in tokenize_error(capsys, t, t / "*.nothing")
    (t / "blank.jsonl").write_text('\n{"text": "   "}\n\n')
    assert "corpus is empty" in tokenize_error(capsys, t, t / "blank.jsonl")
    (t / "nofield.jsonl").write_text('{"text": "fine"}\n{"body": "where is text"}\n')
    assert "nofield.jsonl:2: no 'text' field" in tokenize_error(capsys, t, t / "nofield.jsonl")
    (t / "badjson.jsonl").write_text('{"text": "fine"}\n\n{"text": oops}\n')
    assert "badjson.jsonl:3: invalid JSON" in tokenize_error(capsys, t, t / "badjson.jsonl")
    (t / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    assert "latin1.txt: text is not valid UTF-8" in tokenize_error(capsys, t, t / "latin1.txt")
    (t / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert "latin1.jsonl:2: text is not valid UTF-8" in tokenize_error(
        capsys, t, t / "latin1.jsonl"
    )
    (t / "spans.jsonl").write_text('{"text": "abc", "noise_spans": [1, 2]}\n')
    assert "spans.jsonl:1: 'noise_spans'" in tokenize_error(capsys, t, t / "spans.jsonl")
    (t / "broken.jsonl.gz").write_bytes(gzip.compress(b'{"text": "abc"}\n' * 100)[:40])
    assert "broken.jsonl.gz: cannot read" in tokenize_error(capsys, t, t / "broken.jsonl.gz")
    (t / "dir.txt").mkdir()  # a directory where a file is expected
    assert "dir.txt: not a dataset" in tokenize_error(capsys, t, t / "dir.txt")
    (t / "notes.docx").write_text("x")
    assert "unsupported input" in tokenize_error(capsys, t, t / "notes.docx")
    (t / "ok.jsonl").write_text('{"text": "fine words here"}\n')
    assert "exist" in tokenize_error(capsys, t, t / "ok.jsonl", tokenizer=t / "no-tokenizer")
    assert "at least 300" in tokenize_error(capsys, t, t / "ok.jsonl", "--train-tokenizer", "50")
    assert "--workers" in tokenize_error(capsys, t, t / "ok.jsonl", "--workers", "0")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_input(tmp_path, capsys):
    path = write_jsonl(tmp_path / "secret.jsonl", [{"text": "hidden"}])
    path.chmod(0)
    try:
        assert "not readable" in tokenize_error(capsys, tmp_path, path)
    finally:
        path.chmod(0o644)


def test_existing_output_is_untouched(tmp_path, capsys, token_store):
    out = shutil.copytree(token_store.path, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "new words"}])
    assert main(["tokenize", str(good), "--out", str(out), "--train-tokenizer", "300"]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    proc = run_rho(
        "tokenize", tmp_path / "missing.jsonl", "--out", tmp_path / "o", "--train-tokenizer", "300"
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("rho tokenize: error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "a\\ud800b"}', "lone surrogate"),
        ('{"text": "a\\udc00b"}', "surrogate"),
        ('{"text": "abc", "noise_spans": [[0, Infinity]]}', "'noise_spans' must be a list"),
        ('{"text": "abc", "noise_spans": [[NaN, 1]]}', "'noise_spans' must be a list"),
        ('{"text": "abc", "noise_spans": [[0, 1e300]]}', "'noise_spans' must be a list"),
        ('{"text": "abc", "domain": "\\ud800"}', "surrogate"),
        ('{"text": "abc", "x": ' + "[" * 5000 + "]" * 5000 + "}", "invalid JSON"),
        ('{"text": "abc", "x": ' + "9" * 5000 + "}", "invalid JSON"),
    ],
)
def test_hostile_corpus_lines_are_one_line(tmp_path, capsys, line, message):
    good = [json.dumps({"text": t}) for t in make_docs(3)]
    (tmp_path / "c.jsonl").write_text("\n".join([*good, line]) + "\n")
    err = tokenize_error(capsys, tmp_path, tmp_path / "c.jsonl")
    assert "c.jsonl:4:" in err and message in err, err


def test_domain_with_a_lone_surrogate_is_one_line(tmp_path, corpus):
    with pytest.raises(UserError, match="--domain 'a'... holds a lone surrogate"):
        tokenize_corpus([str(corpus)], tmp_path / "o", train_vocab=300, domains=["a\udcff"])


def test_output_below_a_file_is_one_line(tmp_path, capsys, corpus):
    (tmp_path / "afile").write_text("x")
    code = main(["tokenize", str(corpus), "--train-tokenizer", "300", "--out",
                 str(tmp_path / "afile" / "S")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "afile is a file, not a directory" in err and err.count("\n") == 1


def test_unwritable_output_directory_is_one_line(tmp_path, corpus):
    """A directory without write permission; as root (who may write there anyway), a real
    read-only filesystem: a tmpfs mounted read-only."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                  str(locked)], capture_output=True)  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only filesystem here: {mounted.stderr!r}")
    else:
        locked.chmod(0o555)
    try:
        with pytest.raises(UserError, match="read-only filesystem or no permission"):
            tokenize_corpus([str(corpus)], locked / "out", train_vocab=300, progress=False)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=True)
        else:
            locked.chmod(0o755)


def test_a_damaged_part_is_redone_and_the_others_kept(tmp_path, monkeypatch, capsys, token_store):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_docs(60, seed=9)])
    reference = tokenize([corpus], tmp_path / "ref", token_store.tokenizer_dir)
    monkeypatch.setattr(token_parts, "CHUNK_BYTES", 1000)
    real, calls = token_parts.write_part, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(token_parts, "write_part", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        tokenize([corpus], out, token_store.tokenizer_dir)
    monkeypatch.setattr(token_parts, "write_part", real)
    parts = sorted(token_parts.parts_dir(out).glob("part-*"))
    assert len(parts) == 4
    (parts[1] / "tokens.bin").write_bytes(b"\0\0")  # its bytes lost after the rename
    with pytest.raises(UserError, match="damaged .* rerun to redo it"):
        tokenize([corpus], out, token_store.tokenizer_dir)
    after = sorted(token_parts.parts_dir(out).glob("part-*"))  # the rerun made the rest
    assert (
        parts[1] not in after and len(after) > len(parts) and set(parts) - set(after) == {parts[1]}
    )
    capsys.readouterr()
    store = tokenize_corpus([str(corpus)], out, tokenizer=token_store.tokenizer_dir)
    assert f"{len(after)} of them kept from an interrupted run" in capsys.readouterr().out
    assert store.content_hash == reference.content_hash
