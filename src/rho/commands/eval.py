"""`rho eval`: evaluate a checkpoint (rho.eval.run) or put earlier runs side by side."""

from __future__ import annotations

from dataclasses import dataclass, field

from rho.commands.parser import Command
from rho.errors import UserError
from rho.eval.results import compare_runs
from rho.eval.run import run_eval
from rho.models import DTYPES

LOSS = "held-out loss"  # the sections of its --help
TASKS = "few-shot tasks"
HARNESS = "lm-evaluation-harness (pip install 'rho[eval]')"


@dataclass
class EvalOptions:
    """Evaluate a checkpoint: held-out loss / perplexity / bits per byte per domain (--tokens),
    few-shot exact-match tasks (--task), lm-evaluation-harness tasks (--lm-eval-tasks); or put
    earlier runs side by side (--compare)."""

    model: str | None = field(default=None, metadata={"help": "checkpoint directory or hub name"})
    compare: list[str] | None = field(
        default=None, metadata={"metavar": "RUN", "help": "run dirs (or eval.json)"}
    )
    out: str | None = field(
        default=None,
        metadata={"help": "where eval.json / eval.md go (default: the checkpoint dir)"},
    )
    dtype: str = field(
        default="float32", metadata={"choices": tuple(DTYPES), "help": "the model's precision"}
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: best)"}
    )
    batch_size: int = field(default=16, metadata={"help": "windows / prompts per batch"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer dir for tasks (default: the checkpoint's)"}
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})
    tokens: list[str] | None = field(
        default=None,
        metadata={"group": LOSS, "metavar": "DIR", "help": "TokenStore(s) to evaluate on"},
    )
    seq_len: int = field(default=256, metadata={"group": LOSS, "help": "window length in tokens"})
    task: list[str] | None = field(
        default=None,
        metadata={"group": TASKS, "metavar": "TASK", "help": "jsonl file(s) or 'champ'"},
    )
    shots: int = field(
        default=4, metadata={"group": TASKS, "help": "solved examples in each prompt"}
    )
    shots_file: str | None = field(
        default=None,
        metadata={"group": TASKS, "help": "jsonl to take the shots from (default: the task)"},
    )
    max_new_tokens: int = field(default=256, metadata={"group": TASKS, "help": "generation budget"})
    limit: int | None = field(
        default=None, metadata={"group": TASKS, "help": "evaluate at most N items per task"}
    )
    lm_eval_tasks: str | None = field(
        default=None,
        metadata={"group": HARNESS, "help": "comma-separated task names, e.g. gsm8k"},
    )
    lm_eval_include: str | None = field(
        default=None, metadata={"group": HARNESS, "help": "directory of extra task YAMLs"}
    )
    num_fewshot: int | None = field(
        default=None, metadata={"group": HARNESS, "help": "override the tasks' few-shot count"}
    )
    lm_eval_local_only: bool = field(
        default=False,
        metadata={
            "group": HARNESS,
            "help": "index only --lm-eval-include's tasks, not the harness's built-ins (faster "
            "start)",
        },
    )

    def __post_init__(self):
        if self.compare and (self.model or self.tokens or self.task or self.lm_eval_tasks):
            raise UserError("--compare takes only run directories")


def main(options: EvalOptions) -> int:
    if options.compare:
        print(compare_runs(options.compare))
        return 0
    run_eval(
        options.model,
        out=options.out,
        tokens=options.tokens or (),
        tasks=options.task or (),
        lm_eval_tasks=options.lm_eval_tasks,
        seq_len=options.seq_len,
        shots=options.shots,
        shots_file=options.shots_file,
        max_new_tokens=options.max_new_tokens,
        limit=options.limit,
        batch_size=options.batch_size,
        dtype=options.dtype,
        device=options.device,
        trust_remote_code=options.trust_remote_code,
        tokenizer=options.tokenizer,
        lm_eval_include=options.lm_eval_include,
        num_fewshot=options.num_fewshot,
        lm_eval_local_only=options.lm_eval_local_only,
        progress=not options.quiet,
    )
    return 0


COMMAND = Command((EvalOptions,), main)
