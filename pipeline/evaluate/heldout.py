"""The pooled held-out benchmark: a corpus's held-out rows in; one retrieval task and one triplet task out.

In: a built corpus (dataset folders with ``heldout/`` splits, never trained on), at
most ``max_rows`` held-out rows per dataset and at most ``max_distractors`` distractor
texts. Out: :class:`PooledHeldout`:

1. **Queries**: the distinct held-out anchors of every dataset, pooled.
2. **Documents**: every held-out positive, then distractors: the positive and negative
   texts of the corpus's training rows (of the ingested datasets; mined and curated
   versions hold no other texts), read dataset by dataset, smallest first, each up to
   its share of ``max_distractors``. A query then has to find its positive among
   all of these, not among the 1 to 3 other held-out rows of its own dataset.
3. **Relevance**: a document is relevant to a query when some row of the corpus pairs
   the query's text with it as anchor and positive, held-out or read while collecting
   distractors, so a training row's positive of the same anchor is not a miss. A
   document whose text is the query's own (a question that is also another pair's
   positive) is left out of that query's ranking, unless it is relevant to it.
4. **Triplets**: each held-out row (anchor, positive) with a negative mined by BM25
   (:mod:`pipeline.evaluate.bm25`) from the documents, its anchor's relevant ones and
   its own text left out. A lexical miner, so that neither the model nor its baseline
   chose the negatives; rows whose anchor shares no word with any allowed document
   are counted as ``no_lexical_candidate``.

Memory and reading stay bounded whatever the corpus size: at most ``max_rows``
held-out rows a dataset and ``max_distractors`` distractors are held, and training
shards are read a batch at a time only until each dataset's share is collected
(relevant training positives are found among the rows read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.corpus.manifest import DropTally

SCAN_BATCH_ROWS = 8192
RETRIEVAL_METRICS = ("mrr@10", "ndcg@10", "recall@1", "recall@10")
POOLED_RETRIEVAL = "heldout/retrieval"  # + /<metric>: every held-out query against every document
POOLED_TRIPLETS = "heldout/triplet_accuracy"  # held-out rows with BM25-mined negatives


@dataclass
class PooledHeldout:
    """The held-out rows of a corpus as one retrieval task and one triplet task (see the module docstring).

    Attributes:
        datasets: the datasets whose held-out rows are pooled, in order.
        heldout_rows: held-out rows each dataset has (``rows_used`` were read).
        rows_used: held-out rows read per dataset (at most ``max_rows``).
        dataset_rows: each dataset's held-out rows (indices into the row lists).
        row_query: each row's query (index into ``queries``).
        row_document: each row's positive (index into ``documents``).
        queries: the distinct held-out anchors.
        documents: held-out positives first, then training positives of a query's
            anchor, then distractors.
        relevant: per query, the indices of its relevant documents.
        own_text: per query, the index of the document with the query's own text, or None.
        negatives: per query, its BM25-mined negative (a document index), or None.
        distractors: how many documents are distractors.
        training_rows_read: training rows read while collecting distractors.
        triplets_dropped: held-out rows without a triplet, by reason.
    """

    datasets: list[str] = field(default_factory=list)
    heldout_rows: dict[str, int] = field(default_factory=dict)
    rows_used: dict[str, int] = field(default_factory=dict)
    dataset_rows: dict[str, list[int]] = field(default_factory=dict)
    row_query: list[int] = field(default_factory=list)
    row_document: list[int] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)
    relevant: list[set[int]] = field(default_factory=list)
    own_text: list[int | None] = field(default_factory=list)
    negatives: list[int | None] = field(default_factory=list)
    distractors: int = 0
    training_rows_read: int = 0
    triplets_dropped: DropTally = field(default_factory=DropTally)

    def triplet_rows(self) -> list[int]:
        """The held-out rows that have a mined negative (each one triplet)."""
        return [row for row, query in enumerate(self.row_query) if self.negatives[query] is not None]

    def dataset_task(self, dataset: str) -> tuple[list[int], list[int], list[set[int]]]:
        """One dataset's own retrieval task: its queries, its held-out positives as the only documents.

        Returns:
            Query indices, document indices (into the pooled lists), and for each query
            the positions (in that document list) of its relevant documents.
        """
        rows = self.dataset_rows[dataset]
        queries = list(dict.fromkeys(self.row_query[r] for r in rows))
        documents = list(dict.fromkeys(self.row_document[r] for r in rows))
        position = {d: i for i, d in enumerate(documents)}
        relevant = [{position[d] for d in self.relevant[q] if d in position} for q in queries]
        return queries, documents, relevant

    def metric_rows(self) -> dict[str, int]:
        """How many rows each figure of :func:`score_heldout` rests on (queries, or triplets)."""
        rows = {f"{POOLED_RETRIEVAL}/{m}": len(self.queries) for m in RETRIEVAL_METRICS}
        rows[POOLED_TRIPLETS] = len(self.triplet_rows())
        for name in self.datasets:
            queries = len(self.dataset_task(name)[0])
            rows |= {f"retrieval/{name}/{m}": queries for m in RETRIEVAL_METRICS}
        return rows

    def summary(self) -> dict[str, Any]:
        """What the benchmark rests on, for the report."""
        return {
            "datasets": [
                {"name": name, "heldout_rows": self.heldout_rows[name], "rows_used": self.rows_used[name]}
                for name in self.datasets
            ],
            "queries": len(self.queries),
            "documents": len(self.documents),
            "distractors": self.distractors,
            "training_rows_read": self.training_rows_read,
            "triplets": len(self.triplet_rows()),
            "triplets_dropped": self.triplets_dropped.as_dict(),
        }


class _Documents:
    """Document texts with their indices, in the order they were added."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def add(self, text: str) -> int:
        return self.index.setdefault(text, len(self.index))

    @property
    def texts(self) -> list[str]:
        return list(self.index)


