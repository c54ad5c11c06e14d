"""`rho demo`: `rho experiment` with a shipped config (demo.yaml; a setting's file on top for
``--setting``; quick.yaml on top for ``--quick``) on files derived from the shipped demo data:

- ``general-heldout``: a fixed share of the corpus's general-text documents (by a hash of the
  text), never trained on: the general axis;
- ``base``: the corpus's other general-text documents, which pretrain the base model;
- ``corpus``: the corpus without the held-out documents; ``curated`` and the math ``heldout``
  as shipped (``--quick``: a seeded fraction of every file).

``--setting ladder`` (ladder.yaml; ladder-quick.yaml on top for ``--quick``): the race at
several model sizes (rho.experiment.ladder), each size in its own run directory.

``--setting scarce`` (scarce.yaml): the curated data cut to 1/20 of each arm's budget, as in the
paper (0.5B curated tokens for 15B trained), and a third axis, ``math-corpus``: a share of the
corpus's own math documents (those without injected noise) held out, target-domain text that
the curated set stands for without being it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from rho.corpora import demo_path
from rho.errors import UserError
from rho.experiment.engine import EngineOptions
from rho.experiment.ladder import LADDER_KIND, LadderOptions, run_ladder
from rho.experiment.prepare import in_validation
from rho.experiment.records import Results
from rho.experiment.records.ladder import LadderResults
from rho.experiment.runner import EXPERIMENT_KIND, run_experiment
from rho.experiment.settings import ExperimentConfig
from rho.io.config_file import read_config
from rho.io.files import check_replaceable, mark_output, write_text_atomic

HERE = Path(__file__).resolve().parent
GENERAL_HELDOUT = 0.1  # share of the general-text documents held out
MATH_HELDOUT = 0.1  # --setting scarce: share of the corpus's clean math documents held out
QUICK_FRACTION = 0.1
# paper: demo.yaml alone; else demo.yaml then SETTING.yaml (and SETTING-quick.yaml if any)
SETTINGS = ("paper", "scarce", "ladder")
SCARCE = 20  # --setting scarce: the curated data is 1/SCARCE of each arm's budget


def demo_defaults(quick: bool, setting: str = "paper") -> dict:
    if setting not in SETTINGS:
        raise UserError(f"--setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    values = load_yaml(HERE / "demo.yaml")
    if setting != "paper":
        values.update(load_yaml(HERE / f"{setting}.yaml"))
    if quick:
        values.update(load_yaml(HERE / "quick.yaml"))
        if (HERE / f"{setting}-quick.yaml").is_file():
            values.update(load_yaml(HERE / f"{setting}-quick.yaml"))
    if setting == "scarce":  # at any scale
        values["curated_tokens"] = values["train_tokens"] // SCARCE
    return values


def load_yaml(path: Path) -> dict:
    """A shipped config's fields: `rho experiment`'s options and the ladder's."""
    return read_config(path, (ExperimentConfig, LadderOptions))


def demo_files(directory: Path, quick: bool, seed: int = 0, setting: str = "paper") -> dict:
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
    general = [line for line in corpus if document(line).domain == "general"]
    salt = "general-heldout"
    held = {line for line in general if in_validation(document(line).text, GENERAL_HELDOUT, salt)}

    math_held: list[str] = []
    if setting == "scarce":
        salt = "math-heldout"
        math_held = [
            line
            for line in corpus
            if clean_math(line) and in_validation(document(line).text, MATH_HELDOUT, salt)
        ]

    def write(name: str, rows: list[str]) -> str:
        return str(write_text_atomic(directory / f"{name}.jsonl", "".join(rows)))

    dropped = held | set(math_held)
    heldout = [f"math={write('math-heldout', lines('heldout'))}"]
    if math_held:
        heldout.append(f"math-corpus={write('math-corpus-heldout', math_held)}")
    heldout.append(f"general={write('general-heldout', sorted(held, key=corpus.index))}")
    return {
        "corpus": [write("corpus", [line for line in corpus if line not in dropped])],
        "base_data": [write("base", [line for line in general if line not in held])],
        "curated": [write("curated", lines("curated"))],
        "heldout": heldout,
    }


class DemoDocument(BaseModel):
    """A line of the shipped demo data, as far as the demo's split reads it."""

    model_config = ConfigDict(extra="ignore")
    text: str
    domain: str | None = None
    noise_spans: list | None = None


def document(line: str) -> DemoDocument:
    return DemoDocument.model_validate_json(line)


def clean_math(line: str) -> bool:
    """A corpus math document without injected noise."""
    record = document(line)
    return record.domain == "math" and not record.noise_spans


def run_demo(
    cfg: ExperimentConfig,
    quick: bool = False,
    setting: str = "paper",
    engine: EngineOptions | None = None,
    ladder: LadderOptions | None = None,
) -> Results | LadderResults:
    """`rho experiment` (or, with ``ladder.bases``, the ladder) on the demo's files, written
    into ``cfg.out``/demo-data first; ``cfg`` holds demo_defaults(quick, setting) under the
    user's config and flags."""
    out = Path(cfg.out)
    kind = LADDER_KIND if ladder and ladder.bases else EXPERIMENT_KIND
    check_replaceable(out, kind)  # before anything is written into it
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, kind)
    files = demo_files(out / "demo-data", quick, setting=setting)
    for key, value in files.items():
        setattr(cfg, key, value)
    title = "rho demo" + (f" --setting {setting}" if setting != "paper" else "")
    title += " --quick" if quick else ""
    if kind == LADDER_KIND:
        return run_ladder(cfg, ladder, title, engine)
    return run_experiment(cfg, title, engine)
