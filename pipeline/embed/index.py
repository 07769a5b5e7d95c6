"""FAISS indexes and search: embeddings in; each query's best corpus rows out.

In: an embedding matrix (an array or a memory map), the rows that form the corpus, the
rows that are queries, ``k`` and an :class:`IndexConfig`. Out: for every query its
``k`` best corpus positions and inner-product scores, best first.

The index is chosen by corpus size: exact inner product (the corpus scanned in blocks
from the memory map, results merged in a heap) below ``ivf_threshold``, an IVF index
trained on a seeded sample with its inverted lists on disk above it (memory does not
grow with the corpus), HNSW on request. :func:`cached_search` keeps results in the
search cache (:class:`~pipeline.embed.cache.SearchCache`), so a rebuild over the same
texts (mining, the consistency filter) does not search again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.progress import progress_bar

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("auto", "flat", "ivf", "hnsw")
_CORPUS_BLOCK = 131_072
_QUERY_BLOCK = 16_384


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index a search uses, and its settings.

    Attributes:
        index: ``auto`` (flat below ``ivf_threshold`` corpus texts, IVF above), or
            ``flat``, ``ivf``, ``hnsw``.
        ivf_threshold: corpus size from which ``auto`` uses IVF.
        nlist: IVF lists; None for ``2 * sqrt(corpus size)``.
        nprobe: IVF lists searched per query.
        ivf_train_size: IVF training sample size; None for ``40 * nlist``.
        hnsw_m: HNSW graph degree.
        hnsw_ef_search: HNSW search breadth.
        seed: seed of the IVF training sample and k-means.
    """

    index: IndexKind = "auto"
    ivf_threshold: int = 250_000
    nlist: int | None = None
    nprobe: int = 64
    ivf_train_size: int | None = None
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise ValueError(f"index must be auto, flat, ivf or hnsw, got {self.index!r}")
        if self.nprobe < 1 or self.hnsw_m < 2:
            raise ValueError("nprobe must be at least 1, hnsw_m at least 2")


