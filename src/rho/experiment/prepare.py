"""`rho experiment`'s data stage: decontaminate the held-out sets against everything trained on,
split each into validation and test, choose the tokenizer, and tokenize every split.

Writes into the stage directory: ``heldout/NAME-{validation,test}.jsonl`` and
``stores/{corpus,curated,base,NAME-validation,NAME-test}``; returns the paths, the
decontamination statistics and how much of the base's text is in the corpus. The clm-mix
corpus is its own stage (``build_mix``), so changing ``mix_share`` redoes only the mix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rho.data.corpus import expand_inputs, iter_documents
from rho.data.tokenize import tokenize_corpus
from rho.data.tokenizer_setup import load_tokenizer
from rho.errors import UserError
from rho.experiment.decontam import NgramIndex, decontaminate, read_texts
from rho.experiment.inputs import heldout_sets
from rho.experiment.records import BaseOverlap, Data, Decontamination, InputFiles, Mix, Windows
from rho.io.files import write_text_atomic
from rho.io.reading import hash_dir, sha256_file
from rho.io.store import TokenStore
from rho.models import PRESETS
from rho.pruning.prune import write_windows

SPLITS = ("validation", "test")  # of every held-out set, in this order


def file_hash(path: str) -> str:
    """A file's sha256, or a directory's (an HF dataset saved with save_to_disk)."""
    return hash_dir(path) if Path(path).is_dir() else sha256_file(path)


def inputs_key(cfg) -> dict:
    """What the data stage reads from disk: every input file's content hash."""
    files = {
        role: [file_hash(f) for f in getattr(cfg, role)]
        for role in ("curated", "corpus", "base_data")
    }
    heldout = {
        name: [file_hash(f) for f in paths] for name, paths in heldout_sets(cfg.heldout).items()
    }
    return {**files, "heldout": heldout}


def texts_of(path: str) -> list[str]:
    """The documents of one input: jsonl and txt as the decontamination reads them; parquet and
    HF dataset directories through the corpus reader."""
    if Path(path).is_dir() or path.endswith(".parquet"):
        return [doc.text for doc in iter_documents(expand_inputs([path]))]
    return read_texts(path)


def in_validation(text: str, fraction: float, salt: str = "validation") -> bool:
    """A document's split, from a stable hash of its text (the same on every machine); another
    ``salt`` gives an independent split."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=salt.encode()[:16])
    digest = digest.digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def in_pick_share(text: str, share: float) -> bool:
    """A validation document set aside to pick settings on (an independent split of the
    validation documents): a ``--pick`` run's curves and target read only these, any other
    run's never do."""
    return in_validation(text, share, salt="pick")


def write_docs(path: Path, texts: list[str]) -> Path:
    return write_text_atomic(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))


def tokenizer_source(cfg) -> str | None:
    """The tokenizer to load, or None to train one on the corpus."""
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.base not in PRESETS:
        return cfg.base  # a model base brings its own tokenizer
    return None


def prepare(cfg, directory: Path) -> Data:
    """The data stage (see the module docstring); ``cfg`` is the stage's view of the config."""
    curated, corpus, base = (
        [t for f in files for t in texts_of(f)]
        for files in (cfg.curated, cfg.corpus, cfg.base_data)
    )
    index = NgramIndex.build([*curated, *corpus, *base])
    split_files, decontam = split_heldout(cfg, index, directory / "heldout")
    overlap = base_overlap(base, corpus)
    del curated, corpus, base, index
    paths, curated_files = tokenize_stores(cfg, split_files, directory)
    return Data(
        stores=paths,
        files=InputFiles(corpus=list(cfg.corpus), curated=list(curated_files)),
        axes=list(split_files),
        decontamination=decontam,
        base_overlap=overlap,
        tokens={k: TokenStore(p).n_tokens for k, p in paths.items()},
    )


def split_heldout(cfg, index: NgramIndex, directory: Path):
    """Each held-out set decontaminated against ``index`` and split by document hash into
    validation (less the pick share, or only it under --pick) and test files; returns
    {name: {split: file}} and {name: its statistics}."""
    split_files: dict[str, dict[str, str]] = {}
    decontam: dict[str, Decontamination] = {}
    for name, files in heldout_sets(cfg.heldout).items():
        texts = [t for f in files for t in texts_of(f) if t.strip()]
        result = decontaminate(texts, index, cfg.decontam_threshold)
        decontam[name] = Decontamination.model_validate(result.as_dict())
        kept = [t for t, keep in zip(texts, result.keep, strict=True) if keep]
        validation = [t for t in kept if in_validation(t, cfg.validation_fraction)]
        test = [t for t in kept if not in_validation(t, cfg.validation_fraction)]
        validation = [t for t in validation if in_pick_share(t, cfg.pick_share) == cfg.pick]
        if not validation or not test:
            raise_small(name, len(texts), len(kept))
        split_files[name] = {
            split: str(write_docs(directory / f"{name}-{split}.jsonl", docs))
            for split, docs in zip(SPLITS, (validation, test), strict=True)
        }
    return split_files, decontam


