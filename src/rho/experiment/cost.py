"""What a plan costs before it runs (`rho experiment --plan`): each stage's FLOPs by the rules
the frontier charges, the same functions the runs count with (rho.training.meter: 6·N per token
trained, 2·N per token forwarded without a gradient; RHO-LOSS's candidates forwarded by the
learner; embedding by a hidden state a forward, by the input embeddings a lookup), the stage
sizes the runner uses (its ``steps`` and budgets, ``sample_windows``, ``n_keep``), and an
estimate of the wall time from a probe on this device (rho.experiment.probe).

Token counts come from the config (``train_tokens``, ``base_tokens``, ``ref_tokens``) and,
once recorded, from the data stage's record (its stores' token counts and vocabulary) and the
window stages' records. Before the data stage a figure that needs a store's size is unknown
("after the data stage"), and the rest are upper bounds: a trained tokenizer's vocabulary is at
most ``--vocab``, a draw at most its source's windows. A run trains fewer tokens than its steps
× batch × seq_len only when its windows run out: a partial last window of a store, or an epoch
ending in a short batch; such a stage's figure is marked as an upper bound ("≤").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property, partial

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rho.data.tokenizer_setup import load_tokenizer, vocab_size_of
from rho.errors import UserError
from rho.experiment.arms import ARMS
from rho.experiment.plan import Kind, Stage
from rho.experiment.prepare import tokenizer_source
from rho.io.files import one_line
from rho.io.store import TokenStore
from rho.models import PRESETS, count_parameters, preset_config
from rho.selection.select import n_keep
from rho.training.candidates import LEARNER_SCORES
from rho.training.meter import forward_flops, train_flops
from rho.training.options import SelectionArguments

AFTER_DATA = "after the data stage"
PLAIN = SelectionArguments(selection="none")


def embed_flops(layer: int, n_params: int, tokens: int) -> float:
    """Embedding by hidden state ``layer``: a forward pass; layer 0 (the input embeddings) is a
    lookup."""
    return 0.0 if layer == 0 else float(forward_flops(n_params, tokens))


def sample_windows(share: float, corpus_tokens: int, seq_len: int) -> int:
    """A self-reference's sample: ``share`` of the corpus's whole windows (at least one)."""
    return max(1, round(share * (corpus_tokens // seq_len)))


def model_config(start: str, vocab: int, seq_len: int = 2048):
    """The architecture a stage trains or scores: a preset at the data's vocabulary, or a given
    model's own config."""
    if start in PRESETS:
        return preset_config(start, vocab, max_positions=seq_len)
    try:
        return AutoConfig.from_pretrained(start)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the config of the model {start}: {one_line(err)}") from None


def parameters(config) -> int:
    """N of an architecture, counted on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return count_parameters(AutoModelForCausalLM.from_config(config))


@dataclass(frozen=True)
class Windows:
    """What a stage trains on or scores: its windows (None: after the data stage), whether
    every one is full, and why the count is an upper bound (empty: exact)."""

    count: int | None
    whole: bool = True
    bound: str = ""


@dataclass
class Figure:
    """One stage's cost: the FLOPs of its tokens trained and forwarded at ``n_params``."""

    model: str | None = None
    n_params: int | None = None
    tokens: int | None = 0  # trained (None: after the data stage)
    forward_tokens: int | None = 0  # forwarded without a gradient
    flops: float | None = 0.0
    notes: list[str] = field(default_factory=list)  # why it is an upper bound or unknown

    @property
    def exact(self) -> bool:
        return not self.notes and self.flops is not None


