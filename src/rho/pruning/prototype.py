"""Prototype pruning (Sorscher et al., 2022) with SemDeDup (Abbas et al., 2023), as in D4
(Tirumala et al., 2023): pure functions over unit embeddings.

- ``kmeans``: faiss-cpu's k-means on L2-normalised vectors (spherical, seeded): a centroid per
  cluster and each unit's nearest centroid.
- ``semdedup``: inside each cluster, a unit whose cosine similarity to an earlier unit (by
  position) of the same cluster is at least the threshold is a near-duplicate and dropped; the
  first of each group survives.
- ``keep_by_distance``: difficulty = cosine distance to the nearest centroid; keep the hardest
  (farthest, for abundant data) or easiest (nearest, for scarce data) fraction.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rho import distributed as dist
from rho.errors import UserError
from rho.io.files import check_not_input
from rho.selection.select import check_ratio, n_keep

KEEP_FROM = ("hard", "easy")
BLOCK = 512  # columns of a cluster's similarity matrix computed at a time


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Float32 rows of unit L2 norm (an all-zero row stays zero)."""
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def default_clusters(n: int) -> int:
    """round(sqrt(n)), at least 2, at most n."""
    return min(n, max(2, round(math.sqrt(n))))


def check_choices(keep: float, dedup: float | None, keep_from: str, clusters: int | None):
    """One line for each option out of range (before any work)."""
    check_ratio(keep, "--keep")
    if dedup is not None and not (isinstance(dedup, (int, float)) and 0.0 < dedup <= 1.0):
        raise UserError(f"--dedup must be in (0, 1], got {dedup}")
    if keep_from not in KEEP_FROM:
        raise UserError(f"--keep-from must be one of {', '.join(KEEP_FROM)}, got {keep_from!r}")
    if clusters is not None and clusters < 1:
        raise UserError(f"--clusters must be positive, got {clusters}")


def check_options(n: int, clusters: int | None, keep: float, dedup: float | None, keep_from):
    """``check_choices``, and k within the n units; returns k."""
    check_choices(keep, dedup, keep_from, clusters)
    if n == 0:
        raise UserError("no units to cluster (empty store)")
    k = default_clusters(n) if clusters is None else clusters
    if k > n:
        raise UserError(f"--clusters {k} must be between 1 and the number of units ({n:,})")
    return k


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 20):
    """Spherical k-means of normalised rows ``x`` with faiss: (centroids [k, d], nearest
    centroid per row, cosine similarity to it)."""
    try:
        import faiss
    except ImportError:
        raise UserError("--by prototype needs faiss: pip install faiss-cpu") from None
    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1
    )
    km.train(x)
    similarity, nearest = km.index.search(x, 1)
    return km.centroids.copy(), nearest[:, 0].astype(np.int64), similarity[:, 0]


def semdedup(x: np.ndarray, clusters: np.ndarray, threshold: float) -> np.ndarray:
    """Bool mask of survivors: in each cluster, a row whose cosine similarity to an earlier row
    of the cluster is >= ``threshold`` is dropped (SemDeDup's rule, order = position)."""
    keep = np.ones(len(x), dtype=bool)
    for c in np.unique(clusters):
        members = np.flatnonzero(clusters == c)
        v = x[members]
        for j0 in range(0, len(members), BLOCK):
            j1 = min(j0 + BLOCK, len(members))
            sims = v[:j1] @ v[j0:j1].T  # rows: every earlier member; columns: this block
            earlier = np.arange(j1)[:, None] < np.arange(j0, j1)[None, :]
            best = np.where(earlier, sims, -np.inf).max(axis=0)
            keep[members[j0:j1]] = best < threshold - 1e-6  # float noise on exact duplicates
    return keep


def keep_by_distance(distance: np.ndarray, eligible: np.ndarray, keep: float, keep_from: str):
    """Bool mask: the ceil(keep · n) eligible units farthest from (hard) or nearest to (easy)
    their centroid, n counting every unit; fewer if fewer are eligible. Ties by position."""
    check_ratio(keep, "--keep")
    if keep_from not in KEEP_FROM:
        raise UserError(f"--keep-from must be one of {', '.join(KEEP_FROM)}")
    key = np.where(eligible, distance if keep_from == "hard" else -distance, -np.inf)
    count = min(n_keep(keep, len(distance)), int(eligible.sum()))
    if count == 0:
        raise UserError(f"--keep {keep:g} keeps none of the {len(distance):,} units")
    mask = np.zeros(len(distance), dtype=bool)
    mask[np.argsort(-key, kind="stable")[:count]] = True
    return mask


