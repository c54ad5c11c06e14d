"""The last step of a tokenize run: its parts (rho.data.token_parts), each checked against its
record,
concatenated in chunk order into the raw arrays the TokenStore is written from."""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rho.data.token_parts import TokenizePart, part_path
from rho.errors import UserError
from rho.io.files import read_json, remove_path
from rho.io.schema import validate


class DamagedPart(UserError):
    """A part whose files do not match its record; the other parts are kept for the rerun."""

    bad_input = False


@dataclass
class Assembled:
    tokens: Path  # raw ids of every chunk, in order
    lengths: np.ndarray  # tokens per document
    domains: np.ndarray  # per document, into names
    names: list[str]
    noise: Path | None  # raw bools per token, or None


def _read_part(path: Path, itemsize: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """A part's record, lengths and domain codes, checked against its files: a damaged part is
    removed (a rerun redoes it) and refused in one line."""
    try:
        info = validate(TokenizePart, read_json(path / "part.json"), f"{path}/part.json")
        lengths = np.load(path / "lengths.npy", allow_pickle=False)
        codes = np.load(path / "domains.npy", allow_pickle=False)
        sizes = {
            "tokens.bin": info.n_tokens * itemsize,
            "noise.bin": info.n_tokens if info.noise else None,
        }
        ok = (
            lengths.shape == (info.n_docs,) and lengths.dtype == np.int64
            and codes.shape == (info.n_docs,) and codes.dtype == np.int32
            and int(lengths.sum()) == info.n_tokens and bool((lengths >= 1).all())
            and bool(((codes >= 0) & (codes < len(info.domains))).all())
            and all((path / n).is_file() and (path / n).stat().st_size == s
                    for n, s in sizes.items() if s is not None)
        )  # fmt: skip
    except (UserError, ValueError, OSError) as err:
        ok, why = False, err
    else:
        why = "its files do not match its record"
    if not ok:
        remove_path(path)
        raise DamagedPart(f"{path} was damaged ({why}) and is removed: rerun to redo it")
    return info.model_dump(), lengths, codes


def assemble(parts: Path, plan: dict, n_chunks: int) -> Assembled:
    """Every chunk's part, in chunk order, into ``tokens.raw`` (and ``noise.raw``) in ``parts``;
    domain names numbered in order of first appearance, as one pass over the corpus would."""
    paths = [part_path(parts, c, plan["run_id"]) for c in range(n_chunks)]
    missing = sum(not p.is_dir() for p in paths)
    if missing:
        raise RuntimeError(f"{missing} of {n_chunks} chunks were not tokenized: rerun to finish")
    itemsize = np.dtype(plan["dtype"]).itemsize
    read = [_read_part(p, itemsize) for p in paths]
    any_noise = any(info["noise"] for info, _, _ in read)
    names: dict[str, int] = {}
    domains = []
    noise_path = parts / "noise.raw" if any_noise else None
    with (
        open(parts / "tokens.raw", "wb") as tokens,
        open(noise_path, "wb") if any_noise else nullcontext() as noise,
    ):
        for path, (info, _, codes) in zip(paths, read, strict=True):
            with open(path / "tokens.bin", "rb") as f:
                shutil.copyfileobj(f, tokens, 1 << 22)
            if any_noise and info["noise"]:
                with open(path / "noise.bin", "rb") as f:
                    shutil.copyfileobj(f, noise, 1 << 22)
            elif any_noise:
                for done in range(0, info["n_tokens"], 1 << 24):  # a clean part: all False
                    noise.write(bytes(min(1 << 24, info["n_tokens"] - done)))
            local = [names.setdefault(n, len(names)) for n in info["domains"]]
            domains.append(np.asarray(local, dtype=np.int64)[codes] if len(codes) else codes)
    return Assembled(
        parts / "tokens.raw",
        np.concatenate([np.zeros(0, np.int64), *(lengths for _, lengths, _ in read)]),
        np.concatenate([np.zeros(0, np.int64), *domains]),
        list(names),
        noise_path,
    )
