"""Semantic dedup (SemDeDup-style): a dataset folder in; the pairs whose anchor is no near-copy of a kept one out.

In: a dataset folder, a :class:`SemanticDedupConfig` and an embedding cache. Out: a
dataset folder (:mod:`pipeline.curate.step`) without the pairs whose anchor embedding
lies within ``eps`` cosine distance (``1 - cosine similarity <= eps``) of a kept
anchor of the same k-means cluster, dropped as ``semantic_duplicate``, each
quarantined with the id of the row it duplicates and their similarity.

The steps (SemDeDup, Abbas et al. 2023; NeMo Curator's semantic dedup):

1. every anchor normalized; each distinct anchor embedded once, through the cache;
2. spherical k-means over the distinct anchors (FAISS, seeded);
3. in each cluster, anchors in the order ``which_to_keep`` gives (``hard``: farthest
   from the centroid first, SemDeDup's and NeMo Curator's default; ``easy``: nearest
   first; ``first``: row order), each kept unless it lies within ``eps`` of an anchor
   already kept (greedy, so a chain of near-copies keeps every other link that is far
   enough from the kept ones);
4. a kept anchor keeps its first row; its other rows (the same anchor text with
   another positive) are duplicates at similarity 1, as are all rows of an anchor
   that is a duplicate.

k-means and the similarity products run on one BLAS/OpenMP thread: their last bits,
and so a decision at the threshold, do not depend on the machine's thread count.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.corpus.shards import DEFAULT_ROWS_PER_SHARD
from pipeline.curate.step import Echo, Verdict, distinct_texts, embed_rows, encoder_record, normalized, run_step
from pipeline.progress import progress_bar

STAGE = "semantic_dedup"
SECTION = "semantic_dedup"
ANCHORS_PER_CLUSTER = 1_000
# FAISS's k-means wants about this many training points per centroid.
MIN_POINTS_PER_CLUSTER = 39
_BLOCK = 1_024
WhichToKeep = Literal["hard", "easy", "first"]


@dataclass(frozen=True)
class SemanticDedupConfig:
    """Which pairs semantic dedup drops (saved in the manifest).

    Attributes:
        model: a local sentence-transformers folder that embeds the anchors; None for the packaged all-MiniLM-L6-v2.
        eps: drop a pair whose anchor lies within this cosine distance (1 - similarity) of a kept anchor of its
            cluster (SemDeDup's and NeMo Curator's eps).
        n_clusters: k-means clusters; None for one per 1,000 distinct anchors. At most one per 39 anchors.
        max_iter: k-means iterations.
        which_to_keep: of near-copies, keep the one farthest from the centroid (hard), nearest (easy) or first in row order (first).
        seed: seed of k-means.
        batch_size: encoder batch size.
        rows_per_shard: the most rows an output shard holds.
    """

    model: str | None = None
    eps: float = 0.01
    n_clusters: int | None = None
    max_iter: int = 20
    which_to_keep: WhichToKeep = "hard"
    seed: int = 0
    batch_size: int = 64
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {self.eps}")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ValueError(f"n_clusters must be at least 1, got {self.n_clusters}")
        if self.which_to_keep not in ("hard", "easy", "first"):
            raise ValueError(f"which_to_keep must be hard, easy or first, got {self.which_to_keep!r}")
        if self.max_iter < 1 or self.batch_size < 1:
            raise ValueError("max_iter and batch_size must be at least 1")

    def clusters_for(self, anchors: int) -> int:
        """The clusters k-means makes for ``anchors`` distinct anchors."""
        wanted = self.n_clusters or math.ceil(anchors / ANCHORS_PER_CLUSTER)
        return max(1, min(wanted, anchors // MIN_POINTS_PER_CLUSTER))


def cluster_anchors(embeddings: np.ndarray, n_clusters: int, max_iter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k-means cluster and its similarity to the cluster's centroid (spherical k-means, FAISS)."""
    if n_clusters == 1:
        centroid = embeddings.astype(np.float64).sum(axis=0)
        centroid /= max(np.linalg.norm(centroid), 1e-12)
        return np.zeros(len(embeddings), dtype=np.int64), (embeddings @ centroid.astype(np.float32)).astype(np.float32)
    import faiss

    kmeans = faiss.Kmeans(embeddings.shape[1], n_clusters, niter=max_iter, seed=seed, spherical=True, verbose=False)
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    kmeans.train(data)
    similarity, cluster = kmeans.index.search(data, 1)
    return cluster[:, 0].astype(np.int64), similarity[:, 0].astype(np.float32)


