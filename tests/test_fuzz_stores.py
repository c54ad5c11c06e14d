"""Array fuzzing of every store through every command that reads it: a tiny TokenStore (domains,
noise and loss masks), its LossStore (with entropies), an unfinished one, and a finished and an
unfinished embedding store are built once; each example copies them, damages their arrays and
metas together (.npy headers and data, truncation, dtypes, shapes, lengths, non-monotone or huge
offsets, out-of-range domains, NaN and inf, meta keys missing, odd or changed with their arrays)
and runs `rho inspect`, `rho score` (resuming), `rho train`, `rho prune`, `rho eval` or `rho
analyze html` on them in this process: each finishes or raises one one-line UserError, never
another exception. Each reader runs 10 examples by default, 1,000 with --slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from tokenize import TokenError

import numpy as np
import pytest
from helpers import make_checkpoint, rho_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rho.errors import UserError
from rho.io.store import write_token_store
from rho.scoring.windows import batch_windows

SEQ = 16
FILES = {
    "tokens": ("tokens.npy", "doc_offsets.npy", "doc_domains.npy", "noise_mask.npy",
               "loss_mask.npy", "meta.json", "tokenizer/tokenizer.json"),
    "losses": ("ref_loss.npy", "ref_entropy.npy", "meta.json"),
    "partial": ("ref_loss.npy", "ref_entropy.npy", "meta.json", "progress"),
    "emb": ("embeddings.npy", "meta.json"),
    "emb_partial": ("embeddings.npy", "meta.json", "progress"),
}  # fmt: skip
# meta.json counts that go with an array's length ("together": both change, or only one)
COUNTS = {"tokens.npy": "n_tokens", "doc_offsets.npy": "n_docs", "ref_loss.npy": "n_tokens",
          "ref_entropy.npy": "n_tokens", "embeddings.npy": "n_units"}  # fmt: skip
RUN_ID = "0123abcd"
FUZZ = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}
DTYPES = ("int64", "int32", "int16", "uint16", "uint32", "float16", "float32", "bool", ">u2",
          ">f2", "int8")  # fmt: skip
SPECIAL = (np.nan, np.inf, -np.inf, 65504.0, -1, 0, 1 << 62, np.iinfo(np.int64).max, 32767, 2)
META_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.integers(min_value=-(1 << 64), max_value=1 << 64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.lists(st.integers(-2, 2) | st.text(max_size=3), max_size=3)
    | st.sampled_from(["", "float16", "uint16", "rho.LossStore", RUN_ID, "document", "window"])
)


# --- The stores, built once ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory, token_store) -> Path:
    """root/{tokens, losses, partial, emb, emb_partial} and root/model (not damaged)."""
    root = tmp_path_factory.mktemp("fuzz-stores")
    rng = np.random.default_rng(0)
    lengths = rng.integers(6, 40, size=24)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    eos = token_store.eos_id
    tokens = rng.integers(0, token_store.vocab_size - 1, size=offsets[-1]).astype(np.uint16)
    tokens[np.where(tokens == eos)] = eos + 1
    tokens[offsets[1:] - 1] = eos
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    store = write_token_store(
        root / "stores" / "tokens",
        tokens,
        offsets,
        token_store.tokenizer_dir,
        vocab_size=token_store.vocab_size,
        eos_id=eos,
        doc_domains=np.arange(len(lengths)) % 3,
        domain_names=["a", "b", "c"],
        noise_mask=rng.random(len(tokens)) < 0.2,
        loss_mask=within >= np.repeat(lengths // 3, lengths),  # a prompt, then its response
    )
    model = make_checkpoint(root / "model", store)
    stores = root / "stores"
    common = ["--model", model, "--tokens", store.path, "--seq-len", SEQ, "--batch-size", 2]
    rho_command("score", [*common, "--out", stores / "losses", "--entropy"])
    unfinished(stores / "losses", stores / "partial")
    rho_command("prune", ["--tokens", store.path, "--by", "prototype", "--embed-model", model,
                          "--embeddings", stores / "emb", "--out", root / "pruned",
                          "--batch-size", 4, "--seq-len", SEQ, "--clusters", 3])  # fmt: skip
    unfinished(stores / "emb", stores / "emb_partial")
    return root


def unfinished(done: Path, out: Path) -> None:
    """A copy of a finished store made unfinished, as a killed run leaves it: its first half of
    batches recorded as done in a progress file of run RUN_ID, the others' values NaN."""
    shutil.copytree(done, out)
    meta = json.loads((out / "meta.json").read_text())
    for key in ("loss_hash", "entropy_hash", "embedding_hash", "finite_fraction",
                "entropy_finite_fraction", "mean_loss", "mean_entropy"):  # fmt: skip
        meta.pop(key, None)
    meta.update(complete=False, run_id=RUN_ID)
    if "n_units" in meta:  # embeddings: batch b holds rows [b*B, (b+1)*B)
        rows, size = meta["n_units"], meta["batch_size"]
        batches = [range(s, min(s + size, rows)) for s in range(0, rows, size)]
        values_of = {"embeddings.npy": lambda r: slice(r.start, r.stop)}
    else:  # losses: batch b holds windows, each seq_len values
        batches = batch_windows(meta["n_tokens"], meta["seq_len"], meta["batch_size"])
        span = lambda r: slice(r.start * meta["seq_len"], r.stop * meta["seq_len"])  # noqa: E731
        values_of = {"ref_loss.npy": span, "ref_entropy.npy": span}
    marks = np.arange(len(batches)) < len(batches) // 2
    (out / "progress").mkdir()
    np.save(out / "progress" / f"rank0-of-1-{RUN_ID}.npy", marks)
    for name, where in values_of.items():
        values = np.load(out / name)
        for batch, done_ in zip(batches, marks, strict=True):
            if not done_:
                values[where(batch)] = np.nan
        np.save(out / name, values)
    (out / "meta.json").write_text(json.dumps(meta))