def prototype_select(
    vectors: np.ndarray,
    keep: float,
    *,
    keep_from: str = "hard",
    clusters: int | None = None,
    dedup: float | None = None,
    seed: int = 0,
    niter: int = 20,
) -> tuple[np.ndarray, dict]:
    """Cluster, deduplicate (optional), keep by distance to the centroid. Returns the kept mask
    and a report: k, units dropped by dedup, per-cluster unit and kept counts."""
    vectors = np.asarray(vectors)
    k = check_options(len(vectors), clusters, keep, dedup, keep_from)
    x = normalise(vectors)
    if not np.isfinite(x).all():  # faiss would fail on them; rho.scoring.embed never writes them
        raise UserError("the embeddings hold NaN or inf values (a corrupted embedding store?)")
    _, nearest, similarity = kmeans(x, k, seed, niter)
    distance = 1.0 - similarity.astype(np.float64)
    survivors = semdedup(x, nearest, dedup) if dedup is not None else np.ones(len(x), bool)
    kept = keep_by_distance(distance, survivors, keep, keep_from)
    report = {
        "clusters": k,
        "keep_from": keep_from,
        "dedup": dedup,
        "dropped_by_dedup": int((~survivors).sum()),
        "cluster_units": np.bincount(nearest, minlength=k).tolist(),
        "cluster_kept": np.bincount(nearest[kept], minlength=k).tolist(),
        "mean_distance_kept": float(distance[kept].mean()),
        "mean_distance_all": float(distance.mean()),
    }
    return kept, report


def embed_and_select(tokens, unit: str, seq_len: int | None, keep: float, opts: dict, out: Path,
                     inputs) -> tuple[np.ndarray | None, dict]:  # fmt: skip
    """`rho prune --by prototype`'s work before writing: embed the units (rho.scoring.embed:
    resumable,
    shared by torchrun ranks), then on rank 0 cluster and choose. Returns (kept mask, report
    fields); other ranks get (None, {})."""
    from rho.io.disk import check_output_path
    from rho.models import load_model
    from rho.scoring.embed import embed_units
    from rho.scoring.windows import default_device

    embed_model = opts.get("embed_model")
    if not embed_model:
        raise UserError("--by prototype needs --embed-model (a model directory or hub name)")
    keep_from, dedup, clusters = opts.get("keep_from", "hard"), opts.get("dedup"), opts.get("k")
    check_choices(keep, dedup, keep_from, clusters)
    known = tokens.n_docs if unit == "document" else seq_len and tokens.n_windows(seq_len)
    if known is not None:
        check_options(known, clusters, keep, dedup, keep_from)  # empty store, k > units: now
    emb_path = opts.get("embeddings")
    if emb_path is not None:
        check_not_input(emb_path, [out], "--embeddings")
        check_output_path(emb_path, "--embeddings")
    device = opts.get("device") or default_device()
    dist.init_from_env(device)
    store = embed_units(
        load_model(embed_model),
        str(embed_model),
        tokens,
        unit,
        seq_len,
        emb_path,
        batch_size=opts.get("batch_size", 16),
        device=device,
        inputs=tuple(p for p in inputs if p),
        layer=opts.get("layer", -1),
    )
    if out.resolve() in (store.path.resolve(), *store.path.resolve().parents):
        raise UserError(f"--out {out} would hold the embeddings {store.path}: choose another")
    if dist.rank() != 0:
        return None, {}
    kept, report = prototype_select(
        store.embeddings,
        keep,
        keep_from=keep_from,
        clusters=clusters,
        dedup=dedup,
        seed=opts.get("seed", 0),
    )
    report["embeddings"] = {
        "path": str(store.path),
        "model": str(embed_model),
        "model_hash": store.meta["model_hash"],
        "seq_len": store.meta["seq_len"],
        "layer": store.meta.get("layer", -1),
    }
    return kept, report
