"""`rho experiment`'s data stage: decontaminate the held-out sets against everything trained on,
split each into validation and test, choose the tokenizer, and tokenize every split.

Writes into the stage directory: ``heldout/NAME-{validation,test}.jsonl`` and
``stores/{corpus,curated,base,mix,NAME-validation,NAME-test}``; returns the paths and the
decontamination statistics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rho.errors import UserError
from rho.experiment.decontam import NgramIndex, decontaminate, read_texts
from rho.experiment.settings import ExperimentConfig
from rho.files import sha256_file, write_text_atomic
from rho.models import PRESETS
from rho.store import TokenStore
from rho.tokenize import load_tokenizer, tokenize_corpus

SPLITS = ("validation", "test")  # of every held-out set, in this order


def inputs_key(cfg: ExperimentConfig) -> dict:
    """What the data stage reads: every input file's content hash, and its settings."""
    files = {
        role: [sha256_file(f) for f in paths]
        for role, paths in (
            ("curated", cfg.curated),
            ("corpus", cfg.corpus),
            ("base_data", cfg.base_data),
        )  # fmt: skip
    }
    files["heldout"] = {
        name: [sha256_file(f) for f in paths] for name, paths in cfg.heldout_sets().items()
    }
    settings = ("tokenizer", "vocab", "base", "decontam_threshold", "validation_fraction")
    settings += ("mix_share",)
    return {"files": files, **{k: getattr(cfg, k) for k in settings}}


def in_validation(text: str, fraction: float, salt: str = "validation") -> bool:
    """A document's split, from a stable hash of its text (the same on every machine); another
    ``salt`` gives an independent split."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=salt.encode()[:16])
    digest = digest.digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def write_docs(path: Path, texts: list[str]) -> Path:
    return write_text_atomic(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))


def tokenizer_source(cfg: ExperimentConfig) -> str | None:
    """The tokenizer to load, or None to train one on the corpus."""
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.base not in PRESETS:
        return cfg.base  # a model base brings its own tokenizer
    return None


def prepare(cfg: ExperimentConfig, directory: Path) -> dict:
    """The data stage (see the module docstring)."""
    training_side = [t for files in (cfg.curated, cfg.corpus, cfg.base_data) for f in files
                     for t in read_texts(f)]  # fmt: skip
    index = NgramIndex.build(training_side)
    del training_side
    split_files: dict[str, dict[str, str]] = {}
    decontam: dict[str, dict] = {}
    for name, files in cfg.heldout_sets().items():
        texts = [t for f in files for t in read_texts(f) if t.strip()]
        result = decontaminate(texts, index, cfg.decontam_threshold)
        decontam[name] = result.as_dict()
        kept = [t for t, keep in zip(texts, result.keep, strict=True) if keep]
        validation = [t for t in kept if in_validation(t, cfg.validation_fraction)]
        test = [t for t in kept if not in_validation(t, cfg.validation_fraction)]
        if not validation or not test:
            raise_small(name, len(texts), len(kept))
        split_files[name] = {
            split: str(write_docs(directory / "heldout" / f"{name}-{split}.jsonl", docs))
            for split, docs in zip(SPLITS, (validation, test), strict=True)
        }

    stores = directory / "stores"
    source = tokenizer_source(cfg)
    if source is None:
        corpus = tokenize_corpus(cfg.corpus, stores / "corpus", train_vocab=cfg.vocab,
                                 progress=False)  # fmt: skip
    else:
        load_tokenizer(source)  # a clear error before any work
        corpus = tokenize_corpus(cfg.corpus, stores / "corpus", tokenizer=source, progress=False)
    tok = str(corpus.tokenizer_dir)

    def store(name: str, files: list[str]) -> str:
        return str(tokenize_corpus(files, stores / name, tokenizer=tok, progress=False).path)

    paths = {"corpus": str(corpus.path), "curated": store("curated", cfg.curated)}
    if cfg.base_data:
        paths["base"] = store("base", cfg.base_data)
    for name, splits in split_files.items():
        for split, file in splits.items():
            paths[f"{name}-{split}"] = store(f"{name}-{split}", [file])
    curated = TokenStore(paths["curated"])
    repeats = mix_repeats(cfg.mix_share, corpus.n_tokens, curated.n_tokens)
    paths["mix"] = store("mix", [*cfg.corpus, *cfg.curated * repeats])
    mix = TokenStore(paths["mix"])
    return {
        "stores": paths,
        "axes": list(split_files),
        "decontamination": decontam,
        "mix": {"repeats": repeats, "share": (mix.n_tokens - corpus.n_tokens) / mix.n_tokens},
        "tokens": {k: TokenStore(p).n_tokens for k, p in paths.items()},
    }


def mix_repeats(share: float, corpus_tokens: int, curated_tokens: int) -> int:
    """How many copies of the curated data bring it closest to ``share`` of the mixed corpus."""
    if share >= 1.0:
        return 1
    return max(1, round(share * corpus_tokens / ((1.0 - share) * max(1, curated_tokens))))


def raise_small(name: str, before: int, after: int) -> None:
    raise UserError(
        f"held-out set {name!r} is too small to split into validation and test ({before} "
        f"documents, {after} after decontamination)"
    )
