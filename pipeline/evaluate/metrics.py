"""Metrics of one model on the benchmarks, computed by sentence-transformers' own evaluators.

In: a loaded ``SentenceTransformer`` and benchmark texts. Out: floats, all "higher is
better":

* :func:`stsb_spearman`: Spearman rank correlation between the cosine similarity of
  the two sentences and the gold score (``EmbeddingSimilarityEvaluator``'s
  ``spearman_cosine``);
* :func:`triplet_accuracy`: share of (anchor, positive, negative) triplets with
  cos(anchor, positive) > cos(anchor, negative) (``TripletEvaluator``'s
  ``cosine_accuracy``);
* :func:`retrieval_scores`: MRR@10, nDCG@10, Recall@1 and Recall@10 of each query
  against every document (``InformationRetrievalEvaluator``, cosine).

Using the evaluators every sentence-transformers user knows means a figure here is
the figure they would get with the same rows; pairforge adds only which rows (the
readers, the held-out split) and the comparison with the baseline. ``encode_texts``
embeds texts for the report's heatmap.
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


def retrieval_scores(
    model: Any,
    queries: Sequence[str],
    documents: Sequence[str],
    relevant: Sequence[set[int]],
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """``mrr@10``, ``ndcg@10``, ``recall@1`` and ``recall@10`` of cosine search.

    Args:
        model: the model.
        queries: the query texts.
        documents: the document texts (the search covers all of them).
        relevant: for each query, the positions in ``documents`` of its relevant ones.

    Raises:
        ValueError: no query, or a query without a relevant document.
    """
    if len(queries) != len(relevant):
        raise ValueError(f"{len(queries)} queries but {len(relevant)} relevance sets")
    if not queries:
        raise ValueError("retrieval needs at least one query")
    if any(not wanted for wanted in relevant):
        raise ValueError("every query needs at least one relevant document")
    from sentence_transformers.util import cos_sim

    evaluator = _evaluation().InformationRetrievalEvaluator(
        queries={f"q{i}": text for i, text in enumerate(queries)},
        corpus={f"d{i}": text for i, text in enumerate(documents)},
        relevant_docs={f"q{i}": {f"d{j}" for j in wanted} for i, wanted in enumerate(relevant)},
        mrr_at_k=[RETRIEVAL_CUTOFF], ndcg_at_k=[RETRIEVAL_CUTOFF], accuracy_at_k=list(RETRIEVAL_KS),
        precision_recall_at_k=list(RETRIEVAL_KS), map_at_k=[RETRIEVAL_CUTOFF], batch_size=batch_size,
        show_progress_bar=progress, write_csv=False, score_functions={"cosine": cos_sim}, main_score_function="cosine",
    )  # fmt: skip
    found = evaluator(model)
    names = [f"mrr@{RETRIEVAL_CUTOFF}", f"ndcg@{RETRIEVAL_CUTOFF}", *(f"recall@{k}" for k in RETRIEVAL_KS)]
    return {name: float(found[f"cosine_{name}"]) for name in names}


def retrieval_task(anchors: Sequence[str], positives: Sequence[str]) -> tuple[list[str], list[str], list[set[int]]]:
    """Queries (distinct anchors), documents (distinct positives) and each query's relevant docs.

    An anchor seen with several positives has them all as relevant documents; a positive
    shared by several anchors is one document.
    """
    queries = list(dict.fromkeys(anchors))
    docs = list(dict.fromkeys(positives))
    query_row = {q: i for i, q in enumerate(queries)}
    doc_row = {d: i for i, d in enumerate(docs)}
    relevant: list[set[int]] = [set() for _ in queries]
    for anchor, positive in zip(anchors, positives):
        relevant[query_row[anchor]].add(doc_row[positive])
    return queries, docs, relevant


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