def load_pooled_heldout(
    corpus: str | os.PathLike[str],
    datasets: Sequence[tuple[str, Path]],
    max_rows: int | None,
    max_distractors: int,
) -> PooledHeldout:
    """Pool the held-out rows of ``datasets`` and collect distractors from ``corpus`` (module docstring).

    Args:
        corpus: the corpus root (its ingested datasets give the distractors).
        datasets: ``(name, folder)`` of the datasets whose held-out rows are pooled;
            those without held-out rows are left out.
        max_rows: held-out rows read per dataset (the first in shard order); None for all.
        max_distractors: the most distractor documents.
    """
    from pipeline.corpus.folders import discover_datasets
    from pipeline.evaluate.benchmarks import read_heldout_pairs
    from pipeline.evaluate.bm25 import best_documents

    pooled = PooledHeldout()
    documents = _Documents()
    query_index: dict[str, int] = {}
    for name, folder in datasets:
        pairs = read_heldout_pairs(folder, name, max_rows)
        if not pairs.anchors:
            continue
        pooled.datasets.append(name)
        pooled.heldout_rows[name] = pairs.rows_available
        pooled.rows_used[name] = len(pairs.anchors)
        pooled.dataset_rows[name] = list(range(len(pooled.row_query), len(pooled.row_query) + len(pairs.anchors)))
        for anchor, positive in zip(pairs.anchors, pairs.positives):
            query = query_index.setdefault(anchor, len(query_index))
            if query == len(pooled.relevant):
                pooled.relevant.append(set())
            document = documents.add(positive)
            pooled.relevant[query].add(document)
            pooled.row_query.append(query)
            pooled.row_document.append(document)
    pooled.queries = list(query_index)
    if not pooled.queries:
        return pooled

    manifests = discover_datasets(corpus)
    ingested = [n for n, m in manifests.items() if not m.get("mined_from") and not m.get("curated_from")]
    ingested.sort(key=lambda n: (int(manifests[n].get("rows_train", 0)), n))
    distractors: dict[str, None] = {}
    for position, name in enumerate(ingested):
        share = (max_distractors - len(distractors)) // (len(ingested) - position)
        pooled.training_rows_read += _scan_training_rows(Path(corpus) / name, share, query_index, documents, pooled.relevant, distractors)
    before = len(documents.index)
    for text in distractors:
        documents.add(text)
    pooled.distractors = len(documents.index) - before
    pooled.documents = documents.texts
    own = [documents.index.get(text) for text in pooled.queries]
    pooled.own_text = [d if d not in relevant else None for d, relevant in zip(own, pooled.relevant)]

    excluded = [relevant | ({own} if own is not None else set()) for relevant, own in zip(pooled.relevant, pooled.own_text)]
    pooled.negatives = best_documents(pooled.documents, pooled.queries, excluded)
    for query in pooled.row_query:
        if pooled.negatives[query] is None:
            pooled.triplets_dropped.add("no_lexical_candidate")
    return pooled


