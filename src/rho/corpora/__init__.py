"""The shipped demo corpus.

Three gzip-compressed jsonl files live in :data:`DEMO_DIR`. They are built by a build-time tool
outside this package (rebuild them from the repository root with ``python tools/build_demo``):

- ``curated``: clean mathematical text (SymPy and mpmath docstrings); trains the reference model.
- ``heldout``: more of the same kind, never trained on; target-distribution evaluation.
- ``corpus``: the "pretraining corpus", a web-like mix of mathematical text (disjoint from the
  two above), general text (Python standard library and NumPy docstrings) and generated noise.

Each line is ``{"text": str, "domain": "math" | "general" | "noise", "noise_spans": [[s, e], ...]}``
where the spans are ``[start, end)`` offsets in Unicode code points (Python ``str`` indices) of
the injected noise: the ground truth for the precision and recall of token selection.
"""

from __future__ import annotations

from pathlib import Path

from rho.errors import UserError

DEMO_DIR = Path(__file__).resolve().parent / "demo"
"""The folder holding the shipped demo corpus."""

SPLITS = ("curated", "heldout", "corpus")
"""The demo corpus' splits, each one ``<split>.jsonl.gz`` in :data:`DEMO_DIR`."""


def demo_path(split: str) -> Path:
    """Path of one split of the shipped demo corpus (``curated``, ``heldout`` or ``corpus``)."""
    if split not in SPLITS:
        raise UserError(f"unknown demo split {split!r}: expected one of {', '.join(SPLITS)}")
    return DEMO_DIR / f"{split}.jsonl.gz"
