"""`rho analyze <command>`: the paper's figures on a run. Each command's work is its module of
rho.analysis (dynamics_report, selection_report, html_report); the model options they share are
one dataclass, parsed beside each command's own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rho.analysis.common import check_positive, print_files
from rho.analysis.dynamics_report import run_dynamics
from rho.analysis.html_report import run_html
from rho.analysis.selection_report import run_selection
from rho.commands.parser import DEVICE, Command
from rho.errors import UserError
from rho.io.store import TokenStore
from rho.models import DTYPES
from rho.selection.select import check_ratio
from rho.training.options import option


@dataclass
class ModelOptions:
    """How every analysis runs its models."""

    batch_size: int = option("windows per forward pass", 16)
    dtype: str = option("the models' precision", "float32", choices=tuple(DTYPES))
    device: str | None = option(DEVICE, None)

    def __post_init__(self):
        check_positive("--batch-size", self.batch_size)

    def keywords(self) -> dict:
        return {"batch_size": self.batch_size, "dtype": self.dtype, "device": self.device}


def done(summary: str, files: list[Path]) -> int:
    """An analysis's closing lines: its summary and where its files are."""
    print(summary)
    print_files(files)
    return 0


@dataclass
class DynamicsOptions:
    """Score a validation TokenStore with each checkpoint and classify every token's loss
    trajectory (H→L, L→L, H→H, L→H) by the Rho-1 rule."""

    checkpoints: list[str] = option("model dirs, in order")
    tokens: str = option("validation TokenStore")
    out: str = option("output directory")
    seq_len: int = option("window length in tokens", 256)
    threshold: float = option("|change| over the span that counts as H→L/L→H", 0.2)
    spread: str = option("spread measure", "std", choices=("std", "range"))
    examples: int = option("fluctuating tokens per category", 4)
    overwrite: bool = option("re-score existing loss stores", False)

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
    summary = [
        f"rho analyze dynamics: {len(checkpoints)} checkpoints x {tokens.n_tokens:,} tokens",
        result["markdown_table"],
        f"(L→L/H→H split at mean loss {result['mean']:.3f}; threshold ±{options.threshold})",
    ]
    return done("\n".join(summary), result["files"])


@dataclass
class SelectionOptions:
    """Loss of the tokens SLM selects vs drops under SLM and CLM training (Fig. 6a/c), and the
    perplexity of the tokens selected at each SLM checkpoint under every checkpoint (Fig. 8)."""

    runs: list[str] = option("two `rho train` runs", exactly=2, metavar=("SLM_DIR", "CLM_DIR"))
    out: str = option("output directory")
    tokens: str | None = option("TokenStore of the windows (default: the SLM run's data)", None)
    losses: str | None = option("reference LossStore of --tokens (default: the SLM run's)", None)
    windows: int = option("windows analysed (evenly spread)", 64)
    ratio: float | None = option("kept fraction (default: the SLM run's)", None)
    select_batch: int | None = option(
        "windows ranked together under scope batch (default: the SLM run's train batch)", None
    )
    select_with: str = option(
        "slm: CLM is measured on the tokens the SLM checkpoint of the same step selects; self: "
        "on the tokens SLM's rule would select with the CLM model as learner",
        "slm",
        choices=("slm", "self"),
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
    return done(f"rho analyze selection: {result['summary']}", result["files"])


@dataclass
class HtmlOptions:
    """A self-contained HTML page of passages with the tokens SLM would select highlighted by
    their score."""

    tokens: str = option("TokenStore")
    losses: str = option("reference LossStore of --tokens")
    out: str = option("HTML file to write")
    model: str | None = option("learner checkpoint (for excess loss)", None)
    ratio: float = option("kept fraction", 0.6)
    score: str = option("ranking", "excess", choices=("excess", "learner", "reference"))
    passages: int = option("passages (windows) shown", 12)
    passage_tokens: int = option("tokens shown per passage", 200)
    seq_len: int | None = option("(default: the LossStore's)", None)
    title: str | None = option("page title", None)
    overwrite: bool = option("replace a file rho did not write", False)

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
    return done(f"rho analyze html: {result['summary']}", result["files"])


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