def _scan_training_rows(
    folder: Path, share: int, query_index: dict[str, int], documents: _Documents, relevant: list[set[int]],
    distractors: dict[str, None],
) -> int:
    """Read ``folder``'s training rows a batch at a time until ``share`` new distractors are added to ``distractors``.

    A row whose anchor is a query adds its positive to the query's relevant documents
    (and takes it out of the distractors); other positive and negative texts become
    distractors unless they are a query's text or a document already. Returns the rows read.
    """
    import pyarrow.parquet as pq

    from pipeline.corpus.schema import negative_columns
    from pipeline.corpus.shards import shard_paths

    rows_read = 0
    wanted = len(distractors) + share
    if share <= 0:
        return 0
    for shard in shard_paths(folder):
        columns = ["anchor", "positive", *negative_columns(pq.read_schema(shard).names)]
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=SCAN_BATCH_ROWS, columns=columns):
            for anchor, positive, *negatives in zip(*(batch.column(i).to_pylist() for i in range(len(columns)))):
                rows_read += 1
                query = query_index.get(anchor) if anchor is not None else None
                if query is not None and positive is not None:
                    relevant[query].add(documents.add(positive))
                    distractors.pop(positive, None)
                for text in (positive, *negatives):
                    if len(distractors) >= wanted:
                        break
                    if text is not None and text not in query_index and text not in documents.index:
                        distractors.setdefault(text)
            if len(distractors) >= wanted:
                return rows_read
    return rows_read


def score_heldout(
    model: Any, pooled: PooledHeldout, batch_size: int = 64, progress: bool = False, outcomes: dict[str, Any] | None = None
) -> dict[str, float]:
    """The held-out figures of one model, from one embedding of the queries and documents.

    ``heldout/retrieval/<metric>``: every query against every document;
    ``heldout/triplet_accuracy``: the BM25-mined triplets; ``retrieval/<dataset>/<metric>``:
    each dataset's queries against its own held-out positives. ``outcomes``, when given,
    receives the pooled figures' per-query and per-triplet values (for paired intervals).
    """
    import numpy as np

    from pipeline.evaluate.metrics import encode_texts, ranking_outcomes, ranking_scores, triplet_hits

    if not pooled.queries:
        return {}
    vectors = encode_texts(model, pooled.queries + pooled.documents, batch_size, progress)
    queries, documents = vectors[: len(pooled.queries)], vectors[len(pooled.queries) :]
    per_unit = {f"{POOLED_RETRIEVAL}/{k}": v for k, v in ranking_outcomes(queries, documents, pooled.relevant, pooled.own_text).items()}
    rows = pooled.triplet_rows()
    if rows:
        anchors = queries[[pooled.row_query[r] for r in rows]]
        positives = documents[[pooled.row_document[r] for r in rows]]
        negatives = documents[[pooled.negatives[pooled.row_query[r]] for r in rows]]
        per_unit[POOLED_TRIPLETS] = triplet_hits(anchors, positives, negatives).astype(np.float64)
    if outcomes is not None:
        outcomes.update(per_unit)
    scores = {name: float(values.mean()) for name, values in per_unit.items()}
    for name in pooled.datasets:
        own_queries, own_documents, relevant = pooled.dataset_task(name)
        position = {d: i for i, d in enumerate(own_documents)}
        left_out = [position.get(pooled.own_text[q]) if pooled.own_text[q] is not None else None for q in own_queries]
        found = ranking_scores(queries[own_queries], documents[own_documents], relevant, left_out)
        scores |= {f"retrieval/{name}/{k}": v for k, v in found.items()}
    return scores
