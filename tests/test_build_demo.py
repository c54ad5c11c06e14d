"""The demo-corpus builder, a build-time tool in tools/build_demo (not part of the rho package)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S, without_noise

from rho.corpora import SPLITS

TOOLS_DIR = Path(__file__).resolve().parents[1] / "tools"
BUILDER_DIR = TOOLS_DIR / "build_demo"

# The tool is not installed: import its package from tools/.
if str(TOOLS_DIR) not in sys.path:
    sys.path.insert(0, str(TOOLS_DIR))
tool_build = importlib.import_module("build_demo.build")
tool_gather = importlib.import_module("build_demo.gather")
tool_noise = importlib.import_module("build_demo.noise")
tool_sources = importlib.import_module("build_demo.sources")


def test_builder_imports_nothing_from_rho():
    for path in sorted(BUILDER_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if not node.level else []
            else:
                continue
            assert not any(n == "rho" or n.startswith("rho.") for n in names), (path, names)


# -- the builder's parts -------------------------------------------------------------------------


def test_inject_spans_point_at_the_blocks():
    rng = random.Random(0)
    text = "First paragraph.\n\nSecond one.\n\nThird."
    blocks = [("HEAD", "head"), ("MIDDLE", "any"), ("TAIL", "tail")]
    out, spans = tool_noise.inject(text, blocks, rng)
    assert [out[s:e] for s, e in spans] == ["HEAD", "MIDDLE", "TAIL"]
    assert spans == sorted(spans)
    assert without_noise({"text": out, "noise_spans": spans}) == " ".join(text.split())
    assert out.startswith("HEAD\n\n") and out.endswith("\n\nTAIL")
    # one paragraph: a middle block still lands at an end, never inside the text
    out, spans = tool_noise.inject("only one paragraph", [("X", "any")], rng)
    assert out in ("X\n\nonly one paragraph", "only one paragraph\n\nX")


def test_noise_maker_every_kind():
    rng = random.Random(1)
    maker = tool_noise.NoiseMaker(
        rng, ["def f(x):\n    return x\n" * 100], ["Some real text. " * 50]
    )
    for kind in tool_noise.NoiseMaker.KINDS:
        for _ in range(20):
            text, where = maker.make(kind, 300)
            assert text.strip() and where in ("head", "tail", "any")
            assert not tool_sources._CONTROL.search(text)
    doc, per_kind = maker.document(2000)
    assert len(doc) >= 300 and set(per_kind) <= set(tool_noise.NoiseMaker.KINDS)


def test_clean_text():
    raw = "Summary line.\n\n\n\n    Indented   \n      more\r\n"
    assert tool_sources.clean_text(raw) == "Summary line.\n\nIndented\n  more"


# -- determinism -----------------------------------------------------------------------------


def _small_build_cmd(out: Path, seed: int = 0) -> list[str]:
    return [
        sys.executable,
        str(BUILDER_DIR),
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--scale",
        "0.01",
        "--max-modules",
        "12",
        "--quiet",
    ]


def _env(hash_seed: str) -> dict:
    return dict(os.environ, PYTHONHASHSEED=hash_seed)


def test_builder_is_deterministic(tmp_path):
    # Two processes with different hash seeds (set/dict order must not leak), plus one more
    # seed that must give a different corpus.
    runs = {
        "a": (_small_build_cmd(tmp_path / "a"), "1"),
        "b": (_small_build_cmd(tmp_path / "b"), "2"),
        "c": (_small_build_cmd(tmp_path / "c", seed=1), "1"),
    }
    procs = {
        k: subprocess.Popen(cmd, env=_env(h), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for k, (cmd, h) in runs.items()
    }
    for k, p in procs.items():
        _, err = p.communicate(timeout=HANG_GUARD_S)
        assert p.returncode == 0, (k, err.decode()[-2000:])
    for name in [f"{s}.jsonl.gz" for s in SPLITS] + ["SOURCES.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a_corpus = (tmp_path / "a" / "corpus.jsonl.gz").read_bytes()
    assert a_corpus != (tmp_path / "c" / "corpus.jsonl.gz").read_bytes()
    summary = json.loads((tmp_path / "a" / "SOURCES.json").read_text(encoding="utf-8"))
    assert summary["splits"]["corpus"]["docs"] > 0
    assert (tmp_path / "a" / "LICENSES.md").is_file()


@pytest.mark.slow
def test_full_rebuild_reproduces_shipped_files(tmp_path, sources):
    versions = tool_gather._versions()
    if versions != sources["versions"]:
        pytest.skip(f"shipped corpus built with {sources['versions']}, here {versions}")
    summary = tool_build.build(tmp_path, seed=sources["seed"])
    for split in SPLITS:
        assert summary["splits"][split]["sha256"] == sources["splits"][split]["sha256"]
