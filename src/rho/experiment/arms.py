"""The arms of `rho experiment`, in one registry: what each selects, what it trains on, what it
reads from the config and the reference, what it saves and what it is charged before training.
Everything else (settings, the runner, the overheads, the statistics, the report) iterates
``ARMS``; adding an arm is one entry here (and its test).
"""

from __future__ import annotations

from dataclasses import dataclass

from rho.training.options import SelectionArguments


@dataclass(frozen=True)
class Arm:
    """One way of training from the base on the experiment's budget."""

    name: str
    # The report's line for this arm; {ratio}, {share}, {keep}, {factor} are filled in.
    description: str
    # rho train's selection: none | token | sample | sample+token.
    selection: str = "none"
    # How tokens or windows are scored (rho.selection.select): excess, random, ...
    score: str = "excess"
    # The windows it trains on: corpus | mix (corpus + curated) | pruned | proto | curated.
    data: str = "corpus"
    # ExperimentConfig fields its training reads beyond the shared schedule.
    reads: tuple[str, ...] = ()
    # What it saves per optimizer step compared with plain training.
    saves: str = "nothing (plain training)"
    # One-off stages charged to it before training: reference (training), score, prune, embed
    # (the plan names the exact stages: rho.experiment.plan).
    overhead: tuple[str, ...] = ()
    # Its window order is the corpus's order for the seed (clm's), so seeds pair across arms.
    corpus_order: bool = False
    # The reference whose scores it reads: base (the base fine-tuned on the curated data),
    # proxy (the smaller --reference_base fine-tuned on it) or self (the base trained on a
    # sample of the corpus itself: no curated data).
    reference: str = "base"

    @property
    def proxy(self) -> bool:
        return self.uses_reference and self.reference == "proxy"

    @property
    def needs_curated(self) -> bool:
        """It reads the curated data: in its windows, or through its reference."""
        return self.data in ("mix", "curated") or (self.uses_reference and self.reference != "self")

    @property
    def uses_reference(self) -> bool:
        """It reads a reference's scores (and so pairs with a reference seed)."""
        return "score" in self.overhead

    def pool(self, cfg) -> float:
        """How many budgets of windows it draws from its source (the windows it scores, embeds
        or reads): pruned arms draw 1/keep budgets and keep a budget; RHO-LOSS reads
        candidate_factor windows per window trained; every other arm draws one budget."""
        if self.data == "pruned":
            return 1.0 / cfg.prune_keep
        if self.data == "proto":
            return 1.0 / cfg.proto_keep
        if self.selection.startswith("sample"):
            return float(cfg.candidate_factor)
        return 1.0

    def selection_arguments(self, cfg) -> SelectionArguments:
        own = {k: getattr(cfg, k) for k in ("ratio", "candidate_factor") if k in self.reads}
        return SelectionArguments(selection=self.selection, score=self.score, **own)

    def text(self, cfg, mix_share: float) -> str:
        """The report's line for this arm, with the config's (ExperimentConfig) settings."""
        return self.description.format(
            ratio=cfg.ratio,
            share=mix_share,
            keep=cfg.prune_keep,
            factor=cfg.candidate_factor,
            proto_keep=cfg.proto_keep,
            proto_from=SIDES[cfg.proto_from],
            self_share=cfg.self_reference,
        )


SIDES = {"hard": "farthest from", "easy": "nearest to"}  # prototype pruning's --proto_from


@dataclass(frozen=True)
class Defaults:
    """The defaults of the options the arms' descriptions name: ExperimentConfig's, written
    once here."""

    proto_keep: float = 0.5
    proto_from: str = "hard"
    self_reference: float = 0.1


DEFAULTS = Defaults()
_SCORED = ("reference", "score")
ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm(
            "clm",
            "CLM: plain continual pretraining on the corpus (the baseline)",
            corpus_order=True,
        ),
        Arm(
            "slm",
            "SLM: loss on the top {ratio:.0%} of tokens by excess loss (learner − reference)",
            selection="token",
            reads=("ratio",),
            saves="tokens in the loss",
            overhead=_SCORED,
            corpus_order=True,
        ),
        Arm(
            "slm-random",
            "SLM with random scores at the same ratio: is it the selection, or fewer tokens?",
            selection="token",
            score="random",
            reads=("ratio",),
            saves="tokens in the loss",
            corpus_order=True,
        ),
        Arm(
            "clm-mix",
            "CLM on the corpus with the curated data mixed in ({share:.0%} of its tokens)",
            data="mix",
        ),
        Arm(
            "reference",
            "the reference itself: the base fine-tuned on the curated data only",
            data="curated",
        ),
        Arm(
            "slm-mix",
            "SLM on the curated mix: selection on top of the cheapest baseline",
            selection="token",
            data="mix",
            reads=("ratio",),
            saves="tokens in the loss",
            overhead=_SCORED,
        ),
        Arm(
            "slm-proxy",
            "SLM scored by a proxy reference (the smaller --reference_base, fine-tuned on the "
            "curated data)",
            selection="token",
            reads=("ratio",),
            saves="tokens in the loss",
            overhead=_SCORED,
            corpus_order=True,
            reference="proxy",
        ),
        Arm(
            "slm-self",
            "SLM without curated data: excess loss against a self-reference (the base trained "
            "on {self_share:.0%} of the corpus's windows; Rho-1's self-reference)",
            selection="token",
            reads=("ratio",),
            saves="tokens in the loss",
            overhead=_SCORED,
            corpus_order=True,
            reference="self",
        ),
        Arm(
            "slm-entropy",
            "SLM on the tokens the self-reference is most certain about (lowest next-token "
            "entropy)",
            selection="token",
            score="reference-entropy",
            reads=("ratio",),
            saves="tokens in the loss",
            overhead=_SCORED,
            corpus_order=True,
            reference="self",
        ),
        Arm(
            "pruned-clm",
            "CLM on the {keep:.0%} of drawn corpus windows with the lowest reference "
            "loss (offline pruning)",
            data="pruned",
            saves="whole windows (offline)",
            overhead=(*_SCORED, "prune"),
        ),
        Arm(
            "pruned-slm",
            "SLM on those pruned windows",
            selection="token",
            data="pruned",
            reads=("ratio",),
            saves="whole windows (offline) and tokens in the loss",
            overhead=(*_SCORED, "prune"),
        ),
        Arm(
            "proto-clm",
            "CLM on the {proto_keep:.0%} of drawn corpus windows {proto_from} their k-means "
            "centroid, embedded by the base (Sorscher et al., D4); no reference",
            data="proto",
            saves="whole windows (offline), no reference",
            overhead=("embed",),
        ),
        Arm(
            "proto-slm",
            "SLM on those prototype-pruned windows",
            selection="token",
            data="proto",
            reads=("ratio",),
            saves="whole windows (offline) and tokens in the loss",
            overhead=(*_SCORED, "embed"),
        ),
        Arm(
            "rholoss",
            "online RHO-LOSS: train on the best 1/{factor} of candidate windows by "
            "learner − reference loss",
            selection="sample",
            reads=("candidate_factor",),
            saves="nothing: it reads {factor}× the windows it trains on",
            overhead=_SCORED,
        ),
        Arm(
            "rholoss+token",
            "RHO-LOSS windows, then SLM's token selection inside them",
            selection="sample+token",
            reads=("ratio", "candidate_factor"),
            saves="tokens in the loss",
            overhead=_SCORED,
        ),
    )
}
CORE_ARMS = ("clm", "slm", "slm-random", "clm-mix", "reference")
NAMES = tuple(ARMS)
