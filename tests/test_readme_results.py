"""The README's and docs/RESULTS.md's demo figures (rho.experiment.published): each block is
exactly what the committed results file it names writes, so a figure typed by hand fails here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rho.errors import UserError
from rho.experiment.published import BLOCK, DOCUMENTS, publish, stale

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 300_000  # a results copy stays small enough to commit


def sources() -> set[str]:
    """The results files the documents' blocks name."""
    return {m["source"] for doc in DOCUMENTS.values() for m in BLOCK.finditer(read(ROOT / doc))}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def copy_tree(tmp_path: Path) -> Path:
    """The documents and the results they name, in a scratch repository root."""
    for relative in [*DOCUMENTS.values(), *sources()]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    return tmp_path


def test_the_documents_hold_exactly_what_their_results_file_writes():
    assert len(sources()) == 1  # both documents publish one run
    (source,) = sources()
    assert source.startswith("docs/results/") and (ROOT / source).stat().st_size < MAX_BYTES
    committed = {f"docs/results/{p.name}" for p in (ROOT / "docs" / "results").iterdir()}
    assert committed == {source}  # no results file left over that no block is written from
    assert stale(ROOT) == []


@pytest.mark.parametrize("document", sorted(DOCUMENTS.values()))
def test_a_figure_typed_by_hand_into_a_block_is_caught(tmp_path, document):
    root = copy_tree(tmp_path)
    text = read(root / document)
    block = next(m for m in BLOCK.finditer(text) if DOCUMENTS[m["name"]] == document)
    figure = re.search(r"\d\.\d{3}", block["body"])  # a loss as the blocks write them
    typed = str(int(figure[0][-1]) ^ 1)  # its last digit changed
    start = block.start("body") + figure.end() - 1
    (root / document).write_text(text[:start] + typed + text[start + 1 :], encoding="utf-8")
    assert stale(root) == [
        f"{document}: block {block['name']} differs from what {block['source']} writes"
    ]


def test_publish_writes_the_copy_and_both_blocks_from_it(tmp_path):
    root = copy_tree(tmp_path)
    (source,) = sources()
    for document in DOCUMENTS.values():  # empty blocks, as a new document would have them
        text = BLOCK.sub(lambda m: f"<!-- results:start {m['name']} x -->\n<!-- results:end -->",
                         read(root / document))  # fmt: skip
        (root / document).write_text(text, encoding="utf-8")
    run = tmp_path / "run" / "results.json"
    run.parent.mkdir()
    shutil.copy(ROOT / source, run)
    assert publish(run, root) == root / source
    assert stale(root) == []
    results = json.loads(read(run))
    clm = results["summary"]["losses"]["clm"][results["data"]["axes"][0]]
    for document in DOCUMENTS.values():  # clm's target loss, from the file, in both
        assert f"{clm['mean']:.3f} ± {clm['std']:.3f}" in read(root / document)


def test_results_of_another_config_are_refused(tmp_path):
    (source,) = sources()
    results = json.loads(read(ROOT / source))
    results["config"]["ratio"] = 0.5  # not the shipped demo's
    run = tmp_path / "results.json"
    run.write_text(json.dumps(results))
    with pytest.raises(UserError, match="not from `rho demo` with the shipped demo.yaml"):
        publish(run, copy_tree(tmp_path / "root"))


@pytest.mark.slow
def test_the_script_publishes_in_one_command(tmp_path):
    """bench/readme_results.py RESULTS: the command that regenerates the figures."""
    root = copy_tree(tmp_path)
    (source,) = sources()
    shutil.copytree(ROOT / "bench", root / "bench")
    run = tmp_path / "results.json"
    shutil.copy(ROOT / source, run)
    (root / source).unlink()
    done = subprocess.run([sys.executable, str(root / "bench" / "readme_results.py"), str(run)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {source}" in done.stdout
    assert stale(root) == []