# --- Damage -------------------------------------------------------------------------------------


@st.composite
def damages(draw, stores: tuple[str, ...]) -> list[tuple]:
    """One to three damages (store, file, operation, two integers, a value) to apply in order."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        store = draw(st.sampled_from(stores))
        file = draw(st.sampled_from(FILES[store]))
        if file == "meta.json":
            op = draw(st.sampled_from(("drop", "set", "count", "domains", "garbage")))
        elif file.endswith(".json"):
            op = draw(st.sampled_from(("garbage", "flip")))
        else:
            op = draw(st.sampled_from(("flip", "flip_header", "truncate", "extend", "retype",
                                       "resize", "resize_meta", "reshape", "values", "delete",
                                       "swap")))  # fmt: skip
        a, b = draw(st.integers(0, 1 << 16)), draw(st.integers(-3, 1 << 8))
        value = draw(META_VALUES) if op == "set" else draw(st.sampled_from(SPECIAL))
        out.append((store, file, op, a, b, value))
    return out


def apply(root: Path, damage: tuple) -> None:
    store, file, op, a, b, value = damage
    path = root / store / file
    if file == "progress":  # one of its record files, if any is left
        files = sorted(path.glob("*.npy")) or [path / "none"]
        path = files[a % len(files)]
    if not path.exists():
        return
    if file == "meta.json" and op != "garbage":
        damage_meta(path, op, a, b, value)
    elif op in ("flip", "flip_header", "truncate", "extend", "garbage", "delete"):
        damage_bytes(path, op, a, b)
    else:
        damage_array(path, op, a, b, value)


def damage_meta(path: Path, op: str, a: int, b: int, value) -> None:
    try:  # an earlier damage may have broken it: that is damage enough
        meta = dict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        return
    keys = sorted({*meta, "run_id", "batch_size", "complete", "domains", "n_masked_out"})
    key = a if isinstance(a, str) else keys[a % len(keys)]
    if op == "drop":
        meta.pop(key, None)
    elif op == "set":
        meta[key] = value
    elif op == "count":
        counts = [k for k in ("n_tokens", "n_docs", "n_units", "hidden", "seq_len") if k in meta]
        if counts and isinstance(meta[counts[a % len(counts)]], int):
            meta[counts[a % len(counts)]] += b
    elif op == "domains" and isinstance(meta.get("domains"), list):
        meta["domains"] = meta["domains"][: a % 3]
    path.write_text(json.dumps(meta, allow_nan=True))


def damage_bytes(path: Path, op: str, a: int, b: int) -> None:
    raw = bytearray(path.read_bytes())
    if op == "delete":
        path.unlink()
        return
    if op in ("flip", "flip_header") and raw:
        span = min(len(raw), 128) if op == "flip_header" else len(raw)
        raw[a % span] = b % 256
    elif op == "truncate":
        raw = raw[: a % (len(raw) + 1)]
    elif op == "extend":
        raw += bytes([b % 256]) * (1 + a % 64)
    elif op == "garbage":
        raw = bytearray(bytes([b % 256]) * (a % 40))
    path.write_bytes(bytes(raw))


@np.errstate(all="ignore")  # casts of NaN to integers are meant
def damage_array(path: Path, op: str, a: int, b: int, value) -> None:
    try:
        array = np.load(path)
    except Exception:  # noqa: BLE001 (an earlier damage broke it: that is damage enough)
        return
    flat = array.reshape(-1)
    n = len(flat)
    if op == "retype":
        array = array.astype(DTYPES[a % len(DTYPES)])
    elif op in ("resize", "resize_meta"):
        k = a % (n + 2)
        array = np.concatenate([flat[:k], flat[: max(0, b)]]) if array.ndim == 1 else array[:k]
        if op == "resize_meta" and path.name in COUNTS:  # the meta follows the array
            count = len(array) - (path.name == "doc_offsets.npy")
            damage_meta(path.parent / "meta.json", "set", COUNTS[path.name], 0, count)
    elif op == "reshape":
        array = flat[: n - n % 2].reshape(2, -1) if array.ndim == 1 else flat
    elif op == "swap" and n > 1:
        i, j = a % n, (a + 1 + abs(b)) % n
        flat[i], flat[j] = flat[j], flat[i]
    elif op == "values" and n:
        try:
            flat[a % n :: 1 + abs(b) % 7] = value
        except (OverflowError, ValueError):
            flat[a % n] = 1 if array.dtype == bool else np.iinfo(array.dtype).max
    np.save(path, array)


# --- Readers --------------------------------------------------------------------------------------


def argv_inspect(root: Path, model: Path, flip: bool) -> tuple[str, list]:
    paths = [root / "tokens", root / "losses", root / "partial"]
    return "inspect", [*(["--verify"] if flip else []), *paths]


def argv_score(root: Path, model: Path, flip: bool) -> tuple[str, list]:
    out = root / ("partial" if flip else "losses")
    return "score", ["--model", model, "--tokens", root / "tokens", "--out", out, "--seq-len",
                     SEQ, "--batch-size", 2, "--entropy", "--device", "cpu"]  # fmt: skip


def argv_train(root: Path, model: Path, flip: bool) -> tuple[str, list]:
    score = ["--score", "reference+entropy"] if flip else ["--score", "excess"]
    return "train", ["--tokens", root / "tokens", "--ref_losses", root / "losses", "--preset",
                     "tiny", "--seq_len", SEQ, "--max_steps", 1, "--output_dir", root / "run",
                     "--per_device_train_batch_size", 2, "--use_cpu", "--report_to", "none",
                     "--save_strategy", "no", "--disable_tqdm", "true", *score]  # fmt: skip


def argv_prune(root: Path, model: Path, flip: bool) -> tuple[str, list]:
    by = ["--unit", "window", "--by", "reference+entropy"] if flip else ["--by", "reference"]
    return "prune", ["--tokens", root / "tokens", "--losses", root / "losses", "--out",
                     root / "pruned", "--keep", 0.5, *by]  # fmt: skip


def argv_prototype(root: Path, model: Path, flip: bool) -> tuple[str, list]:
    emb = root / ("emb_partial" if flip else "emb")
    return "prune", ["--tokens", root / "tokens", "--by", "prototype", "--embed-model", model,
                     "--embeddings", emb, "--out", root / "pruned", "--batch-size", 4,
                     "--seq-len", SEQ, "--clusters", 3, "--device", "cpu"]  # fmt: skip


def argv_eval(root: Path, model: Path, flip: bool) -> tuple[str, list]:
    return "eval", ["--model", model, "--tokens", root / "tokens", "--seq-len", SEQ,
                    "--out", root / "eval", "--quiet", "--device", "cpu"]  # fmt: skip


def argv_analyze(root: Path, model: Path, flip: bool) -> tuple[str, list]:
    learner = ["--model", model] if flip else ["--score", "reference"]
    return "analyze", ["html", "--tokens", root / "tokens", "--losses", root / "losses",
                       "--out", root / "page.html", "--passages", 3, "--device", "cpu",
                       *learner]  # fmt: skip


# reader: (its argv, the stores it reads)
READERS = {
    "inspect": (argv_inspect, ("tokens", "losses", "partial")),
    "score": (argv_score, ("tokens", "losses", "partial")),
    "train": (argv_train, ("tokens", "losses")),
    "prune": (argv_prune, ("tokens", "losses")),
    "prototype": (argv_prototype, ("tokens", "emb", "emb_partial")),
    "eval": (argv_eval, ("tokens",)),
    "analyze": (argv_analyze, ("tokens", "losses")),
}


def copies(base: Path, root: Path, *stores: str) -> Path:
    for store in stores:
        shutil.copytree(base / "stores" / store, root / store)
    return root


def run_reader(base: Path, work: Path, reader: str, flip: bool, harm: list[tuple]) -> str | None:
    """Fresh copies of the stores, damaged, read by the command: None when it finishes, the
    message of the UserError it raised otherwise (any other exception propagates)."""
    shutil.rmtree(work, ignore_errors=True)
    copies(base, work, *READERS[reader][1])
    for damage in harm:
        apply(work, damage)
    name, argv = READERS[reader][0](work, base / "model", flip)
    try:
        rho_command(name, argv)
    except UserError as err:
        return str(err)
    return None


@pytest.mark.parametrize("examples", [10, pytest.param(1000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("reader", list(READERS))
def test_damaged_stores_give_one_line(base, tmp_path, reader, examples, one_thread):
    @settings(max_examples=examples, **FUZZ)
    @given(harm=damages(READERS[reader][1]), flip=st.booleans())
    def run(harm, flip):
        message = run_reader(base, tmp_path / "work", reader, flip, harm)
        assert message is None or "\n" not in message, message

    run()


# --- Targeted cases: each was a traceback, or silently used, before the loaders checked ---------


def test_a_damaged_npy_header_is_one_line_everywhere(base, tmp_path):
    """One byte of a header that numpy hands to Python's tokenizer: tokenize.TokenError."""
    root = copies(base, tmp_path, "tokens", "losses", "partial")
    for store, name in (("tokens", "doc_offsets.npy"), ("losses", "ref_loss.npy"),
                        ("partial", "ref_entropy.npy")):  # fmt: skip
        damage_bytes(root / store / name, "flip", 11, ord("("))
        with pytest.raises(TokenError):
            np.load(root / store / name, mmap_mode="r")
        for argv, reads in READERS.values():
            if store in reads:
                with pytest.raises(UserError, match=f"{name} is truncated or corrupted"):
                    rho_command(*argv(root, base / "model", store == "partial"))
        shutil.copy(base / "stores" / store / name, root / store / name)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (("meta.json", "domains", 1, 0, None), "holds domain index 2, but meta.json names 1"),
        (("doc_domains.npy", "values", 3, 100, -1), "holds domain index -1"),
        (("doc_offsets.npy", "swap", 3, 0, None), "doc_offsets.npy is not increasing"),
        (("doc_offsets.npy", "values", 5, 100, np.iinfo(np.int64).max), "is not increasing"),
        (("doc_offsets.npy", "values", 24, 100, 1 << 40), "does not span the 558 tokens"),
        (("tokens.npy", "retype", 0, 0, None), "tokens.npy is corrupted: holds a <i8 array"),
        (("noise_mask.npy", "delete", 0, 0, None), "noise_mask.npy is missing"),
        (("loss_mask.npy", "resize", 100, 0, None), "loss_mask.npy holds 100 entries"),
    ],
)
@pytest.mark.parametrize("reader", ["inspect", "prune", "eval", "analyze"])
def test_token_arrays_unlike_their_meta_are_refused(base, tmp_path, damage, message, reader):
    root = copies(base, tmp_path, "tokens", "losses")
    apply(root, ("tokens", *damage))
    with pytest.raises(UserError, match=message):
        rho_command(*READERS[reader][0](root, base / "model", False))


