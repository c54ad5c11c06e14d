"""The schema layer: every JSON file rho reads is loaded here, bounded, and the values of every
JSON and YAML file (rho.io.config_file) checked against a typed schema before anything uses them.

- Files are read only when regular and no larger than their cap (``read_text_bounded``): a
  FIFO or /dev/zero is refused before reading, not read forever.
- JSON (``parse_json``, ``read_json_file``) is parsed by pydantic-core's Rust parser, which
  refuses nesting deeper than 200 levels, integers of thousands of digits and lone surrogate
  escapes (``"\\ud800"``) with an error instead of a RecursionError, a ValueError or a string
  that later breaks an encoder.
- Values are validated with pydantic v2 in strict mode (``validate``): no silent coercion
  (``"complete": "no"`` is not a boolean, ``seq_len: 1e30`` is not an integer), bounded
  integers, finite floats. ``check_fields`` validates a mapping against a dataclass's field
  types and choices (a config file against a command's options, ``--training`` against
  TrainingArguments).

Every failure is a ``UserError`` of one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import reprlib
import stat
import types
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from rho.errors import UserError

MAX_JSON_BYTES = 256 << 20  # a meta.json, eval.json or run file is a few kB
MAX_COUNT = 1 << 48  # tokens, documents, items: far beyond any real corpus
MAX_INT = 1 << 53  # the largest integer a config may hold (exact in a float)


# --- One-line errors ------------------------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 40, 40, 4, 4, 2


def show(value: Any) -> str:
    """A short, safe repr of any parsed value (a huge integer is not converted to digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        return " ".join(_REPR.repr(value).split())
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def squeeze(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(err: ValidationError, field: str | None = None) -> str:
    """The first problem of a validation error, on one line: where, what was found, why."""
    first = err.errors(include_url=False, include_context=False)[0]
    loc = [field] if field else []
    parts = [*loc, *first["loc"]]
    where = ".".join(p if p.isidentifier() or p.isdigit() else show(p) for p in map(str, parts))
    where = where or "the value"
    kind, value, why = first["type"], first["input"], squeeze(first["msg"], 100)
    if kind == "missing":
        return f"missing {where}"
    if kind.startswith(("greater_than", "less_than", "too_", "string_too_")):  # a range
        if isinstance(value, int) and value.bit_length() > 64:
            return f"{where} of {value.bit_length()} bits is out of range ({why})"
        return f"{where} {show(value)} is out of range ({why})"
    return f"{where} is {show(value)} ({why})"


# --- JSON ---------------------------------------------------------------------------------------


def parse_json(text: str | bytes, where: str) -> Any:
    """Parse JSON text; any malformed, too deep, too large or non-Unicode input is a UserError
    "WHERE: invalid JSON (reason)". NaN and Infinity are accepted (Python writes them); the
    schemas decide where they may appear."""
    try:
        return pydantic_core.from_json(text, allow_inf_nan=True)
    except ValueError as err:  # UnicodeError included
        raise UserError(f"{where}: invalid JSON ({json_reason(err)})") from None


def json_reason(err: ValueError) -> str:
    reason = squeeze(err, 120)
    if "surrogate" in reason or "hex escape" in reason:  # "\ud800" alone is not text
        return f"a lone surrogate escape, not text: {reason}"
    return reason


def read_text_bounded(path: str | Path, max_bytes: int, what: str = "") -> bytes:
    """A regular file's bytes, refused before reading when larger than ``max_bytes`` (and
    read no further than that, should it grow meanwhile)."""
    path = Path(path)
    label = f"{what} {path}".strip()
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
            raise UserError(f"{label} is not a regular file ({kind})")
        if info.st_size > max_bytes:
            raise UserError(f"{label} is too large ({info.st_size:,} bytes, at most {max_bytes:,})")
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"{label} is missing") from None
    except OSError as err:  # no permission, an I/O error
        raise UserError(f"{label} is unreadable: {squeeze(err)}") from None
    if len(raw) > max_bytes:
        raise UserError(f"{label} is too large (more than {max_bytes:,} bytes)")
    return raw


def read_json_file(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from a file; missing, oversized or damaged files are one-line UserErrors."""
    raw = read_text_bounded(path, max_bytes)
    try:
        data = pydantic_core.from_json(raw, allow_inf_nan=True)
    except ValueError as err:
        raise UserError(f"{path} is unreadable or corrupted: {json_reason(err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is corrupted: not a JSON object")
    return data


# --- Typed validation ---------------------------------------------------------------------------

STRICT = ConfigDict(strict=True, allow_inf_nan=False)


@cache
def adapter(schema) -> TypeAdapter:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return TypeAdapter(schema)
    return TypeAdapter(schema, config=STRICT)


def validate(schema, data: Any, where: str, field: str | None = None) -> Any:
    """``data`` (the value of ``field``, if named) checked against ``schema`` (a pydantic model
    or a type); a UserError "WHERE: field is VALUE (why)" otherwise. Returns the value."""
    try:
        return adapter(schema).validate_python(data)
    except ValidationError as err:
        raise UserError(f"{where}: {describe(err, field)}") from None


def _bounded(tp):
    """A field type with bounds: ints within ±MAX_INT (recursively inside lists and unions)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is int:
        return Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]
    if origin is list:
        return list[_bounded(args[0])]
    if origin in (typing.Union, types.UnionType) and args:
        return typing.Union[tuple(_bounded(a) for a in args)]  # noqa: UP007 (built at runtime)
    return tp


@cache
def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: _bounded(hints[f.name]) for f in dataclasses.fields(cls)}


