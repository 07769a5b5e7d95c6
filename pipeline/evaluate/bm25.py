"""BM25 over a fixed set of documents: query texts in; each query's best-scoring allowed document out.

In: document texts, query texts and, per query, the documents it may not pick. Out:
for each query the index of its highest-scoring allowed document (lowest index on a
tie), or None when no allowed document shares a word with it.

The held-out triplet benchmark (:mod:`pipeline.evaluate.heldout`) mines its negatives
with this: a lexical miner picks them, so neither the model under test nor its
baseline chose them (a negative mined by the baseline would be, by construction, one
the baseline gets wrong or just right). Okapi BM25 with Lucene's idf
(``log(1 + (N - df + 0.5) / (df + 0.5))``, never negative), ``k1=1.2``, ``b=0.75``;
words are lower-cased runs of letters and digits. Queries are scored in blocks, so
memory holds one (sparse) block of scores at a time.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

K1 = 1.2
B = 0.75
QUERY_BLOCK = 64  # a query of common words scores nearly every document: bounds the sparse block
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``."""
    return _WORD.findall(text.lower())


def best_documents(
    documents: Sequence[str], queries: Sequence[str], excluded: Sequence[set[int]], k1: float = K1, b: float = B
) -> list[int | None]:
    """Each query's best BM25 document, leaving out the ones in its ``excluded`` set.

    Args:
        documents: the texts to pick from.
        queries: the query texts.
        excluded: for each query, document indices it may not pick (its positives, itself).

    Returns:
        A document index per query, or None when no allowed document shares a word with it.
    """
    from scipy import sparse

    if len(excluded) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(excluded)} exclusion sets")
    vocabulary: dict[str, int] = {}
    rows, columns = [], []
    lengths = np.zeros(len(documents), dtype=np.float64)
    for index, text in enumerate(documents):
        tokens = words(text)
        lengths[index] = len(tokens)
        for token in tokens:
            columns.append(vocabulary.setdefault(token, len(vocabulary)))
            rows.append(index)
    if not vocabulary or not queries:
        return [None] * len(queries)
    counts = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, columns)), shape=(len(documents), len(vocabulary))
    )
    counts.sum_duplicates()
    frequency = np.bincount(counts.indices, minlength=len(vocabulary))
    idf = np.log1p((len(documents) - frequency + 0.5) / (frequency + 0.5))
    norm = k1 * (1.0 - b + b * lengths / max(lengths.mean(), 1e-9))
    weights = counts.copy()
    row_of = np.repeat(np.arange(len(documents)), np.diff(counts.indptr))
    weights.data = counts.data * (k1 + 1.0) / (counts.data + norm[row_of]) * idf[counts.indices]
    by_term = weights.T.tocsr()

    best: list[int | None] = []
    for start in range(0, len(queries), QUERY_BLOCK):
        block = queries[start : start + QUERY_BLOCK]
        q_rows, q_columns = [], []
        for index, text in enumerate(block):
            for term in sorted({vocabulary[t] for t in words(text) if t in vocabulary}):
                q_rows.append(index)
                q_columns.append(term)
        query_terms = sparse.csr_matrix((np.ones(len(q_rows)), (q_rows, q_columns)), shape=(len(block), len(vocabulary)))
        scores = (query_terms @ by_term).tocsr()
        for offset in range(len(block)):
            begin, end = scores.indptr[offset], scores.indptr[offset + 1]
            documents_hit, values = scores.indices[begin:end], scores.data[begin:end]
            allowed = values > 0.0
            if excluded[start + offset]:
                allowed &= ~np.isin(documents_hit, list(excluded[start + offset]))
            if not allowed.any():
                best.append(None)
                continue
            documents_hit, values = documents_hit[allowed], values[allowed]
            best.append(int(documents_hit[values == values.max()].min()))
    return best