def test_losses_replaced_by_nan_after_scoring_are_refused(base, tmp_path):
    """The meta still records 100% finite losses: training and pruning read the values."""
    root = copies(base, tmp_path, "tokens", "losses")
    apply(root, ("losses", "ref_loss.npy", "values", 0, 0, np.nan))
    assert json.loads((root / "losses" / "meta.json").read_text())["finite_fraction"] == 1.0
    name, argv = argv_train(root, base / "model", False)
    argv[argv.index("--max_steps") + 1] = 4  # the first batches may hold only prompts
    with pytest.raises(UserError, match="a training batch has no finite reference losses"):
        rho_command(name, argv)
    with pytest.raises(UserError, match="only 0.0% of the reference losses are finite"):
        rho_command(*argv_prune(root, base / "model", False))


def test_token_ids_past_the_vocabulary_never_reach_a_model(base, tmp_path):
    root = copies(base, tmp_path, "tokens", "losses")
    apply(root, ("tokens", "tokens.npy", "values", 0, 0, np.nan))  # id 65535 at position 0
    for argv in (argv_analyze(root, base / "model", True), argv_eval(root, base / "model", 0)):
        with pytest.raises(UserError, match="token id 65535"):
            rho_command(*argv)


@pytest.mark.parametrize("value", [np.nan, 1.0])
def test_finished_embeddings_changed_since_are_never_clustered(base, tmp_path, value):
    root = copies(base, tmp_path, "tokens", "emb")
    apply(root, ("emb", "embeddings.npy", "values", 7, 6, value))
    with pytest.raises(UserError, match="embeddings do not match their hash"):
        rho_command(*argv_prototype(root, base / "model", False))
    assert not (root / "pruned").exists()


@pytest.mark.parametrize(
    ("store", "key", "argv"),
    [("emb_partial", "run_id", argv_prototype), ("partial", "batch_size", argv_score)],
)
def test_an_unfinished_store_lacking_a_meta_key_finishes(base, tmp_path, store, key, argv):
    """No run id: none of its records count, so it starts afresh; no batch size: the default."""
    root = copies(base, tmp_path, "tokens", store)
    apply(root, (store, "meta.json", "drop", key, 0, None))
    assert rho_command(*argv(root, base / "model", True)) == 0
    meta = json.loads((root / store / "meta.json").read_text())
    assert meta["complete"] is True and "run_id" not in meta
    assert not (root / store / "progress").exists()
