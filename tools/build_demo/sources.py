"""Walking libraries and cleaning their docstrings: the real text the demo corpus is made of.

Owns: the skip lists (test packages, subpackages with licences of their own, standard library
modules never imported), importing a package tree in sorted order, pulling module, class,
function and method docstrings out of it, cleaning them (:func:`clean_text`) and reading raw
module source code for the noise's code dumps. Self-contained: standard library only.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

MIN_DOC_CHARS = 200
"""Docstrings shorter than this (after cleaning) are dropped."""

_SKIP_PARTS = {"tests", "test", "testing", "benchmarks", "conftest", "__main__", "setup"}
_SKIP_PREFIXES = {
    "sympy": (
        "sympy.codegen",
        "sympy.external",
        "sympy.interactive",
        "sympy.multipledispatch",
        "sympy.parsing",
        "sympy.plotting",
        "sympy.printing",
        "sympy.sandbox",
        "sympy.strategies",
        "sympy.testing",
        "sympy.unify",
        "sympy.utilities",
    ),
    "mpmath": (),
    "numpy": (
        "numpy.distutils",
        "numpy.f2py",
        "numpy.ma",  # own licence (University of Georgia); kept out for one licence per source
        "numpy.random",  # own licence (NCSA / BSD-3, Kevin Sheppard); kept out likewise
        "numpy.testing",
        "numpy.typing",
        "numpy._pyinstaller",
        "numpy.conftest",
    ),
}
# Standard library modules never imported: side effects, GUI, platform-only, test suites.
_STDLIB_SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "venv",
    "pydoc_data",
    "distutils",
    "msilib",
    "msvcrt",
    "nt",
    "winreg",
    "winsound",
}

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
_MANY_NEWLINES = re.compile(r"\n{3,}")


@dataclass
class Doc:
    """One cleaned docstring and where it came from."""

    source: str
    module: str
    name: str
    text: str


def clean_text(text: str) -> str:
    """Normalise a docstring: cleandoc, no control characters, no trailing spaces, ≤1 blank line."""
    text = inspect.cleandoc(text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def _dedupe_key(text: str) -> str:
    return " ".join(text.split()).lower()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def _import(name: str):
    try:
        with _quiet():
            return importlib.import_module(name)
    except BaseException as e:  # any failing module is skipped
        if isinstance(e, KeyboardInterrupt):
            raise
        return None


def _skipped(name: str, prefixes: tuple[str, ...]) -> bool:
    if any(part in _SKIP_PARTS for part in name.split(".")):
        return True
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def walk_modules(root: str, prefixes: tuple[str, ...] = (), limit: int | None = None) -> list:
    """Import ``root`` and its submodules depth-first in sorted (= lexicographic) order.

    Skips test packages, ``prefixes`` and anything that fails to import; stops after ``limit``
    modules. Returns the imported module objects.
    """
    out: list = []

    def visit(name: str) -> None:
        if limit is not None and len(out) >= limit:
            return
        if _skipped(name, prefixes):
            return
        mod = _import(name)
        if mod is None:
            return
        out.append(mod)
        path = getattr(mod, "__path__", None)
        if path is None:
            return
        try:
            children = sorted(info.name for info in pkgutil.iter_modules(path))
        except Exception:
            return
        for child in children:
            visit(f"{name}.{child}")

    visit(root)
    return out


def _doc_of(obj) -> str | None:
    try:
        doc = obj.__doc__
    except Exception:
        return None
    return doc if isinstance(doc, str) else None


def _module_docs(mod) -> Iterator[tuple[str, str]]:
    """(qualified name, raw docstring) of a module, its own classes, functions and methods."""
    modname = mod.__name__
    doc = _doc_of(mod)
    if doc:
        yield modname, doc
    try:
        members = sorted(vars(mod).items(), key=lambda kv: kv[0])
    except Exception:
        return
    for name, obj in members:
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) != modname:
            continue
        doc = _doc_of(obj)
        if doc:
            yield f"{modname}.{name}", doc
        if inspect.isclass(obj):
            for attr, value in sorted(vars(obj).items(), key=lambda kv: kv[0]):
                value = getattr(value, "__func__", value)
                if callable(value) or isinstance(value, property):
                    doc = _doc_of(value)
                    if doc:
                        yield f"{modname}.{name}.{attr}", doc


def collect_docs(source: str, modules: list, extra: list[tuple[str, str, str]] = ()) -> list[Doc]:
    """Cleaned docstrings of ``modules`` (and ``extra`` (module, name, doc) triples), in order,
    at least :data:`MIN_DOC_CHARS` long, deduplicated within the source."""
    docs: list[Doc] = []
    seen: set[str] = set()

    def add(module: str, name: str, raw: str) -> None:
        text = clean_text(raw)
        if len(text) < MIN_DOC_CHARS:
            return
        key = _dedupe_key(text)
        if key in seen:
            return
        seen.add(key)
        docs.append(Doc(source, module, name, text))

    for mod in modules:
        for name, raw in _module_docs(mod):
            add(mod.__name__, name, raw)
    for module, name, raw in extra:
        add(module, name, raw)
    return docs


def _mpmath_context_docs() -> list[tuple[str, str, str]]:
    """Docstrings of the functions of mpmath's ``mp`` context (most live in function_docs)."""
    import mpmath

    out = []
    for name in sorted(dir(mpmath.mp)):
        if name.startswith("_"):
            continue
        try:
            obj = getattr(mpmath.mp, name)
        except Exception:
            continue
        doc = _doc_of(obj)
        if doc and callable(obj):
            out.append(("mpmath.mp", f"mpmath.mp.{name}", doc))
    return out


def stdlib_top_names() -> list[str]:
    """Public standard library top-level module names that are safe to import, sorted."""
    names = getattr(sys, "stdlib_module_names", ())
    return sorted(n for n in names if not n.startswith("_") and n not in _STDLIB_SKIP)


def module_source(mod) -> str | None:
    """Raw source code of a module, or None (C modules, missing files)."""
    try:
        with _quiet():
            src = inspect.getsource(mod)
    except Exception:
        return None
    src = _CONTROL.sub("", src.replace("\r\n", "\n"))
    return src if len(src) >= 2000 else None
