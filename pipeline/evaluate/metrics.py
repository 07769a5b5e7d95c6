"""Metrics of one model on the benchmarks, computed by sentence-transformers' own evaluators.

In: a loaded ``SentenceTransformer`` and benchmark texts. Out: floats, all "higher is
better":

* :func:`stsb_spearman`: Spearman rank correlation between the cosine similarity of
  the two sentences and the gold score (``EmbeddingSimilarityEvaluator``'s
  ``spearman_cosine``);
* :func:`triplet_accuracy`: share of (anchor, positive, negative) triplets with
  cos(anchor, positive) > cos(anchor, negative) (``TripletEvaluator``'s
  ``cosine_accuracy``);
* :func:`ranking_outcomes` / :func:`ranking_scores`: MRR@10, nDCG@10, Recall@1 and
  Recall@10 of each query against every document (and their means), as
  ``InformationRetrievalEvaluator`` computes them (a test holds them equal), on
  vectors embedded once;
* :func:`triplet_hits`: ``TripletEvaluator``'s rule, row by row, on vectors;
* :func:`paired_interval`: a bootstrap interval of the mean difference of two models'
  per-row outcomes on the same rows.

Using the evaluators (or their exact definitions) every sentence-transformers user
knows means a figure here is the figure they would get with the same rows; pairforge
adds only which rows (the readers, the held-out split) and the comparison with the
baseline. The held-out benchmarks (:mod:`pipeline.evaluate.heldout`) embed their
texts once (:func:`encode_texts`) and score several tasks on those vectors, leaving a
query's own text out of its ranking where it is also a document.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

RETRIEVAL_KS = (1, 10)
RETRIEVAL_CUTOFF = 10


def _evaluation() -> Any:
    from pipeline.embed.models import HEAVY_IMPORT_LOCK

    with HEAVY_IMPORT_LOCK:
        from sentence_transformers.sentence_transformer import evaluation

    return evaluation


def stsb_spearman(
    model: Any, sentences1: Sequence[str], sentences2: Sequence[str], scores: Sequence[float], batch_size: int = 64,
    progress: bool = False,
) -> float:  # fmt: skip
    """Spearman correlation of cosine similarity with the gold scores."""
    evaluator = _evaluation().EmbeddingSimilarityEvaluator(
        list(sentences1), list(sentences2), list(scores), batch_size=batch_size, main_similarity="cosine",
        similarity_fn_names=["cosine"], show_progress_bar=progress, write_csv=False,
    )  # fmt: skip
    return float(evaluator(model)["spearman_cosine"])


def triplet_accuracy(
    model: Any, anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[str], batch_size: int = 64,
    progress: bool = False,
) -> float:  # fmt: skip
    """Share of triplets whose positive is more similar (cosine) to the anchor than the negative; NaN for none."""
    if not anchors:
        return float("nan")
    evaluator = _evaluation().TripletEvaluator(
        list(anchors), list(positives), list(negatives), main_similarity_function="cosine",
        similarity_fn_names=["cosine"], batch_size=batch_size, show_progress_bar=progress, write_csv=False,
    )  # fmt: skip
    return float(evaluator(model)["cosine_accuracy"])


def ranking_outcomes(
    query_vectors: np.ndarray,
    document_vectors: np.ndarray,
    relevant: Sequence[set[int]],
    left_out: Sequence[int | None] | None = None,
    block: int = 1024,
) -> dict[str, np.ndarray]:
    """Per query, ``mrr@10``, ``ndcg@10``, ``recall@1`` and ``recall@10`` of cosine search over unit vectors.

    The definitions of ``InformationRetrievalEvaluator``: the first relevant hit's
    reciprocal rank within the top 10; DCG of the top 10 over the DCG of an ideal
    ranking of the query's relevant documents (binary gains, ``1 / log2(rank + 1)``);
    the share of a query's relevant documents in its top k. Queries are scored in
    blocks, so memory holds one block of similarities.

    Args:
        query_vectors: unit-length query embeddings.
        document_vectors: unit-length document embeddings.
        relevant: for each query, the indices of its relevant documents (at least one).
        left_out: for each query, a document index to leave out of its ranking, or None.
    """
    if len(query_vectors) != len(relevant):
        raise ValueError(f"{len(query_vectors)} queries but {len(relevant)} relevance sets")
    if not len(query_vectors):
        raise ValueError("retrieval needs at least one query")
    if any(not wanted for wanted in relevant):
        raise ValueError("every query needs at least one relevant document")
    depth = min(max(RETRIEVAL_CUTOFF, *RETRIEVAL_KS), len(document_vectors))
    discounts = 1.0 / np.log2(np.arange(2, RETRIEVAL_CUTOFF + 2))
    names = [f"mrr@{RETRIEVAL_CUTOFF}", f"ndcg@{RETRIEVAL_CUTOFF}", *(f"recall@{k}" for k in RETRIEVAL_KS)]
    outcomes = {name: np.zeros(len(query_vectors), dtype=np.float64) for name in names}
    for start in range(0, len(query_vectors), block):
        scores = query_vectors[start : start + block] @ document_vectors.T
        for offset, row in enumerate(scores):
            query = start + offset
            wanted = relevant[query]
            if left_out is not None and left_out[query] is not None:
                row[left_out[query]] = -np.inf
            top = np.argpartition(-row, depth - 1)[:depth] if depth < len(row) else np.arange(len(row))
            top = top[np.lexsort((top, -row[top]))]
            hits = np.array([document in wanted for document in top[:RETRIEVAL_CUTOFF]], dtype=np.float64)
            first = np.flatnonzero(hits)
            outcomes[names[0]][query] = 1.0 / (first[0] + 1) if len(first) else 0.0
            ideal = discounts[: min(len(wanted), RETRIEVAL_CUTOFF)].sum()
            outcomes[names[1]][query] = float((hits * discounts[: len(hits)]).sum() / ideal)
            for k in RETRIEVAL_KS:
                outcomes[f"recall@{k}"][query] = sum(d in wanted for d in top[:k]) / len(wanted)
    return outcomes


def ranking_scores(
    query_vectors: np.ndarray,
    document_vectors: np.ndarray,
    relevant: Sequence[set[int]],
    left_out: Sequence[int | None] | None = None,
) -> dict[str, float]:
    """The means over queries of :func:`ranking_outcomes`."""
    return {name: float(values.mean()) for name, values in ranking_outcomes(query_vectors, document_vectors, relevant, left_out).items()}


def paired_interval(
    ours: np.ndarray, theirs: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap interval of ``mean(ours - theirs)`` over paired per-row outcomes (rows resampled, seeded).

    Two models scored on the same rows differ row by row; resampling the rows shows how
    far the mean difference would move on another draw of as many rows.
    """
    if len(ours) != len(theirs) or not len(ours):
        raise ValueError(f"paired outcomes need equal, non-zero lengths, got {len(ours)} and {len(theirs)}")
    delta = np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 2_000_000 // len(delta)))  # resamples drawn at once: about 16 MB of indices
    means = np.concatenate(
        [delta[rng.integers(0, len(delta), size=(min(block, resamples - done), len(delta)))].mean(axis=1) for done in range(0, resamples, block)]
    )
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def triplet_hits(anchors: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Per triplet of unit vectors, whether cos(anchor, positive) > cos(anchor, negative) (a tie is a miss)."""
    return np.einsum("ij,ij->i", anchors, positives) > np.einsum("ij,ij->i", anchors, negatives)


def encode_texts(model: Any, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``; each distinct text is encoded once."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    embeddings = model.encode(
        unique, batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True, normalize_embeddings=True
    ).astype(np.float32)
    position = {text: i for i, text in enumerate(unique)}
    return embeddings[[position[t] for t in texts]]


def rounded(value: float, digits: int = 6) -> float | None:
    """A metric for the report: rounded, and None for NaN (JSON has no NaN)."""
    return None if math.isnan(value) else round(value, digits)
