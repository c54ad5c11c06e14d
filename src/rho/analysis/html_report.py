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
from rho.io.files import check_output_file, write_text_atomic
from rho.io.store import LossStore, TokenStore
from rho.scoring.windows import losses_of_windows, window_ids

NO_MODEL = (
    "No --model given, so no learner losses: tokens are coloured by their reference loss and the "
    "lowest-reference-loss tokens are selected (score 'reference'), not by {score} loss. Give "
    "--model CKPT to see the excess loss SLM ranks by."
)

SELECTION = (
    "Selection: the top {ratio:.0%} of scored tokens by {score} score, ranked across all {n} "
    "windows ({length} tokens each) together, like one training batch; each passage shows the "
    "first {show} tokens of its window. "
)


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
    """Pick passages, score and select their tokens, write the page (``out``: a file rho wrote,
    or any with ``overwrite``; never an input); returns the summary, paths and score used."""
    check_output_file(out, page.GENERATOR, overwrite, [tokens_dir, losses_dir, model])
    tokens = TokenStore(tokens_dir)
    ref_store = LossStore(losses_dir)
    seq_len = seq_len or ref_store.seq_len
    ref_store.check_matches(tokens, seq_len)
    notes = []
    if model is None and score != "reference":
        notes.append(NO_MODEL.format(score=score))
        score = "reference"
    indices, ids = _windows(tokens, seq_len, passages)
    length = ids.shape[1]
    ref = np.stack([ref_store.window(int(i))[:length] for i in indices])
    learner = None
    if model is not None:
        device_ = common.device_from(device)
        net = common.load_checked_model(Path(model), tokens.vocab_size, dtype, device_, length)
        learner = losses_of_windows(net, ids, batch_size, net.device)
        del net
    values, valid, selected = _select(ref, learner, score, ratio)
    noise = _noise(tokens, indices, seq_len, length)
    show = min(passage_tokens, length)
    passages_ = page.passages_from_arrays(
        tokens.tokenizer(),
        ids.reshape(-1),
        np.where(valid, values, np.nan).reshape(-1),
        selected.reshape(-1),
        None if noise is None else noise.reshape(-1),
        [k * length for k in range(len(indices))],
        show,
        _passage_domains(tokens, indices, seq_len, show),
    )
    notes.append(
        SELECTION.format(ratio=ratio, score=score, n=len(indices), length=length, show=show)
        + f"Tokens: {tokens.path}; reference losses: {ref_store.path}"
        + (f"; learner: {model}." if model else ".")
    )
    title = title or f"Tokens selected by {score} loss — {tokens.path.name}"
    text = page.render_page(passages_, title=title, ratio=ratio, score=score, note=" ".join(notes))
    write_text_atomic(out, text)
    summary = _summary(len(indices), selected, valid, noise, score)
    return {"summary": summary, "files": [out], "score": score}


def _select(ref: np.ndarray, learner: np.ndarray | None, score: str, ratio: float):
    """(the values shown, the scored positions, the selected ones), selected as one training
    batch would be."""
    valid = sel.valid_positions(ref, *([learner] if learner is not None else []))
    shown = {"learner": learner, "reference": ref}
    if learner is not None:
        shown["excess"] = learner - ref
    scores = sel.scores_for(score, learner if learner is not None else ref, ref)
    return shown[score], valid, sel.select(scores, valid, ratio, "batch")


def _windows(tokens: TokenStore, seq_len: int, passages: int) -> tuple[list, np.ndarray]:
    """The windows to show (a spread over the domains) and their ids; a store shorter than one
    window shows what there is. Their ids are checked against the store's vocabulary."""
    n_full = tokens.n_tokens // seq_len
    if not n_full:
        indices, ids = [0], np.asarray(tokens.tokens[:], dtype=np.int64)[None]
    else:
        window_domains = common.domains_at(tokens, np.arange(n_full) * seq_len)
        indices = page.pick_windows(n_full, passages, window_domains)
        ids = window_ids(tokens.tokens, seq_len, indices)
    common.check_ids(ids, tokens.vocab_size)
    return indices, ids


def _noise(tokens: TokenStore, indices, seq_len: int, length: int) -> np.ndarray | None:
    """The windows' ground-truth noise marks (a demo store's), or None."""
    if tokens.noise_mask is None:
        return None
    return np.stack([tokens.noise_mask[i * seq_len : i * seq_len + length] for i in indices])


def _passage_domains(tokens: TokenStore, indices, seq_len: int, show: int) -> list | None:
    """Per passage, the domains of the documents its shown tokens belong to."""
    if tokens.doc_domains is None:
        return None
    found = []
    for i in indices:
        first, last = i * seq_len, min(i * seq_len + show, tokens.n_tokens) - 1
        d_first, d_last = np.searchsorted(tokens.doc_offsets, [first, last], "right") - 1
        starts = np.maximum(tokens.doc_offsets[d_first : d_last + 1], first)
        found.append(", ".join(dict.fromkeys(common.domains_at(tokens, starts))))
    return found


def _summary(n_passages: int, selected, valid, noise, score: str) -> str:
    summary = (
        f"{n_passages} passages, {int(selected.sum()):,} of {int(valid.sum()):,} scored "
        f"tokens selected ({score})"
    )
    if noise is not None and (valid & noise).any():
        noisy, clean = valid & noise, valid & ~noise
        summary += (
            f"; selected {selected[noisy].mean():.0%} of noise tokens vs "
            f"{selected[clean].mean():.0%} of clean ones"
        )
    return summary
