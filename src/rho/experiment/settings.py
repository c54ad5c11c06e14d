"""`rho experiment`'s settings: one dataclass whose fields are the YAML config's keys and the
command line's flags (the field docs are both the config's documentation and `--help`), and
the checks that run before any work.

Every field declares the stages that read it (``stages=...``): a stage's key is the hash of
exactly those fields (``fields_read``), and a stage sees the config only through a view of them
(``view``), so a stage cannot read a field its key leaves out. Fields read by some arms only are
named in that arm's ``reads`` (rho.experiment.arms). A config file (``--config FILE.yaml``) sets
defaults; flags given on the command line win.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rho.errors import UserError
from rho.experiment.arms import ARMS, CORE_ARMS, DEFAULTS, NAMES
from rho.experiment.inputs import budget_list, expand, heldout_sets
from rho.experiment.preflight import check_models
from rho.experiment.schedule import training_options
from rho.io.config_file import read_config
from rho.models import PRESETS
from rho.selection.select import check_ratio
from rho.training.options import option

STAGES = ("data", "mix", "base", "proxy", "sample", "reference", "self-reference", "draw", "score",
          "prune", "embed", "proto", "arms", "analyses")  # fmt: skip
# every training run's schedule
TRAINING = ("base", "proxy", "reference", "self-reference", "arms")
FILE_FIELDS = ("curated", "corpus", "heldout", "base_data")  # keyed by content, not path


@dataclass
class ExperimentConfig:
    """Everything one `rho experiment` run needs: data, models, arms, seeds, budget."""

    curated: list[str] = option(
        factory=list,
        stages=("data",),
        help="curated files of the target distribution (train the reference)",
    )
    corpus: list[str] = option(
        factory=list,
        stages=("data",),
        help="pretraining corpus files the arms train on (globs expand)",
    )
    heldout: list[str] = option(
        factory=list,
        stages=("data",),
        help="held-out sets as NAME=FILE[,FILE...]; the first is the "
        "target axis (e.g. target=math.jsonl general=web.jsonl); each is "
        "split into validation and test",
    )
    target_axis: str | None = option(
        default=None,
        stages=(),
        help="the held-out axis whose clm loss is the target of the compute table and the "
        "winners (default: the first); results.json has the frontier of every axis",
    )
    out: str = option(default="rho-experiment", stages=(), help="run directory")
    base: str = option(
        default="1m",
        stages=("data", "base"),
        help="the model every arm continues from: a preset (tiny, 1m, 5m, ...: "
        "pretrained here on --base_data), a model directory or a hub name",
    )
    base_data: list[str] = option(
        factory=list,
        stages=("data",),
        help="text to pretrain a preset base on (the paper's setting)",
    )
    base_tokens: int = option(
        default=0, stages=("base", "proxy"), help="base pretraining budget (tokens)"
    )
    reference_base: str | None = option(
        default=None,
        stages=("proxy",),
        help="the proxy arms' (slm-proxy) reference start, smaller than --base: a preset "
        "(pretrained here on --base_data like the base, cached) or a model directory with the "
        "data's tokenizer; its pretraining, training and scoring are charged at its own size",
    )
    from_scratch: bool = option(
        default=False,
        stages=("base", "proxy"),
        help="no base: every arm and the reference start from a fresh preset",
    )
    tokenizer: str | None = option(
        default=None,
        stages=("data",),
        help="HF tokenizer (default: a model base's own, else trained on the data)",
    )
    vocab: int = option(default=2048, stages=("data",), help="vocabulary of a trained tokenizer")
    arms: str = option(
        default=",".join(CORE_ARMS),
        stages=(),
        help=f"comma list of {', '.join(NAMES)}; or all (the proxy arms only with "
        "--reference_base)",
    )
    seeds: list[int] = option(
        factory=lambda: [0, 1, 2],
        stages=(),
        help="seeds (data order) of the --seeded_arms; other arms use the first",
    )
    seeded_arms: str = option(
        default="clm,slm", stages=(), help="arms run over every seed (comma list, or all)"
    )
    reference_seeds: list[int] = option(
        factory=list,
        stages=(),
        help="seeds of the reference (default: the first seed); "
        "arms using reference scores pair seed i with reference "
        "i (cycling), so their spread includes the reference's",
    )
    train_tokens: int = option(
        default=0, stages=("arms", "draw", "reference"), help="per-arm budget (0: one pass)"
    )
    # a ladder stage's budget is in its identity (rho.experiment.plan), not read from here
    budgets: list[float] | str | None = option(
        default=None,
        stages=(),
        help="the budget ladder: fractions of --train_tokens (e.g. 0.25,0.5,1), each a whole run "
        "of the --ladder_arms with its own warm-up and cosine decay (1: the arms' own runs)",
    )
    ladder_arms: str = option(
        default="clm", stages=(), help="arms run at every --budgets fraction (comma list, or all)"
    )
    ref_tokens: int = option(
        default=0,
        stages=("reference",),
        help="the scoring reference's training budget on the curated data, in tokens (0: the "
        "arms' budget; then the reference arm's runs are the scoring references)",
    )
    self_reference: float = option(
        default=DEFAULTS.self_reference,
        stages=("sample",),
        help="the self-reference arms (slm-self, slm-entropy): the share of the corpus's "
        "windows (a seeded sample, which stays in the corpus) the base is trained on, one pass, "
        "to score the corpus without curated data",
    )
    curated_tokens: int = option(
        default=0,
        stages=("data",),
        help="use at most this many tokens of the curated files: a seeded sample of whole "
        "documents (the curated-scarce regime; 0: all of them)",
    )
    ratio: float = option(default=0.6, stages=("analyses",), help="SLM: fraction of tokens kept")
    mix_share: float = option(
        default=0.2, stages=("mix",), help="clm-mix: share of curated tokens in the mixed corpus"
    )
    prune_keep: float = option(default=0.5, stages=("prune",), help="pruned arms: windows kept")
    proto_keep: float = option(
        default=DEFAULTS.proto_keep,
        stages=("proto",),
        help="prototype arms: share of corpus windows kept",
    )
    proto_from: str = option(
        default=DEFAULTS.proto_from,
        stages=("proto",),
        help="prototype arms: keep the windows farthest from (hard) or nearest to (easy) their "
        "k-means centroid (Sorscher et al.: hard when data is abundant, easy when scarce)",
    )
    proto_dedup: float = option(
        default=0.0,
        stages=("proto",),
        help="prototype arms: drop near-duplicates above this cosine similarity inside a "
        "cluster first (SemDeDup; 0: off)",
    )
    embed_layer: int = option(
        default=-1,
        stages=("embed",),
        help="prototype arms: the base's hidden state that embeds a window (-1: the last; 0: "
        "the input token embeddings, a lookup with no forward pass)",
    )
    candidate_factor: int = option(default=4, stages=(), help="RHO-LOSS: candidates per window")
    seq_len: int = option(
        default=256,
        stages=(*TRAINING, "sample", "draw", "score", "embed", "proto", "analyses"),
        help="window length (tokens)",
    )
    batch_size: int = option(
        default=16, stages=(*TRAINING, "draw"), help="windows per optimizer step"
    )
    learning_rate: float = option(
        default=1e-3, stages=("reference", "self-reference", "arms"), help="arms and references"
    )
    base_learning_rate: float = option(
        default=3e-3, stages=("base", "proxy"), help="base pretraining"
    )
    training: dict | str | None = option(
        default=None,
        stages=TRAINING,
        help="transformers.TrainingArguments options for every training run, as a mapping "
        "(config: training: {bf16: true, gradient_accumulation_steps: 4}; flag: JSON). The "
        "schedule's own options (--batch_size: windows per optimizer step, --learning_rate, "
        "--seeds, --evals) are set by their flags, not here",
    )
    evals: int = option(default=8, stages=TRAINING, help="validation evaluations per run")
    eval_windows: int = option(
        default=48,
        stages=TRAINING,
        help="validation windows per axis for the curves (0: the whole validation set)",
    )
    validation_fraction: float = option(
        default=0.5, stages=("data",), help="share of each held-out set used for validation"
    )
    pick_share: float = option(
        default=0.0,
        stages=("data",),
        help="share of the validation documents set aside to pick settings on (--pick): the "
        "curves and target of other runs never read them",
    )
    pick: bool = option(
        default=False,
        stages=("data",),
        help="a picking run: the curves and the target read the pick share, not the validation",
    )
    decontam_threshold: float = option(
        default=0.05,
        stages=("data",),
        help="drop held-out documents sharing more than this share of 13-grams",
    )
    dynamics_checkpoints: int = option(
        default=5, stages=("analyses",), help="CLM checkpoints scored for token-loss dynamics"
    )
    analyze: bool = option(default=True, stages=(), help="selection analyses and HTML")
    choices: str = option(
        default="",
        stages=(),
        help="how the config's settings were chosen, for the report (default: the report says "
        "nothing in the run chose them)",
    )

    def __post_init__(self):
        self.training = training_options(self.training)
        self.budgets = budget_list(self.budgets)
        self.check()

    @property
    def arm_list(self) -> tuple[str, ...]:
        names = [a.strip() for a in self.arms.split(",") if a.strip()]
        registry = tuple(ARMS)  # read now: an arm registered later counts
        if names == ["all"]:  # the proxy arms when there is a proxy
            return tuple(a for a in registry if self.reference_base or not ARMS[a].proxy)
        unknown = [a for a in names if a not in ARMS]
        if unknown:
            raise UserError(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)} or all")
        return tuple(a for a in registry if a in names or a == "clm")  # clm is the baseline

    def seeds_of(self, arm: str) -> list[int]:
        """Every seed for a seeded arm, else the first. The reference arm's seeds are
        ``reference_seeds_used``."""
        if arm == "reference":
            return self.reference_seeds_used
        seeded = {a.strip() for a in self.seeded_arms.split(",")}
        return list(self.seeds) if arm in seeded or "all" in seeded else list(self.seeds[:1])

    def laddered(self, arm: str) -> list[float]:
        """The --budgets fractions below 1 an arm runs at (its own runs are fraction 1)."""
        names = {a.strip() for a in self.ladder_arms.split(",")}
        on = arm in names or ("all" in names and ARMS[arm].data != "curated")
        return [b for b in self.budgets if b < 1.0] if on else []

    @property
    def target(self) -> str:
        """The axis that sets the target: --target_axis, or the first held-out set."""
        return self.target_axis or next(iter(self.heldout_sets()))

    @property
    def reference_seeds_used(self) -> list[int]:
        return list(self.reference_seeds or self.seeds[:1])

    def reference_for(self, seed: int) -> int:
        """The reference seed an arm's data seed pairs with: the i-th seed with the i-th
        reference, cycling."""
        refs = self.reference_seeds_used
        return refs[self.seeds.index(seed) % len(refs)]

    def heldout_sets(self) -> dict[str, list[str]]:
        return heldout_sets(self.heldout)

    def check(self) -> None:
        """Every option, before any work."""
        check_ratio(self.ratio, "--ratio")
        check_ratio(self.mix_share, "--mix_share")
        check_ratio(self.prune_keep, "--prune_keep")
        check_ratio(self.proto_keep, "--proto_keep")
        check_ratio(self.self_reference, "--self_reference")
        if self.proto_from not in ("hard", "easy"):
            raise UserError(f"--proto_from must be hard or easy, got {self.proto_from!r}")
        if not 0.0 <= self.proto_dedup <= 1.0:
            raise UserError("--proto_dedup must be in [0, 1] (0: off)")
        check_ratio(self.validation_fraction, "--validation_fraction")
        if self.validation_fraction >= 1.0:
            raise UserError("--validation_fraction must leave a test set (< 1)")
        if not 0.0 <= self.pick_share < 1.0 or (self.pick and not self.pick_share):
            raise UserError("--pick_share must be in [0, 1), and above 0 for --pick")
        if not 0.0 <= self.decontam_threshold <= 1.0:
            raise UserError("--decontam_threshold must be in [0, 1]")
        for name in ("seq_len", "batch_size", "evals", "candidate_factor"):
            if getattr(self, name) < (2 if name == "seq_len" else 1):
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        counts = ("train_tokens", "base_tokens", "vocab", "eval_windows", "ref_tokens")
        for name in (*counts, "curated_tokens"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0")
        accumulation = self.training.get("gradient_accumulation_steps", 1)
        if not isinstance(accumulation, int) or accumulation < 1 or self.batch_size % accumulation:
            raise UserError(f"training: gradient_accumulation_steps {accumulation!r} must be a "
                            f"positive divisor of --batch_size {self.batch_size} (windows per "
                            "optimizer step)")  # fmt: skip
        proxied = [a for a in self.arm_list if ARMS[a].proxy]
        if proxied and self.reference_base is None:
            raise UserError(f"--arms {proxied[0]} needs --reference_base (the proxy's start)")
        if self.dynamics_checkpoints < 2:
            raise UserError("--dynamics_checkpoints must be at least 2")
        for name in ("seeds", "reference_seeds"):
            seeds = getattr(self, name)
            if (name == "seeds" and not seeds) or len(set(seeds)) != len(seeds):
                raise UserError(f"--{name} must be distinct integers")
        self.arm_list  # noqa: B018 (validates)
        self.heldout_sets()  # validates NAME=FILE[,FILE...]
        for name in ("seeded_arms", "ladder_arms"):
            given = {a.strip() for a in getattr(self, name).split(",") if a.strip()}
            if given - {*ARMS, "all"}:
                raise UserError(f"--{name}: unknown arm {sorted(given - {*ARMS, 'all'})[0]!r}")
        if any(ARMS[a].data == "curated" and self.laddered(a) for a in ARMS):
            raise UserError("--ladder_arms: the reference arm (curated data) has no ladder")
        for name in ("base", "reference_base"):
            value = getattr(self, name)
            if self.from_scratch and value is not None and value not in PRESETS:
                raise UserError(f"--from_scratch needs a preset --{name} ({', '.join(PRESETS)})")

    def check_inputs(self) -> None:
        """The data exists (checked when the run starts, not when a config is only parsed);
        globs in the file lists are expanded here, in sorted order."""
        if not self.corpus or not self.heldout:
            raise UserError("give --corpus and at least one --heldout NAME=FILE")
        if self.target_axis is not None and self.target_axis not in self.heldout_sets():
            raise UserError(f"--target_axis {self.target_axis!r} is not a --heldout set's name")
        curated = [a for a in self.arm_list if ARMS[a].needs_curated]
        if curated and not self.curated:
            raise UserError(f"--arms {curated[0]} needs --curated (the target's curated data); "
                            "without it, run clm, slm-random, proto-clm and the self-reference "
                            "arms (slm-self, slm-entropy)")  # fmt: skip
        files = (self.curated, self.corpus, self.base_data)
        self.curated, self.corpus, self.base_data = (expand(f) for f in files)
        self.heldout = [
            f"{name}={','.join(expand(files))}" for name, files in self.heldout_sets().items()
        ]
        check_models(self)

    def as_dict(self) -> dict:
        return asdict(self)

    def fields_read(self, stage: str, extra: tuple[str, ...] = ()) -> dict:
        """The values of the fields ``stage`` reads (and ``extra``: an arm's own reads)."""
        return {name: getattr(self, name) for name in reads(stage, extra)}

    def view(self, stage: str, extra: tuple[str, ...] = ()) -> ConfigView:
        return ConfigView(self, reads(stage, extra), stage)


# Field name -> the stages that read it (its ``stages`` metadata, which every field must have:
# no field can be forgotten by the stage keys).
STAGES_OF = {f.name: tuple(f.metadata["stages"]) for f in fields(ExperimentConfig)}
if {s for stages in STAGES_OF.values() for s in stages} - set(STAGES):
    raise ValueError("a field of ExperimentConfig names an unknown stage")


def reads(stage: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The names of the fields a stage reads, in the dataclass's order."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    return tuple(
        f.name for f in fields(ExperimentConfig) if stage in STAGES_OF[f.name] or f.name in extra
    )


class ConfigView:
    """The config as one stage may see it: reading a field the stage did not declare is an
    error, because the stage's key would not change with it (a stale result)."""

    def __init__(self, cfg: ExperimentConfig, names: tuple[str, ...], stage: str):
        self._cfg, self._names, self._stage = cfg, frozenset(names), stage

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self._names:
            raise AttributeError(
                f"the {self._stage} stage does not declare --{name} (see ExperimentConfig's stages)"
            )
        return getattr(self._cfg, name)


def load_yaml(path: str | Path) -> dict:
    """A config file's fields, checked against ExperimentConfig's before anything runs
    (rho.io.config_file: bounded, strict, keys once)."""
    return read_config(path, (ExperimentConfig,))
