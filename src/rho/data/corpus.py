"""Corpus files -> documents: ``.txt`` (one document per file), ``.jsonl`` / ``.jsonl.gz`` (one
document per line, text under ``text_field``; an optional ``domain`` string and ``noise_spans``
list of [start, end) character spans per line), ``.parquet`` (a text column), or a directory
written by HF ``datasets.save_to_disk``. Globs are expanded. Bad input is a one-line UserError.
"""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rho.errors import UserError
from rho.io.files import one_line
from rho.io.schema import Name, NoiseSpans, parse_json, validate

DomainName = Name | None


@dataclass
class Document:
    text: str
    domain: str | None = None
    noise_spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Source:
    path: Path
    domain: str | None = None


# One input record: its size in bytes, and a call that parses it into a Document (None: blank).
Record = tuple[int, Callable[[], Document | None]]


def expand_inputs(inputs: list[str], domains: list[str] | None = None) -> list[Source]:
    """Expand globs; pair each input with its domain (one --domain for all, or one per input)."""
    domains = list(domains or [])
    if domains and len(domains) not in (1, len(inputs)):
        raise UserError(f"give one --domain for all inputs or one per input ({len(inputs)})")
    sources = []
    for i, pattern in enumerate(inputs):
        domain = domains[0] if len(domains) == 1 else (domains[i] if domains else None)
        check_unicode(domain, "--domain")
        check_unicode(pattern, "an input path")  # recorded in the store's meta.json
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"no input matches {pattern!r}")
        for match in matches:
            path = Path(match)
            if not path.exists():
                raise UserError(f"input {path} does not exist")
            if not os.access(path, os.R_OK):
                raise UserError(f"input {path} is not readable")
            sources.append(Source(path, domain))
    if not sources:
        raise UserError("no inputs given")
    return sources


def check_unicode(text: str | None, what: str) -> None:
    """Text that cannot be written as UTF-8 (lone surrogates: from an escape, or from bytes of a
    command line that were not UTF-8) is a one-line error, before it reaches a tokenizer or a
    JSON file."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UserError(
            f"{what} {text[: min(err.start, 40)]!r}... holds a lone surrogate"
        ) from None


def _decode(raw: bytes, path: Path, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"{where}: text is not valid UTF-8 (byte {err.start})") from None


def parse_record(raw: bytes, path: Path, number: int, text_field: str) -> tuple[dict, str]:
    """One jsonl line: its record and text, or a one-line UserError naming ``path:number``.
    The bounded parser (rho.io.schema) refuses deep nesting, huge integers and lone surrogates."""
    record = parse_json(_decode(raw, path, number), f"{path}:{number}")
    if not isinstance(record, dict) or text_field not in record:
        raise UserError(f"{path}:{number}: no {text_field!r} field")
    text = record[text_field]
    if not isinstance(text, str):
        raise UserError(f"{path}:{number}: field {text_field!r} is not a string")
    return record, text


def _read_jsonl(path: Path, text_field: str, domain: str | None) -> Iterator[Record]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if raw.strip():
                    yield len(raw), partial(_jsonl_document, raw, path, number, text_field, domain)
    except (OSError, EOFError, zlib.error) as err:  # also a corrupted or truncated .gz
        raise UserError(f"{path}: cannot read ({one_line(err)})") from None


def _jsonl_document(
    raw: bytes, path: Path, number: int, text_field: str, domain: str | None
) -> Document | None:
    record, text = parse_record(raw, path, number, text_field)
    line_domain = validate(DomainName, record.get("domain"), f"{path}:{number}", "domain")
    spans = record.get("noise_spans")
    if spans:  # a list of [start, end] pairs of non-negative integers
        why = f"{path}:{number}: 'noise_spans' must be a list of [start, end] pairs"
        spans = validate(NoiseSpans, spans, why, "noise_spans")
    return _document(text, domain or line_domain, [(a, b) for a, b in spans or []])


def _document(text: str, domain: str | None = None, spans=()) -> Document | None:
    """A Document, or None for blank text (not a document)."""
    return Document(text, domain, list(spans)) if text.strip() else None


def _read_table(path: Path, text_field: str, domain: str | None) -> Iterator[Record]:
    """A parquet file, or a directory saved by HF datasets (first split if a DatasetDict)."""
    if path.is_dir():
        import datasets  # deferred: importing datasets costs ~1 s, and only dataset dirs need it

        try:
            data = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises several types for a bad directory
            raise UserError(
                f"{path}: not a dataset saved with save_to_disk ({one_line(err, 120)})"
            ) from None
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else data[next(iter(data))]
        if text_field not in data.column_names:
            raise UserError(f"{path}: no {text_field!r} column (has {data.column_names})")
        batches = (batch[text_field] for batch in data.iter(batch_size=1024))
    else:
        try:
            table = pq.ParquetFile(path)
        except Exception as err:
            raise UserError(f"{path}: not a readable parquet file ({one_line(err, 120)})") from None
        if text_field not in table.schema_arrow.names:
            raise UserError(f"{path}: no {text_field!r} column (has {table.schema_arrow.names})")
        batches = (
            b.column(0).to_pylist()
            for b in table.iter_batches(batch_size=1024, columns=[text_field])
        )
    try:
        for batch in batches:
            for text in batch:
                if text is not None and not isinstance(text, str):
                    raise UserError(f"{path}: column {text_field!r} is not text")
                if text is not None:
                    yield len(text), partial(_document, text, domain)
    except (OSError, pa.ArrowException) as err:  # a damaged file fails while reading batches
        raise UserError(f"{path}: cannot read ({one_line(err, 120)})") from None


def _read_txt(path: Path, domain: str | None) -> Document | None:
    try:
        return _document(_decode(path.read_bytes(), path), domain)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({one_line(err)})") from None


def read_records(source: Source, text_field: str = "text") -> Iterator[Record]:
    """The records of one input, in order (a jsonl line, a table row, a text file), each with
    its size in bytes and parsed only when called: a Document, or None when it holds none
    (blank text). A process that shares a corpus with others reads every record but parses
    only its own."""
    path, name = source.path, source.path.name
    if path.is_dir() or name.endswith(".parquet"):
        yield from _read_table(path, text_field, source.domain)
    elif name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        yield from _read_jsonl(path, text_field, source.domain)
    elif name.endswith((".txt", ".md")):
        yield path.stat().st_size, partial(_read_txt, path, source.domain)
    else:
        raise UserError(f"{path}: unsupported input (use .txt, .jsonl, .parquet or a dataset dir)")


def iter_records(sources: list[Source], text_field: str = "text") -> Iterator[Record]:
    for source in sources:
        yield from read_records(source, text_field)


def read_documents(source: Source, text_field: str = "text") -> Iterator[Document]:
    for _, parse in read_records(source, text_field):
        doc = parse()
        if doc is not None:
            yield doc


def iter_documents(sources: list[Source], text_field: str = "text") -> Iterator[Document]:
    for source in sources:
        yield from read_documents(source, text_field)