def tokenize_stores(cfg, split_files: dict, directory: Path) -> tuple[dict[str, str], list[str]]:
    """Every token store by role (the corpus's tokenizer, trained or the base's, for all);
    returns them and the curated files used (a sample of them under --curated_tokens)."""
    stores = directory / "stores"
    source = tokenizer_source(cfg)
    if source is None:
        corpus = tokenize_corpus(
            cfg.corpus, stores / "corpus", train_vocab=cfg.vocab, progress=False
        )
    else:
        load_tokenizer(source)  # a clear error before any work
        corpus = tokenize_corpus(cfg.corpus, stores / "corpus", tokenizer=source, progress=False)
    tok = str(corpus.tokenizer_dir)

    def store(name: str, files: list[str]) -> str:
        return str(tokenize_corpus(files, stores / name, tokenizer=tok, progress=False).path)

    curated = cfg.curated
    if cfg.curated_tokens and curated:
        curated = [str(curated_sample(curated, tok, cfg.curated_tokens, directory / "curated"))]
    # the self-reference arms need no curated data; a given base no base data
    roles = [("curated", curated), ("base", cfg.base_data)]
    roles += [
        (f"{name}-{split}", [file])
        for name, splits in split_files.items()
        for split, file in splits.items()
    ]
    paths = {"corpus": str(corpus.path)}
    paths.update({role: store(role, files) for role, files in roles if files})
    return paths, curated


def curated_sample(files: list[str], tokenizer: str, budget: int, directory: Path) -> Path:
    """At most ``budget`` tokens of the curated files: whole documents in a seeded order (at
    least one), written as one jsonl file."""
    texts = [t for f in files for t in texts_of(f) if t.strip()]
    lengths = [len(ids) for ids in load_tokenizer(tokenizer)(texts).input_ids]
    order = np.random.default_rng(0).permutation(len(texts))
    used = np.cumsum([lengths[i] + 1 for i in order])  # + the end-of-document token
    take = max(1, int(np.searchsorted(used, budget, side="right")))
    return write_docs(directory / "curated-sample.jsonl", [texts[i] for i in sorted(order[:take])])


def draw_windows(store: TokenStore, seq_len: int, n: int, seed: int, out: Path) -> Windows:
    """``n`` whole windows of ``store`` drawn by ``seed``: the first n of one permutation (a
    larger draw holds a smaller one), written in stream order under ``out``."""
    full = store.n_tokens // seq_len
    chosen = np.sort(np.random.default_rng(seed).permutation(full)[: min(n, full)])
    write_windows(store, out, chosen, seq_len, {"by": "draw", "seed": seed, "of": full})
    return Windows(tokens=str(out / "tokens"), windows=len(chosen), of=full)


def base_overlap(base: list[str], corpus: list[str]) -> BaseOverlap:
    """How much of the base's pretraining text is also in the corpus (whole documents, by
    exact text): the arms then continue on text the base has seen."""
    seen = {hash(t) for t in corpus}
    shared = [t for t in base if hash(t) in seen]
    return BaseOverlap(
        documents=len(shared),
        base_documents=len(base),
        corpus_documents=len(corpus),
        share_of_corpus_characters=sum(map(len, shared)) / max(1, sum(map(len, corpus))),
    )


def build_mix(cfg, data: Data, directory: Path) -> Mix:
    """The clm-mix arm's corpus: the corpus's files with the curated files repeated to bring
    them closest to ``mix_share`` of its tokens (tokenized with the data stage's tokenizer)."""
    corpus, curated = TokenStore(data.store("corpus")), TokenStore(data.store("curated"))
    repeats = mix_repeats(cfg.mix_share, corpus.n_tokens, curated.n_tokens)
    files = [*data.files.corpus, *data.files.curated * repeats]
    mix = tokenize_corpus(
        files, directory / "mix", tokenizer=str(corpus.tokenizer_dir), progress=False
    )
    share = (mix.n_tokens - corpus.n_tokens) / mix.n_tokens
    return Mix(store=str(mix.path), repeats=repeats, share=share, tokens=mix.n_tokens)


def mix_repeats(share: float, corpus_tokens: int, curated_tokens: int) -> int:
    """How many copies of the curated data bring it closest to ``share`` of the mixed corpus."""
    if share >= 1.0:
        return 1
    return max(1, round(share * corpus_tokens / ((1.0 - share) * max(1, curated_tokens))))


def raise_small(name: str, before: int, after: int) -> None:
    raise UserError(
        f"held-out set {name!r} is too small to split into validation and test ({before} "
        f"documents, {after} after decontamination): give it more documents, or a smaller "
        "--pick_share"
    )
