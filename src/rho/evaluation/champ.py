"""The built-in task ``champ``: CHAMP (Mao et al., 2024; MIT licence), 270 competition math
problems with human-written solutions and final answers, shipped offline by the PyPI package
``champ-dataset``.

Only problems whose final answer is a single number (an integer, decimal or fraction) are kept,
since the task is graded by numeric exact match: 85 of the 270 in version v0.
"""

from __future__ import annotations

from rho.errors import UserError
from rho.evaluation.answers import parse_number

VERSION = "v0"


def load(version: str = VERSION) -> list[dict]:
    """The numeric-answer problems, in the dataset's own order, as question/answer dicts (plus
    ``id``, ``category`` and the reference ``solution`` for inspection)."""
    try:  # deferred: champ-dataset is an optional dependency (rho[eval])
        import champ_dataset
    except ImportError:
        raise UserError(
            "the built-in task 'champ' needs the champ-dataset package: "
            "pip install champ-dataset (or pip install 'rho[eval]')"
        ) from None
    try:
        dataset = champ_dataset.load(version)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load CHAMP {version}: {err}") from None
    items = []
    for identifier, problem in dataset.problems.items():
        answer = (problem.answer or "").strip().rstrip(".").strip()
        if parse_number(answer) is None:
            continue
        solution = problem.solution.steps if problem.solution and problem.solution.steps else []
        items.append(
            {
                "id": identifier,
                "question": problem.text.strip(),
                "answer": answer,
                "category": problem.category,
                "solution": " ".join(step.text.strip() for step in solution),
            }
        )
    if not items:
        raise UserError(f"CHAMP {version} holds no problem with a numeric answer")
    return items
