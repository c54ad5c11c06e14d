"""`rho eval`: evaluate a checkpoint (rho.evaluation.run) or put earlier runs side by side."""

from __future__ import annotations

from dataclasses import dataclass

from rho.commands.parser import DEVICE, Command
from rho.errors import UserError
from rho.evaluation.results import compare_runs
from rho.evaluation.run import run_eval
from rho.models import DTYPES
from rho.training.options import option

LOSS = "held-out loss"  # the sections of its --help
TASKS = "few-shot tasks"
HARNESS = "lm-evaluation-harness (pip install 'rho[eval]')"


@dataclass
class EvalOptions:
    """Evaluate a checkpoint: held-out loss / perplexity / bits per byte per domain (--tokens),
    few-shot exact-match tasks (--task), lm-evaluation-harness tasks (--lm-eval-tasks); or put
    earlier runs side by side (--compare)."""

    model: str | None = option("checkpoint directory or hub name", None)
    compare: list[str] | None = option("run dirs (or eval.json)", None, metavar="RUN")
    out: str | None = option(
        "a directory rho makes for eval.json / eval.md (default: CHECKPOINT/rho_eval)", None
    )
    dtype: str = option("the model's precision", "float32", choices=tuple(DTYPES))
    device: str | None = option(DEVICE, None)
    batch_size: int = option("windows / prompts per batch", 16)
    trust_remote_code: bool = option("allow model code", False)
    tokenizer: str | None = option("tokenizer dir for tasks (default: the checkpoint's)", None)
    quiet: bool = option("no progress bars", False)
    tokens: list[str] | None = option(
        "TokenStore(s) to evaluate on", None, group=LOSS, metavar="DIR"
    )
    seq_len: int = option("window length in tokens", 256, group=LOSS)
    task: list[str] | None = option("jsonl file(s) or 'champ'", None, group=TASKS, metavar="TASK")
    shots: int = option("solved examples in each prompt", 4, group=TASKS)
    shots_file: str | None = option(
        "jsonl to take the shots from (default: the task)", None, group=TASKS
    )
    max_new_tokens: int = option("generation budget", 256, group=TASKS)
    limit: int | None = option("evaluate at most N items per task", None, group=TASKS)
    lm_eval_tasks: str | None = option(
        "comma-separated task names, e.g. gsm8k", None, group=HARNESS
    )
    lm_eval_include: str | None = option("directory of extra task YAMLs", None, group=HARNESS)
    num_fewshot: int | None = option("override the tasks' few-shot count", None, group=HARNESS)
    lm_eval_local_only: bool = option(
        "index only --lm-eval-include's tasks, not the harness's built-ins (faster start)",
        False,
        group=HARNESS,
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
