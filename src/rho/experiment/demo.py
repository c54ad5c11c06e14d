"""`rho demo`: `rho experiment` with a shipped config (demo.yaml; quick.yaml on top for
``--quick``) on files derived from the shipped demo data:

- ``general-heldout``: a fixed share of the corpus's general-text documents (by a hash of the
  text), never trained on: the general axis;
- ``base``: the corpus's other general-text documents, which pretrain the base model;
- ``corpus``: the corpus without the held-out documents; ``curated`` and the math ``heldout``
  as shipped (``--quick``: a seeded fraction of every file).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from rho.corpora import demo_path
from rho.experiment.prepare import in_validation
from rho.experiment.runner import EXPERIMENT_KIND, run_experiment
from rho.experiment.settings import load_yaml, parse_config
from rho.files import check_replaceable, mark_output, write_text_atomic

HERE = Path(__file__).resolve().parent
GENERAL_HELDOUT = 0.1  # share of the general-text documents held out
QUICK_FRACTION = 0.1


def demo_defaults(quick: bool) -> dict:
    values = load_yaml(HERE / "demo.yaml")
    if quick:
        values.update(load_yaml(HERE / "quick.yaml"))
    return values


def demo_files(directory: Path, quick: bool, seed: int = 0) -> dict:
    """Write the demo's derived files (deterministic) and return the config's data fields."""

    def lines(split: str) -> list[str]:
        with gzip.open(demo_path(split), "rt", encoding="utf-8") as f:
            found = [line for line in f if line.strip()]
        if not quick:
            return found
        rng = np.random.default_rng(seed)
        keep = rng.choice(len(found), max(8, int(len(found) * QUICK_FRACTION)), replace=False)
        return [found[i] for i in np.sort(keep)]

    corpus = lines("corpus")
    general = [line for line in corpus if json.loads(line).get("domain") == "general"]
    salt = "general-heldout"
    held = {
        line for line in general if in_validation(json.loads(line)["text"], GENERAL_HELDOUT, salt)
    }

    def write(name: str, rows: list[str]) -> str:
        return str(write_text_atomic(directory / f"{name}.jsonl", "".join(rows)))

    return {
        "corpus": [write("corpus", [line for line in corpus if line not in held])],
        "base_data": [write("base", [line for line in general if line not in held])],
        "curated": [write("curated", lines("curated"))],
        "heldout": [f"math={write('math-heldout', lines('heldout'))}",
                    f"general={write('general-heldout', sorted(held, key=corpus.index))}"],
    }  # fmt: skip


def demo_cli(argv: list[str]) -> int:
    quick = "--quick" in argv
    defaults = demo_defaults(quick) | {"out": "rho-demo"}
    cfg, _ = parse_config(argv, defaults, prog="rho demo")  # every option checked here
    out = Path(cfg.out)
    check_replaceable(out, EXPERIMENT_KIND)  # before anything is written into it
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, EXPERIMENT_KIND)
    files = demo_files(out / "demo-data", quick)
    for key, value in files.items():
        setattr(cfg, key, value)
    title = "rho demo" + (" --quick" if quick else "")
    run_experiment(cfg, title)
    return 0


def experiment_cli(argv: list[str]) -> int:
    cfg, _ = parse_config(argv)
    run_experiment(cfg)
    return 0