def check_fields(cls, data: dict, where: str) -> dict:
    """Validate a mapping against a dataclass's field types, strictly (bounded ints, finite
    floats, booleans only as booleans), and against its choices (an Enum in the type, or a
    ``choices`` metadata key) as the flag would be; every key must be a field. A float field also
    takes a number written as text, as YAML 1.1 reads ``1e-3``. Returns the values, converted."""
    types = field_types(cls)
    unknown = sorted(str(k) for k in data if k not in types)
    if unknown:
        raise UserError(f"{where}: unknown option {unknown[0]!r}")
    out = {}
    for name, value in data.items():
        tp = types[name]
        if isinstance(value, str) and float in (tp, *typing.get_args(tp)):
            value = _float_text(value, f"{where}: {name}")
        out[name] = validate(tp, value, where, name)
        allowed = field_choices(cls).get(name)
        if allowed is not None and value is not None:
            for item in value if isinstance(value, list) else [value]:
                if item not in allowed:
                    choose = squeeze(", ".join(map(str, allowed)), 200)
                    raise UserError(f"{where}: {name} is {show(item)} (choose from {choose})")
    return out


@cache
def field_choices(cls) -> dict[str, tuple]:
    """The values each field allows, where it has a closed set: its ``choices`` metadata, or
    the values of an Enum its type names (TrainingArguments' ``IntervalStrategy | str``)."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        if "choices" in f.metadata:
            found[f.name] = tuple(f.metadata["choices"])
            continue
        enums = [t for t in (hints[f.name], *typing.get_args(hints[f.name])) if _is_enum(t)]
        if enums:
            found[f.name] = tuple(x.value for e in enums for x in e)
    return found


def _is_enum(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _float_text(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where} is {show(text)}, not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{where} is {show(text)}, not a finite number")
    return value


# --- Schemas of rho's files -------------------------------------------------------------------


class Strict(BaseModel):
    """Strict, finite, and open to keys a later version may add."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Hash = Annotated[str, Field(min_length=1, max_length=256)]  # compared, never parsed
Name = Annotated[str, Field(max_length=4096)]
Number = Annotated[float, Field(allow_inf_nan=True)] | None  # a result; null where NaN
Size = Annotated[int, Field(ge=1, le=1 << 31)]


class SourceEntry(Strict):
    path: Name | None = None
    domain: Name | None = None
    sha256: Hash | None = None


class TokenStoreMeta(Strict):
    format: Literal["rho.TokenStore"]
    version: Literal[1]
    n_tokens: Count
    n_docs: Count
    vocab_size: Annotated[int, Field(ge=1, le=1 << 32)]
    eos_id: Count
    content_hash: Hash
    tokenizer_hash: Hash | None = None
    dtype: Literal["uint16", "uint32"] | None = None
    domains: Annotated[list[Name], Field(max_length=1 << 15)] = []
    has_noise_mask: bool = False
    has_loss_mask: bool = False  # loss_mask.npy (instruction data: 1 = response token)
    max_token_id: Count = 0
    sources: list[SourceEntry] = []

    @model_validator(mode="after")
    def _eos_in_vocabulary(self):
        if self.eos_id >= self.vocab_size:
            raise ValueError(f"eos_id {self.eos_id} is outside the vocabulary {self.vocab_size}")
        return self


class LossStoreMeta(Strict):
    format: Literal["rho.LossStore"]
    version: Literal[1]
    n_tokens: Count
    seq_len: Annotated[int, Field(ge=2, le=1 << 31)]
    token_hash: Hash
    batch_size: Size = 16
    tokenizer_hash: Hash | None = None
    dtype: Literal["float16"] = "float16"
    complete: bool = False
    model: Name | None = None
    model_hash: Hash | None = None
    score_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    run_id: Annotated[str, Field(pattern=r"^[0-9a-f]{1,64}$")] | None = None  # in file names
    mean_loss: Number = None
    loss_hash: Hash | None = None
    # Added with `rho score --entropy` and loss masks; a store written before reads as neither.
    has_entropy: bool = False  # ref_entropy.npy beside ref_loss.npy
    mean_entropy: Number = None
    entropy_hash: Hash | None = None
    loss_mask: bool = False  # only the TokenStore's loss-carrying tokens were scored
    n_masked_out: Count = 0  # positions besides window starts left NaN by the loss mask
    # The finite share of the values that should be there (of a masked store, its loss
    # positions), recorded when finished; a store written before is read through once.
    finite_fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    entropy_finite_fraction: Annotated[float, Field(ge=0, le=1)] | None = None


class Metrics(Strict):
    tokens: Count
    bytes: Count
    loss: Number
    perplexity: Number
    bits_per_byte: Number


class LossResult(Strict):
    tokens: Name
    seq_len: Size
    overall: Metrics
    domains: dict[Name, Metrics] = {}


class TaskResult(Strict):
    shots: Count
    items: Count
    correct: Count
    accuracy: Number


class LmEvalResult(Strict):
    metrics: dict[Name, dict[Name, Number]] = {}


class EvalRecord(Strict):
    format: Literal["rho.eval"]
    version: Literal[1] = 1
    model: Name | None = None
    loss: dict[Name, LossResult] = {}
    tasks: dict[Name, TaskResult] = {}
    lm_eval: LmEvalResult | None = None


Scalar = str | Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)] | float


class TaskItem(Strict):
    """One line of a few-shot task file; numbers are taken as their text."""

    question: Scalar
    answer: Scalar


class ChatMessage(Strict):
    """One message of a conversation (TRL's conversational format); other keys are ignored."""

    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: str


class ChatRecord(Strict):
    """One line of `rho tokenize --format messages`."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    domain: Name | None = None


Position = Annotated[int, Field(ge=0, le=MAX_COUNT)]
NoiseSpans = list[Annotated[list[Position], Field(min_length=2, max_length=2)]] | None
