"""Gathering every source the builder reads, in a fresh interpreter, deterministically.

Owns: running the collection of :mod:`sources` in a subprocess (so the corpus does not depend
on what the calling process imported), the math / standard library / NumPy groups with the
standard library's seeded split into a "general" part and a "noise" part, deduplication
across sources, the per-source counts, and the library versions recorded in SOURCES.json.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from .sources import (
    _SKIP_PREFIXES,
    Doc,
    _dedupe_key,
    _mpmath_context_docs,
    collect_docs,
    module_source,
    stdlib_top_names,
    walk_modules,
)

STDLIB_NOISE_FRACTION = 0.2
"""Fraction of standard library top-level modules whose text feeds the noise, not "general"."""


def _versions() -> dict[str, str]:
    import mpmath
    import numpy
    import sympy

    return {
        "python": platform.python_version(),
        "platform": sys.platform,
        "sympy": sympy.__version__,
        "mpmath": mpmath.__version__,
        "numpy": numpy.__version__,
    }


def gather_sources(seed: int, max_modules: int | None = None, isolated: bool = True) -> dict:
    """Import the libraries and collect everything the builder reads, deterministically.

    With ``isolated`` (the default) this runs in a fresh interpreter: what a process imported
    before can change what it sees (e.g. typing_extensions replaces some functions of
    ``typing``), and the corpus must not depend on who calls the builder."""
    if isolated:
        return _gather_in_subprocess(seed, max_modules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _gather_here(seed, max_modules)


def _gather_to_file(path: str, seed: str, max_modules: str) -> None:
    """Subprocess side of :func:`gather_sources`: write the gathered sources as JSON."""
    src = gather_sources(int(seed), int(max_modules) if max_modules else None, isolated=False)
    for key in ("math", "stdlib", "numpy"):
        src[key] = [[d.source, d.module, d.name, d.text] for d in src[key]]
    Path(path).write_text(json.dumps(src, ensure_ascii=False), encoding="utf-8")


def _gather_in_subprocess(seed: int, max_modules: int | None) -> dict:
    # The child loads this tool's package by path under a private name (it needs nothing from
    # rho), so sys.path and the environment stay exactly as the caller's. It imports every
    # module of the tool first, so it starts from the same imported modules whoever calls it.
    code = (
        "import importlib, importlib.util, os, sys\n"
        "pkg_dir = sys.argv[1]\n"
        "spec = importlib.util.spec_from_file_location(\n"
        "    '_build_demo', os.path.join(pkg_dir, '__init__.py'),\n"
        "    submodule_search_locations=[pkg_dir],\n"
        ")\n"
        "pkg = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = pkg\n"
        "spec.loader.exec_module(pkg)\n"
        "importlib.import_module('_build_demo.build')\n"
        "gather = importlib.import_module('_build_demo.gather')\n"
        "gather._gather_to_file(sys.argv[2], sys.argv[3], sys.argv[4])"
    )
    pkg_dir = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory(prefix="rho-demo-") as tmp:
        path = os.path.join(tmp, "sources.json")
        limit = "" if max_modules is None else str(max_modules)
        proc = subprocess.run(
            [sys.executable, "-c", code, pkg_dir, path, str(seed), limit],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"collecting the demo sources failed:\n{proc.stderr[-3000:]}")
        src = json.loads(Path(path).read_text(encoding="utf-8"))
    for key in ("math", "stdlib", "numpy"):
        src[key] = [Doc(*row) for row in src[key]]
    return src


def _gather_here(seed: int, max_modules: int | None) -> dict:
    math_docs: list[Doc] = []
    counts: dict[str, dict] = {}

    mods = walk_modules("mpmath", _SKIP_PREFIXES["mpmath"], max_modules)
    docs = collect_docs("mpmath", mods, _mpmath_context_docs())
    counts["mpmath"] = {"modules": len(mods), "docstrings": len(docs)}
    math_docs += docs

    mods = walk_modules("sympy", _SKIP_PREFIXES["sympy"], max_modules)
    docs = collect_docs("sympy", mods)
    counts["sympy"] = {"modules": len(mods), "docstrings": len(docs)}
    math_docs += docs

    # The standard library: top-level names split into a "general" and a "noise" group.
    tops = stdlib_top_names()
    random.Random(f"{seed}:stdlib").shuffle(tops)
    n_noise = max(1, round(STDLIB_NOISE_FRACTION * len(tops)))
    noise_tops, general_tops = sorted(tops[:n_noise]), sorted(tops[n_noise:])
    if max_modules is not None:
        noise_tops, general_tops = noise_tops[:max_modules], general_tops[:max_modules]
    general_mods = [m for top in general_tops for m in walk_modules(top, (), max_modules)]
    noise_mods = [m for top in noise_tops for m in walk_modules(top, (), max_modules)]
    stdlib_docs = collect_docs("stdlib", general_mods)
    counts["stdlib"] = {
        "general_top_modules": len(general_tops),
        "noise_top_modules": len(noise_tops),
        "modules": len(general_mods),
        "docstrings": len(stdlib_docs),
    }
    noise_text = [d.text for d in collect_docs("stdlib-noise", noise_mods)]
    code_sources = [s for s in (module_source(m) for m in noise_mods) if s]
    counts["stdlib-noise"] = {
        "modules": len(noise_mods),
        "docstrings_for_garbling": len(noise_text),
        "sources_for_code_dumps": len(code_sources),
    }

    mods = walk_modules("numpy", _SKIP_PREFIXES["numpy"], max_modules)
    numpy_docs = collect_docs("numpy", mods)
    counts["numpy"] = {"modules": len(mods), "docstrings": len(numpy_docs)}

    # Dedupe across sources (math wins), then keep the collected order.
    seen: set[str] = set()
    out: dict[str, list[Doc]] = {}
    for name, docs in (("math", math_docs), ("stdlib", stdlib_docs), ("numpy", numpy_docs)):
        kept = []
        for d in docs:
            key = _dedupe_key(d.text)
            if key not in seen:
                seen.add(key)
                kept.append(d)
        out[name] = kept
    for src in ("mpmath", "sympy"):
        counts[src]["chars"] = sum(len(d.text) for d in out["math"] if d.source == src)
    counts["stdlib"]["chars"] = sum(len(d.text) for d in out["stdlib"])
    counts["numpy"]["chars"] = sum(len(d.text) for d in out["numpy"])
    return {
        "math": out["math"],
        "stdlib": out["stdlib"],
        "numpy": out["numpy"],
        "noise_text": noise_text or [d.text for d in out["stdlib"]],
        "code_sources": code_sources or ["pass\n" * 400],
        "counts": counts,
    }
