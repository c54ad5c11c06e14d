"""`rho analyze html`: one self-contained HTML page of passages with the tokens SLM would select
highlighted by their score (Rho-1 Fig. 13). Picks the windows, scores them with the learner
when one is given, selects as one training batch would; the page itself is
:mod:`rho.analysis.html`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rho.analysis import common
from rho.analysis import html as page
from rho.analysis import selection as sel
from rho.files import check_output_file, write_text_atomic
from rho.store import LossStore, TokenStore
from rho.windows import losses_of_windows, window_ids


def run_html(
    tokens_dir,
    losses_dir,
    out: Path,
    *,
    model: str | None = None,
    ratio: float = 0.6,
    score: str = "excess",
    passages: int = 12,
    passage_tokens: int = 200,
    seq_len: int | None = None,
    title: str | None = None,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Pick passages, score and select their tokens, write the page; returns the summary line,
    the paths and the score used (``reference`` when no model is given). An existing ``out``
    is replaced only if rho wrote it, or with ``overwrite``; never an input."""
    check_output_file(out, page.GENERATOR, overwrite, [tokens_dir, losses_dir, model])
    tokens = TokenStore(tokens_dir)
    ref_store = LossStore(losses_dir)
    seq_len = seq_len or ref_store.seq_len
    ref_store.check_matches(tokens, seq_len)
    notes = []
    if model is None and score != "reference":
        notes.append(
            f"No --model given, so no learner losses: tokens are coloured by their reference "
            f"loss and the lowest-reference-loss tokens are selected (score 'reference'), not by "
            f"{score} loss. Give --model CKPT to see the excess loss SLM ranks by."
        )
        score = "reference"

    n_full = tokens.n_tokens // seq_len
    if n_full:
        window_domains = common.domains_at(tokens, np.arange(n_full) * seq_len)
        indices = page.pick_windows(n_full, passages, window_domains)
        ids = window_ids(tokens.tokens, seq_len, indices)
    else:  # a store shorter than one window: show what there is
        indices = [0]
        ids = np.asarray(tokens.tokens[:], dtype=np.int64)[None]
    common.check_ids(ids, tokens.vocab_size)
    length = ids.shape[1]
    ref = np.stack([ref_store.window(int(i))[:length] for i in indices])
    learner = None
    if model is not None:
        net = common.load_checked_model(
            Path(model), tokens.vocab_size, dtype, common.device_from(device), length
        )
        learner = losses_of_windows(net, ids, batch_size, net.device)
        del net
    valid = sel.valid_positions(ref, *([learner] if learner is not None else []))
    shown = {"excess": None, "learner": learner, "reference": ref}
    if learner is not None:
        shown["excess"] = learner - ref
    values = shown[score]
    scores = sel.scores_for(score, learner if learner is not None else ref, ref)
    selected = sel.select(scores, valid, ratio, "batch")

    noise = None
    if tokens.noise_mask is not None:
        noise = np.stack(
            [np.asarray(tokens.noise_mask[i * seq_len : i * seq_len + length]) for i in indices]
        )
    show = min(passage_tokens, length)
    passage_domains = None
    if tokens.doc_domains is not None:
        passage_domains = []
        for i in indices:  # the domains of the documents the shown tokens belong to
            first, last = i * seq_len, min(i * seq_len + show, tokens.n_tokens) - 1
            d_first, d_last = np.searchsorted(tokens.doc_offsets, [first, last], "right") - 1
            starts = np.maximum(tokens.doc_offsets[d_first : d_last + 1], first)
            passage_domains.append(", ".join(dict.fromkeys(common.domains_at(tokens, starts))))
    tokenizer = tokens.tokenizer()
    passages_ = page.passages_from_arrays(
        tokenizer,
        ids.reshape(-1),
        np.where(valid, values, np.nan).reshape(-1),
        selected.reshape(-1),
        None if noise is None else noise.reshape(-1),
        [k * length for k in range(len(indices))],
        show,
        passage_domains,
    )
    notes.append(
        f"Selection: the top {ratio:.0%} of scored tokens by {score} score, ranked across all "
        f"{len(indices)} windows ({length} tokens each) together, like one training batch; "
        f"each passage shows the first {show} tokens of its window. "
        f"Tokens: {tokens.path}; reference losses: {ref_store.path}"
        + (f"; learner: {model}." if model else ".")
    )
    if title is None:
        what = {"excess": "excess loss", "learner": "learner loss", "reference": "reference loss"}
        title = f"Tokens selected by {what[score]} — {tokens.path.name}"
    text = page.render_page(passages_, title=title, ratio=ratio, score=score, note=" ".join(notes))
    write_text_atomic(out, text)
    summary = (
        f"{len(indices)} passages, {int(selected.sum()):,} of {int(valid.sum()):,} scored "
        f"tokens selected ({score})"
    )
    if noise is not None:
        noisy = valid & noise
        clean = valid & ~noise
        if noisy.any():
            summary += (
                f"; selected {selected[noisy].mean():.0%} of noise tokens vs "
                f"{selected[clean].mean():.0%} of clean ones"
            )
    return {"summary": summary, "files": [out], "score": score}
