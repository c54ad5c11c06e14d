"""`rho analyze <command>`: the paper's figures on a run. Each command's work is its module of
rho.analysis (dynamics_report, selection_report, html_report); the model options they share are
one dataclass, parsed beside each command's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rho.analysis.common import check_positive, print_files
from rho.analysis.dynamics_report import run_dynamics
from rho.analysis.html_report import run_html
from rho.analysis.selection_report import run_selection
from rho.commands.parser import Command
from rho.errors import UserError
from rho.models import DTYPES
from rho.select import check_ratio
from rho.store import TokenStore


@dataclass
class ModelOptions:
    """How every analysis runs its models."""

    batch_size: int = field(default=16, metadata={"help": "windows per forward pass"})
    dtype: str = field(
        default="float32", metadata={"choices": tuple(DTYPES), "help": "the models' precision"}
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: best)"}
    )

    def __post_init__(self):
        check_positive("--batch-size", self.batch_size)

    def keywords(self) -> dict:
        return {"batch_size": self.batch_size, "dtype": self.dtype, "device": self.device}


@dataclass
class DynamicsOptions:
    """Score a validation TokenStore with each checkpoint and classify every token's loss
    trajectory (H→L, L→L, H→H, L→H) by the Rho-1 rule."""

    checkpoints: list[str] = field(metadata={"help": "model dirs, in order"})
    tokens: str = field(metadata={"help": "validation TokenStore"})
    out: str = field(metadata={"help": "output directory"})
    seq_len: int = field(default=256, metadata={"help": "window length in tokens"})
    threshold: float = field(
        default=0.2, metadata={"help": "|change| over the span that counts as H→L/L→H"}
    )
    spread: str = field(
        default="std", metadata={"choices": ("std", "range"), "help": "spread measure"}
    )
    examples: int = field(default=4, metadata={"help": "fluctuating tokens per category"})
    overwrite: bool = field(default=False, metadata={"help": "re-score existing loss stores"})

    def __post_init__(self):
        if len(self.checkpoints) < 2:
            raise UserError("--checkpoints needs at least 2 models to follow losses across")
        if not self.threshold >= 0:
            raise UserError(f"--threshold must be >= 0, got {self.threshold}")


def dynamics(options: DynamicsOptions, model: ModelOptions) -> int:
    checkpoints = [Path(c) for c in options.checkpoints]
    for c in checkpoints:
        if not c.is_dir():
            raise UserError(f"checkpoint {c} is not a directory")
    tokens = TokenStore(options.tokens)
    result = run_dynamics(
        checkpoints,
        tokens,
        Path(options.out),
        seq_len=options.seq_len,
        threshold=options.threshold,
        spread_kind=options.spread,
        examples=options.examples,
        **model.keywords(),
        overwrite=options.overwrite,
    )
    print(f"rho analyze dynamics: {len(checkpoints)} checkpoints x {tokens.n_tokens:,} tokens")
    print(result["markdown_table"])
    print(f"(L→L/H→H split at mean loss {result['mean']:.3f}; threshold ±{options.threshold})")
    print_files(result["files"])
    return 0


@dataclass
class SelectionOptions:
    """Loss of the tokens SLM selects vs drops under SLM and CLM training (Fig. 6a/c), and the
    perplexity of the tokens selected at each SLM checkpoint under every checkpoint (Fig. 8)."""

    runs: list[str] = field(
        metadata={"exactly": 2, "metavar": ("SLM_DIR", "CLM_DIR"), "help": "two `rho train` runs"}
    )
    out: str = field(metadata={"help": "output directory"})
    tokens: str | None = field(
        default=None, metadata={"help": "TokenStore of the windows (default: the SLM run's data)"}
    )
    losses: str | None = field(
        default=None,
        metadata={"help": "reference LossStore of --tokens (default: the SLM run's)"},
    )
    windows: int = field(default=64, metadata={"help": "windows analysed (evenly spread)"})
    ratio: float | None = field(
        default=None, metadata={"help": "kept fraction (default: the SLM run's)"}
    )
    select_batch: int | None = field(
        default=None,
        metadata={
            "help": "windows ranked together under scope batch (default: the SLM run's train batch)"
        },
    )
    select_with: str = field(
        default="slm",
        metadata={
            "choices": ("slm", "self"),
            "help": "slm: CLM is measured on the tokens the SLM checkpoint of the same step "
            "selects; self: on the tokens SLM's rule would select with the CLM model as learner",
        },
    )

    def __post_init__(self):
        check_positive("--windows", self.windows)


def selection(options: SelectionOptions, model: ModelOptions) -> int:
    result = run_selection(
        [Path(r) for r in options.runs],
        options.tokens,
        options.losses,
        Path(options.out),
        windows=options.windows,
        ratio=options.ratio,
        select_batch=options.select_batch,
        select_with=options.select_with,
        **model.keywords(),
    )
    print(f"rho analyze selection: {result['summary']}")
    print_files(result["files"])
    return 0


@dataclass
class HtmlOptions:
    """A self-contained HTML page of passages with the tokens SLM would select highlighted by
    their score."""

    tokens: str = field(metadata={"help": "TokenStore"})
    losses: str = field(metadata={"help": "reference LossStore of --tokens"})
    out: str = field(metadata={"help": "HTML file to write"})
    model: str | None = field(
        default=None, metadata={"help": "learner checkpoint (for excess loss)"}
    )
    ratio: float = field(default=0.6, metadata={"help": "kept fraction"})
    score: str = field(
        default="excess",
        metadata={"choices": ("excess", "learner", "reference"), "help": "ranking"},
    )
    passages: int = field(default=12, metadata={"help": "passages (windows) shown"})
    passage_tokens: int = field(default=200, metadata={"help": "tokens shown per passage"})
    seq_len: int | None = field(default=None, metadata={"help": "(default: the LossStore's)"})
    title: str | None = field(default=None, metadata={"help": "page title"})
    overwrite: bool = field(default=False, metadata={"help": "replace a file rho did not write"})

    def __post_init__(self):
        check_ratio(self.ratio, "--ratio")
        check_positive("--passages", self.passages)
        check_positive("--passage-tokens", self.passage_tokens)


def html(options: HtmlOptions, model: ModelOptions) -> int:
    result = run_html(
        options.tokens,
        options.losses,
        Path(options.out),
        model=options.model,
        ratio=options.ratio,
        score=options.score,
        passages=options.passages,
        passage_tokens=options.passage_tokens,
        seq_len=options.seq_len,
        title=options.title,
        overwrite=options.overwrite,
        **model.keywords(),
    )
    print(f"rho analyze html: {result['summary']}")
    print_files(result["files"])
    return 0


COMMAND = {
    "dynamics": Command(
        (DynamicsOptions, ModelOptions),
        dynamics,
        "token-loss trajectories across checkpoints: H→L, L→L, H→H, L→H (Fig. 3)",
    ),
    "selection": Command(
        (SelectionOptions, ModelOptions),
        selection,
        "selected vs unselected loss under SLM and CLM; selection across checkpoints (Figs. 6, 8)",
    ),
    "html": Command(
        (HtmlOptions, ModelOptions),
        html,
        "an HTML page of passages with would-be-selected tokens highlighted (Fig. 13)",
    ),
}
