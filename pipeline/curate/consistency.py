"""Consistency filter: a dataset folder in; the pairs whose positive ranks near the top for its anchor out.

In: a dataset folder (pairs or triplets; negatives are carried through, not judged), a
:class:`ConsistencyConfig` and an embedding cache. Out: a dataset folder
(:mod:`pipeline.curate.step`) keeping a pair only when, by the model, its positive ranks
in the top ``k`` of the candidates for its anchor (E5's and contrastors' filter;
contrastors' default ``k = 2``); the others are dropped as ``inconsistent``, each
quarantined with its rank and positive score. The manifest's ``consistency`` section
holds the rank histogram (ranks 1 to ``max(k, 10)``, then beyond) and the positive
scores.

The steps:

1. the text table of mining (:mod:`pipeline.mining.texts`): every text normalized,
   each distinct text once; the candidates are the dataset's distinct positives plus
   the ``extra_corpus`` texts;
2. embeddings through the cache (:func:`pipeline.curate.step.embed_rows`): a text that
   mining embedded with the same model is not encoded again;
3. one FAISS search for the distinct anchors (:func:`pipeline.embed.index.cached_search`);
4. a pair's rank is 1 + the candidates that score above its positive by more than
   ``1e-6``, not counting the anchor's own positives and the texts equal to the anchor
   or one of them after normalization and case folding (mining's guard groups): they
   are not competitors. The search asks for enough candidates that these exclusions
   never hide a competitor, so ranks up to the histogram's depth are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from pipeline.corpus.schema import PAIR_COLUMNS
from pipeline.corpus.shards import DEFAULT_ROWS_PER_SHARD
from pipeline.curate.step import Echo, Verdict, embed_rows, encoder_record, run_step
from pipeline.embed.index import IndexConfig, cached_search, gather_rows

STAGE = "consistency"
SECTION = "consistency"
RANK_DEPTH = 10
# Scores this close count as a tie, and a tie goes to the positive: the positive's score
# and the search's come from different products, equal texts may differ in the last bits.
TIE = 1e-6
_BLOCK = 65_536


@dataclass(frozen=True)
class ConsistencyConfig:
    """Which pairs the consistency filter keeps (saved in the manifest).

    Attributes:
        model: a local sentence-transformers folder that judges the pairs; None for the packaged all-MiniLM-L6-v2.
        k: keep a pair when its positive ranks in the top k of the candidates for its anchor (contrastors: 2).
        extra_corpus: dataset folders or Parquet files whose positive, negative* or text columns join the
            candidates (the dataset's own positives always are).
        batch_size: encoder batch size.
        rows_per_shard: the most rows an output shard holds.
        search: the FAISS index settings.
    """

    model: str | None = None
    k: int = 2
    extra_corpus: tuple[str, ...] = ()
    batch_size: int = 64
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    search: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        object.__setattr__(self, "extra_corpus", tuple(str(p) for p in self.extra_corpus))


def _excluded_codes(pair_anchor: np.ndarray, positive_tids: np.ndarray, anchor_tids: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``anchor index * n_texts + guard group`` of every group that is no competitor of an anchor."""
    n_texts = np.int64(len(group))
    own = np.arange(len(anchor_tids), dtype=np.int64) * n_texts + group[anchor_tids]
    positives = pair_anchor.astype(np.int64) * n_texts + group[positive_tids]
    return np.unique(np.concatenate([own, positives]))


def _search_depth(codes: np.ndarray, corpus_tids: np.ndarray, group: np.ndarray, depth: int) -> int:
    """Candidates to ask for so that ``depth`` competitors survive the exclusions of every anchor."""
    n_texts = np.int64(len(group))
    corpus_groups, sizes = np.unique(group[corpus_tids], return_counts=True)
    excluded_groups = codes % n_texts
    position = np.minimum(np.searchsorted(corpus_groups, excluded_groups), len(corpus_groups) - 1)
    in_corpus = np.where(corpus_groups[position] == excluded_groups, sizes[position], 0)
    per_anchor = np.bincount((codes // n_texts).astype(np.int64), weights=in_corpus)
    return depth + int(per_anchor.max(initial=0))


def rank_positives(
    candidate_tids: np.ndarray,
    candidate_scores: np.ndarray,
    pair_anchor: np.ndarray,
    positive_scores: np.ndarray,
    codes: np.ndarray,
    group: np.ndarray,
    depth: int,
) -> np.ndarray:
    """Each pair's rank among its anchor's competitors (1 = best), ``depth + 1`` for anything beyond ``depth``."""
    n_texts = np.int64(len(group))
    ranks = np.empty(len(pair_anchor), dtype=np.int64)
    for start in range(0, len(pair_anchor), _BLOCK):
        anchors = pair_anchor[start : start + _BLOCK].astype(np.int64)
        tids = candidate_tids[anchors]
        valid = tids >= 0
        competitor = valid & ~np.isin(anchors[:, None] * n_texts + group[np.maximum(tids, 0)], codes)
        above = competitor & (candidate_scores[anchors] > positive_scores[start : start + _BLOCK, None] + np.float32(TIE))
        ranks[start : start + len(anchors)] = np.minimum(above.sum(axis=1) + 1, depth + 1)
    return ranks


def judge_consistency(
    pairs: pl.DataFrame, extra: pl.Series, config: ConsistencyConfig, embedder: Any, work_dir: Any, progress: bool
) -> Verdict:
    """Rank every pair's positive for its anchor; mark the pairs beyond ``k`` as ``inconsistent``."""
    from pipeline.embed.cache import text_keys
    from pipeline.mining.output import score_histogram
    from pipeline.mining.texts import build_text_table

    # 1. the text table: anchors, positives and the extra corpus (negatives are not candidates)
    table = build_text_table(pairs.select(PAIR_COLUMNS).with_row_index("_row"), extra)
    rows = table.pairs.get_column("_row").to_numpy().astype(np.int64)
    anchor_tid = table.pairs.get_column("anchor_tid").to_numpy().astype(np.int64)
    positive_tid = table.pairs.get_column("positive_tid").to_numpy().astype(np.int64)

    # 2. embeddings, 3. the search
    embeddings = embed_rows(table.texts, embedder, work_dir, progress)
    anchor_tids, pair_anchor = np.unique(anchor_tid, return_inverse=True)
    positive_scores = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), _BLOCK):
        a = gather_rows(embeddings, anchor_tid[start : start + _BLOCK])
        p = gather_rows(embeddings, positive_tid[start : start + _BLOCK])
        positive_scores[start : start + len(a)] = np.einsum("ij,ij->i", a, p)
    depth = max(config.k, RANK_DEPTH)
    codes = _excluded_codes(pair_anchor, positive_tid, anchor_tids, table.guard_group)
    search_k = _search_depth(codes, table.corpus_tids, table.guard_group, depth)
    scores, positions, index_info = cached_search(
        embeddings, text_keys(table.texts), table.corpus_tids, anchor_tids, search_k, config.search, embedder.cache_root,
        embedder.cache_key, work_dir, progress=progress,
    )  # fmt: skip
    candidate_tids = np.where(positions >= 0, table.corpus_tids[np.maximum(positions, 0)], -1)
    del embeddings

    # 4. ranks and the verdict
    ranks = rank_positives(candidate_tids, scores, pair_anchor, positive_scores, codes, table.guard_group, depth)
    reason = np.full(len(pairs), None, dtype=object)
    reason[:] = "empty_anchor_or_positive"
    reason[rows] = np.where(ranks <= config.k, None, "inconsistent")
    rank_column = np.full(len(pairs), None, dtype=object)
    rank_column[rows] = [int(r) if r <= depth else None for r in ranks]
    score_column = np.full(len(pairs), None, dtype=object)
    score_column[rows] = [round(float(s), 6) for s in positive_scores]
    counts = np.bincount(ranks, minlength=depth + 2)
    histogram = {str(r): int(counts[r]) for r in range(1, depth + 1)} | {f">{depth}": int(counts[depth + 1])}
    section = {
        "k": config.k,
        "pairs": len(rows),
        "anchors": len(anchor_tids),
        "corpus_size": len(table.corpus_tids),
        "rank_histogram": histogram,
        "positive_scores": score_histogram(positive_scores),
        "encoder": encoder_record(embedder, len(table.texts)),
        "index": index_info,
    }
    details = pl.DataFrame(
        {"rank": list(rank_column), "positive_score": list(score_column)}, schema={"rank": pl.Int64, "positive_score": pl.Float64}
    )
    return Verdict(reasons=pl.Series("reason", list(reason), dtype=pl.String), details=details, section=section)


def filter_consistent(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: ConsistencyConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    encoder: str = "auto",
    force: bool = False,
    echo: Echo | None = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Keep the pairs whose positive ranks in the top ``k`` for its anchor; write them as a dataset folder.

    The arguments, what it returns and raises: as every model step's
    (:mod:`pipeline.curate.step`); ``config`` holds the filter's settings.

    Example::

        from pipeline.curate import ConsistencyConfig, filter_consistent

        manifest = filter_consistent("corpus/nli-pairs", "corpus/nli-pairs-consistent", ConsistencyConfig(k=2))
        print(manifest["consistency"]["rank_histogram"])
    """
    from pipeline.embed.embedder import Embedder
    from pipeline.mining.texts import read_extra_corpus

    embedder = Embedder(config.model, device, encoder, cache_dir, config.batch_size)
    extra, extra_files = read_extra_corpus(config.extra_corpus)

    def judge(pairs: pl.DataFrame, work_dir: Any) -> Verdict:
        return judge_consistency(pairs, extra, config, embedder, work_dir, progress)

    return run_step(STAGE, SECTION, dataset_dir, out_dir, config, judge, {"model_fingerprint": embedder.fingerprint},
                    corpus_files=extra_files, force=force, echo=echo)  # fmt: skip