class Costing:
    """The figures of ``runner``'s plan (rho.experiment.runner.Runner), stage by stage in the
    plan's order, from the config and what ``runner.results`` holds recorded."""

    def __init__(self, runner):
        self.runner, self.cfg = runner, runner.cfg
        self.data = runner.results.get("data")
        self.windows: dict[str, Windows] = {}
        self.sizes: dict[str, tuple[int, list[str]]] = {}

    def figure(self, stage: Stage) -> Figure:
        cost = COSTS.get(stage.kind)
        return Figure() if cost is None else cost(self, stage)

    # ------------------------------------------------------------------ what stages read
    @cached_property
    def vocab(self) -> tuple[int, list[str]]:
        """The data's vocabulary, and why it is an upper bound."""
        if self.data is not None:
            return TokenStore(self.data.store("corpus")).vocab_size, []
        source = tokenizer_source(self.cfg)
        if source is not None:
            return vocab_size_of(load_tokenizer(source)), []
        return self.cfg.vocab, [
            f"at most: a trained tokenizer has at most --vocab {self.cfg.vocab}"
        ]

    def architecture(self, model: str):
        """The config of the base or the proxy (``model``)."""
        start = self.cfg.base if model == "base" else self.cfg.reference_base
        vocab = self.vocab[0] if start in PRESETS else 0
        return model_config(start, vocab, self.cfg.seq_len)

    def size(self, model: str) -> tuple[int, list[str]]:
        """N of the base or the proxy (``model``), and why it is an upper bound."""
        if model not in self.sizes:
            start = self.cfg.base if model == "base" else self.cfg.reference_base
            notes = self.vocab[1] if start in PRESETS else []
            self.sizes[model] = parameters(self.architecture(model)), notes
        return self.sizes[model]

    def tokens(self, role: str) -> int | None:
        """A data store's tokens (None before the data stage)."""
        return None if self.data is None else self.data.tokens[role]

    def store(self, role: str) -> Windows:
        """A data store's windows as training reads them (the last may be partial)."""
        n, seq_len = self.tokens(role), self.cfg.seq_len
        if n is None:
            return Windows(
                None, bound=f"at most: its store may end in a partial window ({AFTER_DATA})"
            )
        return Windows(math.ceil(n / seq_len), whole=n % seq_len == 0)

    def budget(self, view) -> int | None:
        """The arms' token budget (the runner's), None before the data stage when it is one
        pass over the corpus."""
        if not view.train_tokens and self.data is None:
            return None
        return self.runner.corpus_tokens(view)

    def recorded_windows(self, stage: Stage) -> Windows | None:
        found = self.runner.results.get(stage.name)
        return None if found is None else Windows(found.windows)

    # ------------------------------------------------------------------ training and forwards
    def steps(self, tokens: int | None, view) -> int | None:
        """The runner's steps for ``tokens`` (None: after the data stage)."""
        return None if tokens is None else self.runner.steps(tokens, view)

    def training(self, model: str, steps: int | None, view, data: Windows, selection=PLAIN):
        """A run of ``steps``, each of ``view.batch_size`` windows of ``data``, at the size of
        ``model``; RHO-LOSS reads (and forwards) its candidates."""
        n, notes = self.size(model)
        if steps is None:
            return Figure(model, n, None, None, None, [AFTER_DATA])
        factor = selection.candidate_factor if selection.selects_windows else 1
        trained = steps * view.batch_size * view.seq_len
        learner = selection.selects_windows and selection.score in LEARNER_SCORES
        forward = factor * trained if learner else 0
        flops = float(train_flops(n, trained) + forward_flops(n, forward))
        notes = [*notes, *bounds(data, steps, view.batch_size * factor)]
        return Figure(model, n, trained, forward, flops, notes)

    def forward(self, model: str, windows: Windows, flops) -> Figure:
        """A forward pass over ``windows`` (scoring, embedding); ``flops(n, tokens)``."""
        n, notes = self.size(model)
        if windows.count is None:
            return Figure(model, n, None, None, None, [windows.bound])
        tokens = windows.count * self.cfg.seq_len
        bound = [windows.bound] if windows.bound else []
        return Figure(model, n, 0, tokens, float(flops(n, tokens)), [*notes, *bound])

    # ------------------------------------------------------------------ one kind of stage each
    def base(self, stage: Stage) -> Figure:
        model = "base" if stage.kind == Kind.BASE else "proxy"
        if not stage.cached:  # a given model or a fresh preset: nothing to pretrain
            return Figure(model, self.size(model)[0])
        view = self.cfg.view(model)
        tokens = view.base_tokens or self.tokens("base")
        return self.training(model, self.steps(tokens, view), view, self.store("base"))

    def sample(self, stage: Stage) -> Figure:
        corpus, found = self.tokens("corpus"), self.recorded_windows(stage)
        if found is None and corpus is not None:
            found = Windows(sample_windows(self.cfg.self_reference, corpus, self.cfg.seq_len))
        self.windows[stage.name] = found or Windows(None, bound=AFTER_DATA)
        return Figure()

    def reference(self, stage: Stage) -> Figure:
        model = "proxy" if stage.source == "proxy" else "base"
        if stage.source == "self":
            view = self.cfg.view("self-reference")
            data = self.windows[f"self-sample-seed{stage.seed}"]
            tokens = None if data.count is None else data.count * view.seq_len
            return self.training(model, self.steps(tokens, view), view, data)
        view = self.cfg.view("reference")
        steps = self.steps(view.ref_tokens or self.budget(view), view)
        return self.training(model, steps, view, self.store("curated"))

    def draw(self, stage: Stage) -> Figure:
        """``pool`` budgets of whole windows, at most the source's whole windows."""
        view, found = self.cfg.view("draw"), self.recorded_windows(stage)
        budget = self.budget(view)
        if found is not None or budget is None:
            self.windows[stage.name] = found or Windows(None, bound=AFTER_DATA)
            return Figure()
        wanted = round(stage.pool * self.runner.budget_windows(view))
        if stage.source == "mix":
            mix = self.runner.results.get("mix")
            source = None if mix is None else mix.tokens
        else:
            source = self.tokens("corpus")
        if source is None:
            bound = f"at most: a draw holds at most its source's windows ({AFTER_DATA})"
            self.windows[stage.name] = Windows(wanted, bound=bound)
        else:
            self.windows[stage.name] = Windows(min(wanted, source // view.seq_len))
        return Figure()

    def kept(self, stage: Stage) -> Figure:
        """Pruning keeps n_keep(keep, drawn) windows; prototype pruning drops duplicates
        first, if asked."""
        found, drawn = self.recorded_windows(stage), self.windows[stage.windows]
        if found is not None or drawn.count is None:
            self.windows[stage.name] = found or drawn
            return Figure()
        if stage.kind == Kind.PRUNE:
            keep, bound = self.cfg.prune_keep, drawn.bound
        else:
            keep = self.cfg.proto_keep
            bound = drawn.bound or (
                "at most: --proto_dedup drops near-duplicates" if self.cfg.proto_dedup else ""
            )
        self.windows[stage.name] = Windows(n_keep(keep, drawn.count), bound=bound)
        return Figure()

    def score(self, stage: Stage) -> Figure:
        model = "proxy" if self.runner.plan[stage.after[0]].source == "proxy" else "base"
        self.windows[stage.name] = self.windows[stage.windows]  # pruning reads the scored ones
        return self.forward(model, self.windows[stage.windows], forward_flops)

    def embed(self, stage: Stage) -> Figure:
        layer = self.cfg.embed_layer
        if layer == 0:  # the input embeddings: a lookup, whatever the size
            return Figure("base", self.size("base")[0])
        return self.forward("base", self.windows[stage.windows], partial(embed_flops, layer))

    def arm(self, stage: Stage) -> Figure:
        arm = ARMS[stage.arm]
        view = self.cfg.view("arms", arm.reads)
        data = self.store("curated") if arm.data == "curated" else self.windows[stage.windows]
        # the runner's steps: the budget's, or a ladder run's share of them
        steps = None if self.budget(view) is None else self.runner.arm_steps(stage, view)
        return self.training("base", steps, view, data, arm.selection_arguments(view))


def bounds(data: Windows, steps: int, per_step: int) -> list[str]:
    """Why a run of ``steps`` reading ``per_step`` windows each may train fewer tokens than
    steps × batch × seq_len: its windows are an upper bound, its store ends in a partial
    window, or they run out in a short batch at an epoch's end."""
    if data.count is None or data.bound:
        return [data.bound or AFTER_DATA]
    notes = [] if data.whole else ["at most: its store's last window is partial"]
    if data.count < steps * per_step and data.count % per_step:
        notes.append("at most: its windows run out in a short batch at an epoch's end")
    return notes


COSTS = {
    Kind.BASE: Costing.base,
    Kind.PROXY: Costing.base,
    Kind.SAMPLE: Costing.sample,
    Kind.REFERENCE: Costing.reference,
    Kind.DRAW: Costing.draw,
    Kind.PRUNE: Costing.kept,
    Kind.PROTO: Costing.kept,
    Kind.SCORE: Costing.score,
    Kind.EMBED: Costing.embed,
    Kind.ARM: Costing.arm,
}  # data, mix and analyses cost no FLOPs
