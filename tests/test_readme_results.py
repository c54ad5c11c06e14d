"""The README's and docs/RESULTS.md's demo and ladder figures (rho.experiment.published): each
block is exactly what the committed results file it names writes, so a figure typed by hand
fails here."""

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
DEMO, LADDER = "docs/results/demo.json", "docs/results/ladder.json"


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
    assert sources() == {DEMO, LADDER}  # the documents publish one demo run and one ladder
    for source in sources():
        assert (ROOT / source).stat().st_size < MAX_BYTES
    committed = {f"docs/results/{p.name}" for p in (ROOT / "docs" / "results").iterdir()}
    assert committed == sources()  # no results file left over that no block is written from
    assert stale(ROOT) == []


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_a_figure_typed_by_hand_into_a_block_is_caught(tmp_path, name):
    root = copy_tree(tmp_path)
    document = DOCUMENTS[name]
    text = read(root / document)
    block = next(m for m in BLOCK.finditer(text) if m["name"] == name)
    figure = re.search(r"\d\.\d{3}", block["body"])  # a loss as the blocks write them
    typed = str(int(figure[0][-1]) ^ 1)  # its last digit changed
    start = block.start("body") + figure.end() - 1
    (root / document).write_text(text[:start] + typed + text[start + 1 :], encoding="utf-8")
    assert stale(root) == [f"{document}: block {name} differs from what {block['source']} writes"]


def test_a_block_naming_the_wrong_kind_of_results_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    text = read(root / "README.md").replace(f"results:start readme-ladder {LADDER}",
                                            f"results:start readme-ladder {DEMO}")  # fmt: skip
    (root / "README.md").write_text(text, encoding="utf-8")
    assert stale(root) == [f"README.md: block readme-ladder names {DEMO}, which does not write it"]


def expected_figure(source: str) -> str:
    """A figure the file holds, as every block written from it shows it: clm's target loss
    (the demo), SLM minus CLM at the largest size on the target axis (the ladder)."""
    results = json.loads(read(ROOT / source))
    if source == DEMO:
        clm = results["summary"]["losses"]["clm"][results["data"]["axes"][0]]
        return f"{clm['mean']:.3f} ± {clm['std']:.3f}"
    ladder = results["ladder"]
    largest = ladder["rungs"][-1]
    by_arm = ladder["axes"][ladder["target_axis"]]["losses"][largest["name"]]
    return f"{largest['base']} {by_arm['slm']['mean'] - by_arm['clm']['mean']:+.3f} nats"


@pytest.mark.parametrize("source", [DEMO, LADDER])
def test_publish_writes_the_copy_and_its_blocks_from_it(tmp_path, source):
    root = copy_tree(tmp_path)

    def empty(m: re.Match) -> str:  # this file's blocks, as a new document would have them
        if m["source"] != source:
            return m[0]
        return f"<!-- results:start {m['name']} x -->\n<!-- results:end -->"

    for document in set(DOCUMENTS.values()):
        (root / document).write_text(BLOCK.sub(empty, read(root / document)), encoding="utf-8")
        assert expected_figure(source) not in read(root / document)
    run = tmp_path / "run" / "results.json"
    run.parent.mkdir()
    shutil.copy(ROOT / source, run)
    (root / source).unlink()
    assert publish(run, root) == root / source
    assert stale(root) == []
    for document in set(DOCUMENTS.values()):  # the figure, from the file, in both documents
        assert expected_figure(source) in read(root / document)
    assert (root / "docs" / "ladder.png").is_file() == (source == LADDER)


def test_results_of_another_config_are_refused(tmp_path):
    results = json.loads(read(ROOT / DEMO))
    results["config"]["ratio"] = 0.5  # not the shipped demo's
    run = tmp_path / "results.json"
    run.write_text(json.dumps(results))
    with pytest.raises(UserError, match="not from `rho demo` with the shipped demo.yaml"):
        publish(run, copy_tree(tmp_path / "root"))
    ladder = json.loads(read(ROOT / LADDER))
    ladder["ladder"]["rule"]["tokens_per_param"] = 1.0  # not the shipped ladder.yaml's
    run.write_text(json.dumps(ladder))
    with pytest.raises(UserError, match="not the shipped ladder.yaml's"):
        publish(run, copy_tree(tmp_path / "root2"))


@pytest.mark.slow
@pytest.mark.parametrize("source", [DEMO, LADDER])
def test_the_script_publishes_in_one_command(tmp_path, source):
    """bench/readme_results.py RESULTS: the command that regenerates the figures."""
    root = copy_tree(tmp_path)
    shutil.copytree(ROOT / "bench", root / "bench")
    run = tmp_path / "results.json"
    shutil.copy(ROOT / source, run)
    (root / source).unlink()
    done = subprocess.run([sys.executable, str(root / "bench" / "readme_results.py"), str(run)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {source}" in done.stdout
    assert stale(root) == []
