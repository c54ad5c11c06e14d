"""`rho experiment`'s settings: one dataclass whose fields are the YAML config's keys and the
command line's flags (the field docs are both the config's documentation and `--help`), and
the checks that run before any work.

A config file (``--config FILE.yaml``) sets defaults; flags given on the command line win.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from rho.errors import UserError
from rho.models import PRESETS
from rho.select import check_ratio

# Arms, in report order. Every arm starts from the same base model, data order, schedule and
# token budget; "reference" is the reference model itself (the base fine-tuned on curated data).
CORE_ARMS = ("clm", "slm", "slm-random", "clm-mix", "reference")
SAMPLE_ARMS = ("pruned-clm", "pruned-slm", "rholoss", "rholoss+token")
ARMS = CORE_ARMS + SAMPLE_ARMS


@dataclass
class ExperimentConfig:
    """Everything one `rho experiment` run needs: data, models, arms, seeds, budget."""

    curated: list[str] = field(
        default_factory=list,
        metadata={"help": "curated files of the target distribution (train the reference)"},
    )
    corpus: list[str] = field(
        default_factory=list, metadata={"help": "pretraining corpus files the arms train on"}
    )
    heldout: list[str] = field(
        default_factory=list,
        metadata={
            "help": "held-out sets as NAME=FILE[,FILE...]; the first is the target axis (e.g. "
            "target=math.jsonl general=web.jsonl); each is split into validation and test"
        },
    )
    out: str = field(default="rho-experiment", metadata={"help": "run directory"})
    base: str = field(
        default="1m",
        metadata={
            "help": "the model every arm continues from: a preset (tiny, 1m, 5m, ...: "
            "pretrained here on --base_data), a model directory or a hub name"
        },
    )
    base_data: list[str] = field(
        default_factory=list,
        metadata={"help": "text to pretrain a preset base on (the paper's setting)"},
    )
    base_tokens: int = field(default=0, metadata={"help": "base pretraining budget (tokens)"})
    from_scratch: bool = field(
        default=False,
        metadata={"help": "no base: every arm and the reference start from a fresh preset"},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "HF tokenizer (default: a model base's own, else trained on the data)"},
    )
    vocab: int = field(default=2048, metadata={"help": "vocabulary of a trained tokenizer"})
    arms: str = field(
        default=",".join(CORE_ARMS),
        metadata={"help": f"comma list of {', '.join(ARMS)}; or all"},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "seeds (data order) of the --seeded_arms; other arms use the first"},
    )
    seeded_arms: str = field(
        default="clm,slm", metadata={"help": "arms run over every seed (comma list)"}
    )
    train_tokens: int = field(default=0, metadata={"help": "per-arm budget (0: one pass)"})
    ref_epochs: float = field(default=2.0, metadata={"help": "reference: epochs on curated"})
    ratio: float = field(default=0.6, metadata={"help": "SLM: fraction of tokens kept"})
    mix_share: float = field(
        default=0.2, metadata={"help": "clm-mix: share of curated tokens in the mixed corpus"}
    )
    prune_keep: float = field(default=0.5, metadata={"help": "pruned arms: windows kept"})
    candidate_factor: int = field(default=4, metadata={"help": "RHO-LOSS: candidates per window"})
    seq_len: int = field(default=256, metadata={"help": "window length (tokens)"})
    batch_size: int = field(default=16, metadata={"help": "windows per optimizer step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "arms and reference"})
    base_learning_rate: float = field(default=3e-3, metadata={"help": "base pretraining"})
    evals: int = field(default=8, metadata={"help": "validation evaluations per run"})
    eval_windows: int = field(
        default=48, metadata={"help": "validation windows per axis during training (fixed)"}
    )
    validation_fraction: float = field(
        default=0.5, metadata={"help": "share of each held-out set used for validation"}
    )
    decontam_threshold: float = field(
        default=0.05,
        metadata={"help": "drop held-out documents sharing more than this share of 13-grams"},
    )
    dynamics_checkpoints: int = field(
        default=5, metadata={"help": "CLM checkpoints scored for token-loss dynamics"}
    )
    analyze: bool = field(default=True, metadata={"help": "selection analyses and HTML"})

    def __post_init__(self):
        self.check()

    @property
    def arm_list(self) -> tuple[str, ...]:
        names = [a.strip() for a in self.arms.split(",") if a.strip()]
        if names == ["all"]:
            return ARMS
        unknown = [a for a in names if a not in ARMS]
        if unknown:
            raise UserError(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)} or all")
        return tuple(a for a in ARMS if a in names or a == "clm")  # clm is the baseline

    def seeds_of(self, arm: str) -> list[int]:
        """Every seed for a seeded arm (the reference is one model: the first seed only)."""
        seeded = {a.strip() for a in self.seeded_arms.split(",")} - {"reference"}
        return list(self.seeds) if arm in seeded else list(self.seeds[:1])

    def heldout_sets(self) -> dict[str, list[str]]:
        """NAME -> files, in the order given (the first is the target axis)."""
        sets: dict[str, list[str]] = {}
        for item in self.heldout:
            name, sep, files = item.partition("=")
            if not sep or not name or not files:
                raise UserError(f"--heldout {item!r}: write NAME=FILE[,FILE...]")
            if name in sets:
                raise UserError(f"--heldout {name!r} is given twice")
            sets[name] = [f for f in files.split(",") if f]
        return sets

    def check(self) -> None:
        """Every option, before any work."""
        check_ratio(self.ratio, "--ratio")
        check_ratio(self.mix_share, "--mix_share")
        check_ratio(self.prune_keep, "--prune_keep")
        check_ratio(self.validation_fraction, "--validation_fraction")
        if self.validation_fraction >= 1.0:
            raise UserError("--validation_fraction must leave a test set (< 1)")
        if not 0.0 <= self.decontam_threshold <= 1.0:
            raise UserError("--decontam_threshold must be in [0, 1]")
        for name in ("seq_len", "batch_size", "evals", "eval_windows", "candidate_factor"):
            if getattr(self, name) < (2 if name == "seq_len" else 1):
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("train_tokens", "base_tokens", "vocab"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0")
        if self.ref_epochs <= 0:
            raise UserError("--ref_epochs must be positive")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UserError("--seeds must be distinct integers")
        self.arm_list  # noqa: B018 (validates)
        unknown = {a.strip() for a in self.seeded_arms.split(",") if a.strip()} - set(ARMS)
        if unknown:
            raise UserError(f"--seeded_arms: unknown arm {sorted(unknown)[0]!r}")
        if self.from_scratch and self.base not in PRESETS:
            raise UserError(f"--from_scratch needs a preset --base ({', '.join(PRESETS)})")

    def check_inputs(self) -> None:
        """The data exists (checked when the run starts, not when a config is only parsed)."""
        if not self.curated or not self.corpus or not self.heldout:
            raise UserError("give --curated, --corpus and at least one --heldout NAME=FILE")
        files = [*self.curated, *self.corpus, *self.base_data]
        files += [f for fs in self.heldout_sets().values() for f in fs]
        for file in files:
            if not Path(file).exists():
                raise UserError(f"input {file} does not exist")
        if self.base in PRESETS and not self.from_scratch and not self.base_data:
            raise UserError(f"a preset --base {self.base} needs --base_data (or --from_scratch)")

    def as_dict(self) -> dict:
        return asdict(self)


def load_yaml(path: str | Path) -> dict:
    """A config file's fields (every key must be a field)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"config {path} does not exist") from None
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"config {path} is unreadable: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of option: value")
    known = {f.name for f in fields(ExperimentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"config {path}: unknown option {unknown[0]!r}")
    return data


def parse_config(argv: list[str], defaults: dict | None = None, prog: str = "rho experiment"):
    """(config, extra): ``--config FILE`` sets defaults over ``defaults``, flags win."""
    parser = HfArgumentParser(ExperimentConfig)
    parser.prog = prog
    parser.add_argument("--config", default=None, help="YAML file of these options")
    parser.add_argument("--quick", action="store_true", help="smoke-test scale")
    known, _ = parser.parse_known_args(argv)
    values = dict(defaults or {})
    if known.config:
        values.update(load_yaml(known.config))
    parser.set_defaults(**values)
    config, extra = parser.parse_args_into_dataclasses(args=argv)
    return config, extra