def gather_rows(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``embeddings[rows]`` as a contiguous float32 array (a copy out of a memory map)."""
    return np.ascontiguousarray(embeddings[rows], dtype=np.float32)


def resolve_index_kind(config: IndexConfig, corpus_size: int) -> str:
    """The index a run uses: the configured one, or flat/IVF by corpus size for ``auto``."""
    if config.index != "auto":
        return config.index
    return "flat" if corpus_size < config.ivf_threshold else "ivf"


def search_flat(
    embeddings: np.ndarray, corpus_rows: np.ndarray, query_rows: np.ndarray, k: int, bar: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: the corpus scanned in blocks (from a memory map), the
    ``k`` best of each query kept in a FAISS result heap; scores and corpus positions."""
    import faiss

    dim = embeddings.shape[1]
    heap = faiss.ResultHeap(len(query_rows), k, keep_max=True)
    for c_start in range(0, len(corpus_rows), _CORPUS_BLOCK):
        block = gather_rows(embeddings, corpus_rows[c_start : c_start + _CORPUS_BLOCK])
        index = faiss.IndexFlatIP(dim)
        index.add(block)
        block_k = min(k, len(block))
        for q_start in range(0, len(query_rows), _QUERY_BLOCK):
            queries = gather_rows(embeddings, query_rows[q_start : q_start + _QUERY_BLOCK])
            scores, ids = index.search(queries, block_k)
            ids = np.where(ids >= 0, ids + c_start, -1)
            heap.add_result_subset(np.arange(q_start, q_start + len(queries), dtype=np.int64), scores, ids)
            bar.update(len(queries))
    heap.finalize()
    return heap.D, heap.I


def build_ivf_index(embeddings, corpus_rows: np.ndarray, config: IndexConfig, work_dir: Path):
    """An IVF-Flat inner-product index whose inverted lists live on disk (memory-mapped).

    Trained on a seeded sample of the corpus, filled block by block into partial
    indexes written to ``work_dir`` and merged into one on-disk list file, so the
    RAM used does not grow with the corpus.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    n, dim = len(corpus_rows), embeddings.shape[1]
    nlist = config.nlist or int(min(max(16, round(2 * np.sqrt(n))), 65_536))
    nlist = max(1, min(nlist, n))
    train_size = min(n, config.ivf_train_size or 40 * nlist)
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(n, size=train_size, replace=False))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = config.seed
    index.cp.niter = 10  # IVF needs coarse cells, not converged centroids
    index.train(gather_rows(embeddings, corpus_rows[sample]))
    trained_path = work_dir / "trained.index"
    faiss.write_index(index, str(trained_path))
    part_paths = []
    for start in range(0, n, _CORPUS_BLOCK):
        part = faiss.read_index(str(trained_path))
        block = gather_rows(embeddings, corpus_rows[start : start + _CORPUS_BLOCK])
        part.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
        path = work_dir / f"part-{len(part_paths):05d}.index"
        faiss.write_index(part, str(path))
        part_paths.append(str(path))
        del part
    index = faiss.read_index(str(trained_path))
    merge_ondisk(index, part_paths, str(work_dir / "lists.ivfdata"))
    for path in part_paths:
        os.unlink(path)
    index.nprobe = min(config.nprobe, nlist)
    return index


def build_hnsw_index(embeddings, corpus_rows: np.ndarray, config: IndexConfig):
    import faiss

    index = faiss.IndexHNSWFlat(embeddings.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    for start in range(0, len(corpus_rows), _CORPUS_BLOCK):
        index.add(gather_rows(embeddings, corpus_rows[start : start + _CORPUS_BLOCK]))
    index.hnsw.efSearch = max(config.hnsw_ef_search, 1)
    return index


def search_candidates(
    embeddings: np.ndarray,
    corpus_rows: np.ndarray,
    query_rows: np.ndarray,
    k: int,
    config: IndexConfig,
    work_dir: Path,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The ``k`` best corpus positions for each query row, best first.

    Returns:
        scores (nq, k) float32 and corpus positions (nq, k) int64 (-1 where fewer
        than ``k`` exist), and a description of the index used.
    """
    kind = resolve_index_kind(config, len(corpus_rows))
    k_eff = max(1, min(k, len(corpus_rows)))
    info: dict[str, Any] = {"kind": kind, "corpus_size": len(corpus_rows), "k": int(k)}
    if kind == "flat":
        passes = -(-len(corpus_rows) // _CORPUS_BLOCK)
        with progress_bar(len(query_rows) * passes, "searching (exact)", progress) as bar:
            scores, ids = search_flat(embeddings, corpus_rows, query_rows, k_eff, bar)
    else:
        index = build_ivf_index(embeddings, corpus_rows, config, work_dir) if kind == "ivf" else build_hnsw_index(
            embeddings, corpus_rows, config
        )
        if kind == "ivf":
            info.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
        else:
            info.update(hnsw_m=config.hnsw_m, ef_search=config.hnsw_ef_search)
        scores = np.empty((len(query_rows), k_eff), dtype=np.float32)
        ids = np.empty((len(query_rows), k_eff), dtype=np.int64)
        with progress_bar(len(query_rows), f"searching ({kind})", progress) as bar:
            for start in range(0, len(query_rows), _QUERY_BLOCK):
                queries = gather_rows(embeddings, query_rows[start : start + _QUERY_BLOCK])
                scores[start : start + len(queries)], ids[start : start + len(queries)] = index.search(queries, k_eff)
                bar.update(len(queries))
        del index
    if k_eff < k:
        scores = np.concatenate([scores, np.full((len(scores), k - k_eff), -np.inf, dtype=np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((len(ids), k - k_eff), -1, dtype=np.int64)], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    return scores, ids, info


def cached_search(
    embeddings: np.ndarray,
    keys: np.ndarray,
    corpus_rows: np.ndarray,
    query_rows: np.ndarray,
    k: int,
    config: IndexConfig,
    cache_dir: str | os.PathLike[str],
    cache_key: str,
    work_dir: Path,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """:func:`search_candidates` through the search cache of ``cache_key`` under ``cache_dir``.

    The entry is keyed by the embedding bytes, the queries' and corpus' text keys in
    order (``keys`` holds one row per embedding row), ``k`` and the index settings; a
    damaged entry is searched again.
    """
    from pipeline.embed.cache import SearchCache, embeddings_sha256

    searches = SearchCache(Path(cache_dir) / cache_key[:32] / "searches")
    search_key = searches.key(cache_key, keys[query_rows], keys[corpus_rows], k, config, embeddings_sha256(embeddings))
    found = searches.load(search_key)
    if found is not None:
        return found
    scores, positions, info = search_candidates(embeddings, corpus_rows, query_rows, k, config, work_dir, progress=progress)
    searches.store(search_key, scores, positions, info)
    return scores, positions, info
