"""The demo's configuration: the arms it can run (``ARMS``, ``parse_arms``) and the sizes of one
run (``DemoConfig``, with the smoke-test scale ``DemoConfig.quick()``)."""

from __future__ import annotations

from dataclasses import dataclass

from rho.errors import UserError

# clm and slm always run; the others are chosen with --arms (see rho.experiment.demo)
ARMS = ("clm", "slm", "pruned-clm", "pruned-slm", "rholoss", "rholoss+token")


def parse_arms(text: str) -> tuple[str, ...]:
    """``all`` or a comma list of ARMS, in ARMS order; clm and slm always run."""
    names = ARMS if text.strip() == "all" else [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise UserError(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)} or all")
    return tuple(a for a in ARMS if a in ("clm", "slm") or a in names)


@dataclass
class DemoConfig:
    """Sizes of one demo run; ``quick`` is the smoke-test scale."""

    preset: str = "1m"
    vocab: int = 2048
    seq_len: int = 256
    batch_size: int = 16
    ref_epochs: float = 4.0  # a reference stronger than the learner ends up (see README)
    train_tokens: int | None = None  # CLM/SLM budget; None = one pass over the corpus
    corpus_fraction: float = 1.0
    ratio: float = 0.6
    learning_rate: float = 3e-3
    evals: int = 12
    eval_windows: int = 96  # held-out windows per evaluation
    sample_windows: int = 64  # corpus windows re-scored per checkpoint for selection stats
    dynamics_checkpoints: int = 5  # SLM checkpoints scored on held-out for token-loss dynamics
    seed: int = 0
    arms: tuple[str, ...] = ("clm", "slm")  # see ARMS; clm and slm always run
    candidate_factor: int = 4  # RHO-LOSS arms: candidate windows per trained window
    prune_keep: float = 0.5  # pruned arms: fraction of the corpus windows kept
    analyze: bool = True  # selection, dynamics and highlighting analyses of the SLM run

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            preset="tiny",
            vocab=512,
            seq_len=128,
            ref_epochs=1.0,
            corpus_fraction=0.12,
            train_tokens=160_000,
            evals=5,
            eval_windows=32,
            sample_windows=32,
            dynamics_checkpoints=3,
        )
