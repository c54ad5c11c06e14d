"""YAML files rho reads (``--config FILE.yaml`` of every command, the experiment's shipped
configs), loaded bounded and checked before anything uses them.

- ``read_yaml_file`` composes one document with a SafeLoader, then refuses it when it is larger
  than ``MAX_YAML_BYTES`` (a regular file only: /dev/zero or a FIFO is refused before reading),
  deeper than ``MAX_DEPTH``, holds a cycle, repeats a key in one mapping, or would expand
  (through anchors and aliases) to more than ``MAX_YAML_NODES`` values: a 700-byte "billion
  laughs" is a one-line error, not 3.5 GB.
- ``read_config`` reads an ``option: value`` mapping for options dataclasses: every key must be
  an option (either spelling, once), every value is checked against its field
  (``rho.io.schema.check_fields``: strict types, bounded integers, choices).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from rho.errors import UserError
from rho.io.schema import check_fields, read_text_bounded, squeeze

MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # values after expanding aliases
MAX_DEPTH = 64


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader; ``parse_yaml`` checks the composed node graph before any value is
    constructed (aliases in PyYAML share one object, but anything that walks the result, a
    hash or a JSON dump, expands them)."""


def check_yaml_nodes(root: yaml.Node, where: str) -> None:
    """Refuse a node graph that expands to more than MAX_YAML_NODES values, nests deeper than
    MAX_DEPTH, refers to itself or repeats a key. Iterative, and linear in the distinct nodes."""
    expanded: dict[int, int] = {}  # id(node) -> values it expands to
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    open_nodes: set[int] = set()
    while stack:
        node, depth, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            total = 1 + sum(expanded[id(child)] for child in _children(node))
            if total > MAX_YAML_NODES:
                raise UserError(
                    f"{where}: expands to more than {MAX_YAML_NODES:,} values (anchors and "
                    "aliases repeated over and over?)"
                )
            expanded[key] = total
            continue
        if key in expanded:
            continue
        if key in open_nodes:
            raise UserError(f"{where}: an alias refers to a value that contains it (a cycle)")
        if depth > MAX_DEPTH:
            raise UserError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        check_unique_keys(node, where)
        open_nodes.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node))


def check_unique_keys(node: yaml.Node, where: str) -> None:
    """A key written twice in one mapping: YAML says it is an error, PyYAML keeps the last."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode):
            if (key.tag, key.value) in seen:
                raise UserError(f"{where}: the key {squeeze(key.value, 40)!r} is given twice")
            seen.add((key.tag, key.value))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def parse_yaml(text: str, where: str) -> Any:
    """One YAML document, bounded (see ``check_yaml_nodes``), with safe types only."""
    loader = None
    try:
        loader = BoundedLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        check_yaml_nodes(node, where)
        return loader.construct_document(node)
    except UserError:
        raise
    except yaml.YAMLError as err:
        raise UserError(f"{where} is not valid YAML: {squeeze(err)}") from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. an integer of 5,000 digits
        raise UserError(f"{where}: a value cannot be read ({squeeze(err, 100)})") from None
    except RecursionError:  # the composer recurses: nesting deeper than the interpreter allows
        raise UserError(f"{where}: nested far too deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path, max_bytes: int = MAX_YAML_BYTES, what: str = "") -> Any:
    raw = read_text_bounded(path, max_bytes, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path}: not valid UTF-8 (byte {err.start})".strip()) from None
    return parse_yaml(text, f"{what} {path}".strip())


def options(cls) -> list[dataclasses.Field]:
    """The fields of an options dataclass that are options (not set by the command)."""
    return [f for f in dataclasses.fields(cls) if f.init and "set_by" not in f.metadata]


def read_config(path: str | Path, classes: tuple[type, ...], see: str = "") -> dict:
    """The values of a config file (``option: value``, either spelling of each option) for the
    options dataclasses ``classes``, each checked against its field. ``see``: where the options
    are listed, for the error of an unknown key."""
    where = f"config {path}"
    data = read_yaml_file(path, what="config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of option: value")
    names: dict[str, Any] = {}
    for key in data:
        name = str(key).replace("-", "_")
        if name in names:
            raise UserError(f"{where}: {names[name]!r} and {key!r} are the same option")
        names[name] = key
    owner = {f.name: cls for cls in classes for f in options(cls)}
    unknown = [repr(k) for k in names if k not in owner]
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        also = f" (see {see})" if see else ""
        raise UserError(f"{where}: unknown option{s} {', '.join(unknown)}{also}")
    values = {}
    for cls in classes:
        mine = {k: data[names[k]] for k in names if owner[k] is cls}
        values |= check_fields(cls, mine, where) if mine else {}
    return values
