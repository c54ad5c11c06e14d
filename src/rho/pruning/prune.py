"""`rho prune`: offline data pruning, whole documents or windows dropped before training.

Each unit (a document, or a training window) is scored by the mean over its tokens of a token
score (rho.selection.select.token_scores): base − reference loss (``excess``, the CoLoR-Filter
score: how
much better the reference, trained on the target distribution, predicts the unit than a base
model does), the reference loss (``reference``, lower = more like the target distribution), the
reference's entropy (``reference-entropy``, lower = the reference is surer), or the rank average
of the reference's loss and entropy (``reference+entropy``, ranks over every scored token of the
store). The best ``keep`` fraction of units survives. ``--by prototype`` needs no losses: units
are embedded with a model (rho.scoring.embed), clustered, optionally deduplicated, and kept by their
distance to the nearest centroid (rho.pruning.prototype: D4, SemDeDup).

Alignment: pruning windows keeps every surviving window whole and in order, so the new stream's
windows are exactly the old ones and their reference losses carry over unchanged. Pruning
documents changes the windows (and so each token's context): the new TokenStore must be scored
again, which happens here when ``ref_model`` is given, and is otherwise left to `rho score`
(the command is printed), never silently misaligned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rho import distributed as dist
from rho.errors import UserError
from rho.io.disk import check_output_path
from rho.io.files import building, check_not_input, mark_output, output_lock, write_json_atomic
from rho.io.store import LossStore, TokenStore, window_bounds, write_token_store
from rho.scoring.loss_writer import check_mostly_finite, loss_store_meta, write_loss_store
from rho.scoring.score import score_store
from rho.selection.select import ENTROPY_SCORES, check_ratio, n_keep, rank_average, token_scores

UNITS = ("document", "window")
PRUNED_KIND = "rho.Pruned"  # out/: tokens/, ref_losses/, prune.json
BYS = ("excess", "reference", "reference-entropy", "reference+entropy", "prototype")


def unit_bounds(tokens: TokenStore, unit: str, seq_len: int) -> np.ndarray:
    """(n_units, 2) [start, end) token spans of the documents or windows."""
    if unit == "document":
        offsets = np.asarray(tokens.doc_offsets)
        return np.stack([offsets[:-1], offsets[1:]], axis=1)
    n = tokens.n_windows(seq_len)
    return np.array([window_bounds(w, seq_len, tokens.n_tokens) for w in range(n)], dtype=np.int64)


def unit_means(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Mean of the non-NaN values inside each span (NaN for a span with none)."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    start, end = bounds[:, 0], bounds[:, 1]
    n = counts[end] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[end] - sums[start]) / np.maximum(n, 1), np.nan)


def unit_scores(
    ref_loss: np.ndarray,
    bounds: np.ndarray,
    base_loss: np.ndarray | None = None,
    *,
    by: str | None = None,
    entropy: np.ndarray | None = None,
) -> np.ndarray:
    """Higher = keep first: the mean over each unit's scored tokens of the token score ``by``
    (rho.selection.select; default ``excess`` with base losses, else ``reference``): mean(base −
    ref),
    −mean(ref), −mean(entropy), or the mean of each token's rank average of reference loss and
    entropy over the whole store."""
    by = by or ("excess" if base_loss is not None else "reference")
    ref = torch.as_tensor(np.asarray(ref_loss, dtype=np.float64))
    base = None if base_loss is None else torch.as_tensor(np.asarray(base_loss, np.float64))
    ent = None if entropy is None else torch.as_tensor(np.asarray(entropy, dtype=np.float64))
    learner = base if base is not None else ref  # only "excess" reads it (base − reference)
    scores = token_scores(by, learner, ref, None, ent)
    if by == "reference+entropy":  # every scored token of the store is one population
        scores = rank_average(scores, ~(torch.isnan(ref) | torch.isnan(ent)))
    return unit_means(scores.double().numpy(), bounds)


def keep_top(scores: np.ndarray, keep: float) -> np.ndarray:
    """Bool mask of the ceil(keep · n) best-scoring units (NaN last, ties by position)."""
    check_ratio(keep, "--keep")
    key = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-key, kind="stable")
    count = n_keep(keep, len(scores))
    if count == 0:
        raise UserError(
            f"--keep {keep:g} keeps none of the {len(scores):,} units: keep at least "
            f"{1 / max(1, len(scores)):.3g}"
        )
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:count]] = True
    return mask


def _gather(array: np.ndarray | None, bounds: np.ndarray) -> np.ndarray | None:
    if array is None:
        return None
    return np.concatenate([np.asarray(array[a:b]) for a, b in bounds]) if len(bounds) else None


def dropped_report(tokens: TokenStore, bounds: np.ndarray, kept: np.ndarray) -> dict:
    """What was dropped, in tokens: overall, by domain, and against the noise mask."""
    lengths = bounds[:, 1] - bounds[:, 0]
    report = {
        "units": int(len(kept)),
        "units_kept": int(kept.sum()),
        "tokens": int(lengths.sum()),
        "tokens_kept": int(lengths[kept].sum()),
    }
    kept_tokens = np.zeros(tokens.n_tokens, dtype=bool)
    for a, b in bounds[kept]:
        kept_tokens[a:b] = True
    domains = tokens.token_domains()
    if domains is not None:
        report["kept_fraction_by_domain"] = {}
        for i, name in enumerate(tokens.domain_names):
            in_domain = domains == i
            if in_domain.any():
                report["kept_fraction_by_domain"][name] = float(kept_tokens[in_domain].mean())
    if tokens.noise_mask is not None:
        noise = np.asarray(tokens.noise_mask)
        report["kept_fraction_noise"] = float(kept_tokens[noise].mean()) if noise.any() else None
        report["kept_fraction_clean"] = float(kept_tokens[~noise].mean())
    return report


def prune_store(
    tokens: str | Path | TokenStore,
    losses: str | Path | LossStore | None,
    out: str | Path,
    *,
    keep: float = 0.5,
    unit: str = "document",
    by: str = "reference",
    base_losses: str | Path | LossStore | None = None,
    ref_model: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    prototype: dict | None = None,
) -> dict:
    """Keep the best ``keep`` fraction of units; write ``out/tokens`` (TokenStore) and
    ``out/ref_losses`` (LossStore, carried over for windows or re-scored for documents).
    ``by="prototype"`` takes ``prototype``: embed_model (required), embeddings, seq_len,
    batch_size, clusters, keep_from, dedup, seed, device (see rho.commands.prune); ``losses`` is
    optional then (given, their seq_len is the windows' and they are carried over)."""
    check_choices(unit, by, losses, base_losses)
    opts = dict(prototype or {})
    tokens, losses, base, seq_len = open_inputs(tokens, losses, base_losses, by, opts)
    out = Path(out)
    inputs = [tokens.path, None if losses is None else losses.path]
    inputs += [None if base is None else base.path, ref_model, opts.get("embed_model")]
    check_not_input(out, [p for p in inputs if p and Path(p).exists()])
    check_output_path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    if by == "prototype":
        from rho.pruning.prototype import embed_and_select

        kept, extra = embed_and_select(tokens, unit, seq_len, keep, opts, out, inputs)
        if dist.rank() != 0:
            return {}  # the other ranks helped embed; rank 0 clusters and writes
        seq_len = seq_len or extra["embeddings"]["seq_len"]
        bounds = unit_bounds(tokens, unit, seq_len)
    with output_lock(out):
        if by == "prototype":
            report = dropped_report(tokens, bounds, kept)
            report.update(unit=unit, by=by, keep=keep, seq_len=seq_len, **extra)
            _write_pruned(tokens, losses, out, bounds, kept, report, overwrite)
        else:
            report = _prune(tokens, losses, base, out, keep, unit, by, overwrite)
        if unit == "document" and ref_model is not None:
            score_store(ref_model, out / "tokens", out / "ref_losses", seq_len, progress=progress)
    if unit == "document" and ref_model is None and progress:
        print(
            "documents were pruned, so windows changed: score the new store with\n"
            f"  rho score --model REF_MODEL --tokens {out / 'tokens'} "
            f"--out {out / 'ref_losses'} --seq-len {seq_len}"
        )
    return report


def check_choices(unit: str, by: str, losses, base_losses) -> None:
    """One line for a unit, score or combination of stores that cannot prune."""
    if unit not in UNITS:
        raise UserError(f"--unit must be one of {', '.join(UNITS)}")
    if by not in BYS:
        raise UserError(f"--by must be one of {', '.join(BYS)}")
    if by == "excess" and base_losses is None:
        raise UserError("--by excess needs --base-losses (a base model's LossStore)")
    if base_losses is not None and by != "excess":
        raise UserError(f"--base-losses is for --by excess, not --by {by}")
    if by != "prototype" and losses is None:
        raise UserError(f"--by {by} needs --losses (the reference LossStore)")


def open_inputs(tokens, losses, base_losses, by: str, opts: dict):
    """(TokenStore, LossStore or None, base LossStore or None, seq_len or None), opened and
    checked to fit together."""
    tokens = tokens if isinstance(tokens, TokenStore) else TokenStore(tokens)
    if losses is not None:
        losses = losses if isinstance(losses, LossStore) else LossStore(losses)
        losses.check_matches(tokens)
        if by in ENTROPY_SCORES:
            losses.require_entropy(f"--by {by}")
    seq_len = losses.seq_len if losses is not None else opts.get("seq_len")
    if losses is not None and opts.get("seq_len") not in (None, seq_len):
        raise UserError(f"--seq-len {opts['seq_len']} differs from the losses' seq_len {seq_len}")
    base = None
    if by == "excess":
        base = base_losses if isinstance(base_losses, LossStore) else LossStore(base_losses)
        base.check_matches(tokens, seq_len)
    return tokens, losses, base, seq_len


def _prune(tokens, losses, base, out: Path, keep, unit, by, overwrite) -> dict:
    """Score the units by their losses, keep the best, and write the output."""
    seq_len = losses.seq_len
    # every value is read to rank anyway: one more pass refuses values damaged since `rho
    # score` finished them (mostly NaN), instead of trusting the share it recorded
    for store in (losses, base):
        if store is not None:
            check_mostly_finite(store.ref_loss, seq_len, str(store.path), tokens)
    if by in ENTROPY_SCORES:
        check_mostly_finite(losses.ref_entropy, seq_len, str(losses.path), tokens, "entropies")
    bounds = unit_bounds(tokens, unit, seq_len)
    scores = unit_scores(
        losses.ref_loss,
        bounds,
        None if base is None else base.ref_loss,
        by=by,
        entropy=losses.ref_entropy if by in ENTROPY_SCORES else None,
    )
    kept = keep_top(scores, keep)
    report = dropped_report(tokens, bounds, kept)
    report.update(unit=unit, by=by, keep=keep, seq_len=seq_len)
    _write_pruned(tokens, losses, out, bounds, kept, report, overwrite)
    return report


def write_windows(tokens: TokenStore, out: str | Path, windows: np.ndarray, seq_len: int,
                  report: dict) -> None:  # fmt: skip
    """Write the given whole windows of ``tokens`` (kept in stream order) as ``out/tokens``:
    a store whose windows are exactly those (each one a document), with ``report`` in
    ``out/prune.json``."""
    bounds = unit_bounds(tokens, "window", seq_len)
    kept = np.zeros(len(bounds), dtype=bool)
    kept[np.asarray(windows, dtype=np.int64)] = True
    report = {"unit": "window", **report, "seq_len": seq_len}
    _write_pruned(tokens, None, Path(out), bounds, kept, report, overwrite=False)


def _write_pruned(tokens, losses, out: Path, bounds, kept, report: dict, overwrite) -> None:
    """Write out/tokens, out/ref_losses (windows, when there are losses) and out/prune.json
    into place at once."""
    unit = report["unit"]
    spans = bounds[kept]
    new_tokens = _gather(tokens.tokens, spans)
    lengths = spans[:, 1] - spans[:, 0]
    # Windows may cut documents: then each kept window is one "document" of the new store.
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if unit == "document":
        doc_domains = None if tokens.doc_domains is None else np.asarray(tokens.doc_domains)[kept]
    else:
        domains = tokens.token_domains()
        doc_domains = None if domains is None else domains[spans[:, 0]]
    loss_mask = tokens.loss_mask
    if unit == "window" and loss_mask is not None:
        # each kept window becomes a document of its own: what carried loss in it is now the mask
        # (the tail of a conversation begun in an earlier window carried none, and must not)
        loss_mask = tokens.loss_positions(0, tokens.n_tokens, report["seq_len"])
    with building(out, overwrite, PRUNED_KIND) as tmp:
        write_token_store(
            tmp / "tokens",
            new_tokens,
            offsets,
            tokens.tokenizer_dir,
            vocab_size=tokens.vocab_size,
            eos_id=tokens.eos_id,
            doc_domains=doc_domains,
            domain_names=tokens.domain_names or None,
            noise_mask=_gather(tokens.noise_mask, spans),
            loss_mask=_gather(loss_mask, spans),
            sources=[{"path": str(tokens.path), "pruned": {k: report[k] for k in ("unit", "by")}}],
        )
        pruned = TokenStore(tmp / "tokens")
        if unit == "window" and losses is not None:
            _write_carried_losses(tmp / "ref_losses", pruned, losses, spans)
        write_json_atomic(tmp / "prune.json", report)
        mark_output(tmp, PRUNED_KIND)


def _write_carried_losses(path: Path, pruned: TokenStore, losses: LossStore, spans) -> None:
    """Kept whole windows keep their losses (and entropies): same windows, same contexts, same
    numbers. (``path`` lies inside the temporary output directory, so this write is atomic
    too.)"""
    meta = loss_store_meta(
        pruned,
        losses.seq_len,
        losses.meta.get("batch_size", 16),
        model=losses.meta.get("model"),
        model_hash=losses.meta.get("model_hash"),
        score_dtype=losses.meta.get("score_dtype"),
        carried_from=str(losses.path),
    )
    entropy = _gather(losses.ref_entropy, spans)
    write_loss_store(path, pruned, _gather(losses.ref_loss, spans), meta, entropy)
