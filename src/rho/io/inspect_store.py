"""`rho inspect`: a one-screen summary of a TokenStore or LossStore (and, with --verify, a check
of its content hashes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rho.errors import UserError
from rho.io.files import read_json
from rho.io.store import LossStore, TokenStore, loss_summary, n_windows
from rho.io.store_files import CHUNK, LOSS_STORE, TOKEN_STORE


def count_true(mask: np.ndarray) -> int:
    """True entries of a memory-mapped bool array, read in chunks."""
    return sum(int(np.count_nonzero(mask[i : i + CHUNK])) for i in range(0, len(mask), CHUNK))


def describe(path: str | Path, verify: bool = False) -> str:
    """A short human summary of a TokenStore or LossStore."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise UserError(f"{path} is not a store directory (no meta.json)")
    kind = read_json(path / "meta.json").get("format")
    if kind == TOKEN_STORE:
        lines = describe_tokens(TokenStore(path), verify)
    elif kind == LOSS_STORE:
        lines = describe_losses(LossStore(path), verify)
    else:
        raise UserError(f"{path} is neither a TokenStore nor a LossStore")
    return "\n".join([f"{path}", *lines])


def describe_tokens(store: TokenStore, verify: bool) -> list[str]:
    if verify:
        store.verify()
    lengths = np.diff(store.doc_offsets)
    lines = [
        f"  TokenStore v{store.meta['version']}: {store.n_tokens:,} tokens "
        f"({store.tokens.dtype.name}), {store.n_docs:,} documents "
        f"(mean {lengths.mean():.0f} tokens)",
        f"  vocab {store.vocab_size:,}, eos id {store.eos_id}, content {store.content_hash[:12]}",
    ]
    if store.doc_domains is not None:  # indices checked against the names by TokenStore
        names = store.domain_names
        counts = np.bincount(store.doc_domains, weights=lengths, minlength=len(names))
        pairs = zip(names, counts, strict=True)
        share = ", ".join(f"{name} {c / store.n_tokens:.0%}" for name, c in pairs)
        lines.append(f"  domains (share of tokens): {share}")
    if store.noise_mask is not None:
        marked = count_true(store.noise_mask)
        lines.append(f"  noise mask: {marked / store.n_tokens:.1%} of tokens marked noise")
    if store.loss_mask is not None:
        carried = count_true(store.loss_mask)
        lines.append(
            f"  loss mask: yes, {carried:,} response tokens ({carried / store.n_tokens:.1%}) "
            "carry loss; prompts carry none"
        )
    else:
        lines.append("  loss mask: no (every token carries loss)")
    for source in store.meta["sources"][:5]:
        domain = f" (domain {source['domain']})" if source.get("domain") else ""
        lines.append(f"  source {source.get('path')}{domain}")
    lines.append("  complete: yes" + (" (content hash verified)" if verify else ""))
    return lines


def describe_losses(store: LossStore, verify: bool) -> list[str]:
    if verify and store.complete:
        store.verify()
    n = len(store.ref_loss)
    stats = loss_summary(store.ref_loss, store.seq_len)
    windows = n_windows(n, store.seq_len)
    lines = [
        f"  LossStore v{store.meta['version']}: {n:,} tokens, seq_len {store.seq_len} "
        f"({windows:,} windows), model {store.meta.get('model')} "
        f"({store.meta.get('score_dtype') or '?'})",
        f"  token hash {store.token_hash[:12]}, "
        f"model hash {str(store.meta.get('model_hash'))[:12]}",
    ]
    masked_out = int(store.meta["n_masked_out"])
    also = f" and the {masked_out:,} that carry no loss" if masked_out else ""
    if stats["scored"]:
        lines.append(
            f"  loss mean {stats['mean']:.3f}, p5/p50/p95 {percentiles(stats)} "
            f"(nats/token; NaN at the {windows:,} window starts{also})"
        )
    if store.has_entropy:
        ent = loss_summary(store.ref_entropy, store.seq_len)
        lines.append(
            f"  entropy: yes, mean {ent['mean']:.3f}, p5/p50/p95 {percentiles(ent)} (nats, the "
            "reference's next-token distribution)"
        )
    else:
        lines.append("  entropy: no (`rho score --entropy` stores it)")
    if store.meta["loss_mask"]:
        lines.append(
            f"  loss mask: yes, only the {stats['scored']:,} tokens that carry loss were "
            "scored (response tokens of conversations that start in their window)"
        )
    else:
        lines.append("  loss mask: no")
    if store.complete:
        hashes = "loss and entropy hashes" if store.has_entropy else "loss hash"
        state = "yes" + (f" ({hashes} verified)" if verify else "")
    else:
        state = f"no ({stats['missing'] - masked_out:,} tokens not scored yet: rerun `rho score`)"
    lines.append(f"  complete: {state}")
    return lines


def percentiles(stats: dict) -> str:
    return f"{stats['p5']:.2f}/{stats['p50']:.2f}/{stats['p95']:.2f}"