def greedy_duplicates(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For rows in keep order: the kept row each one duplicates (-1 when kept) and their similarity.

    A row is a duplicate when its similarity to a row kept before it is at least
    ``threshold``; it then points at the most similar such row.
    """
    n = len(vectors)
    of = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n, dtype=np.float32)
    kept = np.zeros(n, dtype=bool)
    limit = np.float32(threshold)
    for start in range(0, n, _BLOCK):
        end = min(start + _BLOCK, n)
        scores = vectors[start:end] @ vectors[:end].T
        earlier = np.arange(end)[None, :] < np.arange(start, end)[:, None]
        near = earlier & (scores >= limit)
        kept[start:end] = True
        for row in np.flatnonzero(near.any(axis=1)):
            candidates = near[row] & kept[:end]
            if candidates.any():
                i = start + row
                best = int(np.argmax(np.where(candidates, scores[row], -np.inf)))
                kept[i], of[i], similarity[i] = False, best, scores[row, best]
    return of, similarity


def judge_semantic_duplicates(pairs: pl.DataFrame, config: SemanticDedupConfig, embedder: Any, work_dir: Any, progress: bool) -> Verdict:
    """Mark the rows whose anchor is within ``eps`` of a kept anchor as ``semantic_duplicate``."""
    from threadpoolctl import threadpool_limits

    # 1. distinct anchors, embedded
    anchors, positives = normalized(pairs.get_column("anchor")), normalized(pairs.get_column("positive"))
    empty = ((anchors.fill_null("") == "") | (positives.fill_null("") == "")).to_numpy()
    texts, row_anchor = distinct_texts(anchors)
    embeddings = np.asarray(embed_rows(texts, embedder, work_dir, progress))
    n = len(texts)
    n_clusters = config.clusters_for(n)

    # 2. clusters, 3. the greedy pass in each (one thread: the same bits on any machine)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.ones(n, dtype=np.float32)
    with threadpool_limits(limits=1):
        cluster, centroid_similarity = cluster_anchors(embeddings, n_clusters, config.max_iter, config.seed)
        first_seen = np.arange(n)
        if config.which_to_keep == "first":
            priority = first_seen
        else:
            closeness = centroid_similarity if config.which_to_keep == "easy" else -centroid_similarity
            priority = np.lexsort((first_seen, -closeness))
        order = np.lexsort((np.argsort(priority, kind="stable"), cluster))
        sizes = np.bincount(cluster, minlength=n_clusters)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        with progress_bar(n, "deduplicating", progress, unit="anchor") as bar:
            for c in range(n_clusters):
                members = order[bounds[c] : bounds[c + 1]]
                of, sims = greedy_duplicates(np.ascontiguousarray(embeddings[members]), 1.0 - config.eps)
                hit = of >= 0
                duplicate_of[members[hit]] = members[of[hit]]
                similarity[members[hit]] = sims[hit]
                bar.update(len(members))

    # 4. rows: the first row of a kept anchor stays
    ids = pairs.get_column("id").to_list()
    rows = np.arange(len(pairs))
    first_row = np.unique(row_anchor, return_index=True)[1]  # distinct anchors are numbered in order of first row
    is_first = first_row[row_anchor] == rows
    target_anchor = np.where(duplicate_of[row_anchor] >= 0, duplicate_of[row_anchor], row_anchor)
    dropped = ~empty & ~(is_first & (duplicate_of[row_anchor] < 0))
    reasons = np.where(empty, "empty_anchor_or_positive", np.where(dropped, "semantic_duplicate", None))
    details = pl.DataFrame(
        {
            "duplicate_of": [ids[first_row[t]] if d else None for t, d in zip(target_anchor, dropped)],
            "similarity": [
                round(float(similarity[a]) if duplicate_of[a] >= 0 else 1.0, 6) if d else None for a, d in zip(row_anchor, dropped)
            ],
        },
        schema={"duplicate_of": pl.String, "similarity": pl.Float64},
    )
    section = {
        "eps": config.eps,
        "which_to_keep": config.which_to_keep,
        "n_clusters": n_clusters,
        "distinct_anchors": n,
        "anchors_within_eps": int((duplicate_of >= 0).sum()),
        "rows_repeating_an_anchor": int((~is_first & ~empty).sum()),
        "cluster_sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
        "encoder": encoder_record(embedder, n),
    }
    return Verdict(reasons=pl.Series("reason", list(reasons), dtype=pl.String), details=details, section=section)


def deduplicate_semantically(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: SemanticDedupConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    encoder: str = "auto",
    force: bool = False,
    echo: Echo | None = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Drop the pairs whose anchor is a near-copy of a kept anchor (SemDeDup); write the rest as a dataset folder.

    The arguments, what it returns and raises: as every model step's
    (:mod:`pipeline.curate.step`); ``config`` holds the dedup settings.

    Example::

        from pipeline.curate import SemanticDedupConfig, deduplicate_semantically

        manifest = deduplicate_semantically("corpus/qqp-duplicates", "corpus/qqp-duplicates-semdedup", SemanticDedupConfig(eps=0.05))
        print(manifest["dropped"].get("semantic_duplicate", 0))
    """
    from pipeline.embed.embedder import Embedder

    embedder = Embedder(config.model, device, encoder, cache_dir, config.batch_size)

    def judge(pairs: pl.DataFrame, work_dir: Any) -> Verdict:
        return judge_semantic_duplicates(pairs, config, embedder, work_dir, progress)

    return run_step(STAGE, SECTION, dataset_dir, out_dir, config, judge, {"model_fingerprint": embedder.fingerprint},
                    force=force, echo=echo)  # fmt: skip
