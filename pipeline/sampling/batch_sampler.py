"""Weighted multi-dataset batch sampling: each batch from one dataset, drawn by weight.

In: the datasets of a run (their text columns), one positive weight per dataset, a
batch size and a seed. Out: batches of global row indices (into the datasets laid end
to end, as in a ``torch.utils.data.ConcatDataset``), for a DataLoader's
``batch_sampler``.

This is the 1B-pairs project's scheme, which sentence-transformers does not ship (its
trainer offers size-proportional and round-robin only): every batch comes from one
dataset, picked with probability ``weight / sum(weights)``, so in-batch negatives are
always of the same kind. Within a dataset rows are shuffled and no text (anchor,
positive or negative) occurs twice in a batch; a dataset that runs out is reshuffled
and starts again, so a small, heavy dataset repeats, as in the 1B project.

The order depends only on ``(seed, epoch)``: the same seed gives the same batches, a
new epoch reshuffles, and a run resumed from a checkpoint that skips the first ``n``
batches sees exactly the batches the killed run would have seen.

numpy only at import time; polars is imported when texts are hashed.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator, Sequence

import numpy as np

EXCLUDED_COLUMNS = frozenset({"dataset_name", "id", "source_file", "source_line"})


def text_hashes(columns: Sequence[Any]) -> np.ndarray:
    """A ``(rows, columns)`` uint64 array: the hash of each text cell.

    Args:
        columns: equal-length text columns (pyarrow arrays, lists of str or polars Series).
    """
    import polars as pl

    if not columns:
        raise ValueError("no text columns to hash")
    hashed = [pl.Series(values=c) if not isinstance(c, pl.Series) else c for c in columns]
    return np.stack([s.cast(pl.String).hash(seed=0).to_numpy() for s in hashed], axis=1)


def dataset_text_hashes(dataset: Any) -> np.ndarray:
    """Text hashes of a Hugging Face ``datasets.Dataset`` (every string column but bookkeeping ones)."""
    import pyarrow as pa

    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    table = dataset.data
    text_types = (pa.string(), pa.large_string())
    columns = [
        table.column(name)
        for name in dataset.column_names
        if name not in EXCLUDED_COLUMNS and table.schema.field(name).type in text_types
    ]
    import polars as pl

    return text_hashes([pl.from_arrow(c) for c in columns])


class _BatchStream:
    """Endless no-duplicate batches from one dataset, reshuffled at every pass.

    A row whose texts clash with the batch being built is deferred to the next batch
    rather than dropped, like sentence-transformers' NoDuplicatesBatchSampler.
    """

    def __init__(self, hashes: np.ndarray, batch_size: int, seed_parts: tuple[int, ...]) -> None:
        self.hashes = hashes
        self.batch_size = batch_size
        self.seed_parts = seed_parts
        self.passes = 0
        self.order: np.ndarray = np.empty(0, dtype=np.int64)
        self.position = 0
        self.deferred: deque[int] = deque()

    def _next_index(self) -> int:
        if self.deferred:
            return self.deferred.popleft()
        if self.position >= len(self.order):
            rng = np.random.default_rng([*self.seed_parts, self.passes])
            self.order = rng.permutation(len(self.hashes))
            self.position = 0
            self.passes += 1
        index = int(self.order[self.position])
        self.position += 1
        return index

    def next_batch(self) -> list[int]:
        """The next batch: ``batch_size`` rows with no text in common, fewer only when the
        dataset has too few distinct texts to fill one."""
        batch: list[int] = []
        seen: set[int] = set()
        clashed: list[int] = []
        budget = len(self.hashes) + len(self.deferred)
        while len(batch) < self.batch_size and budget > 0:
            budget -= 1
            index = self._next_index()
            values = self.hashes[index].tolist()
            if seen.isdisjoint(values):
                batch.append(index)
                seen.update(values)
            else:
                clashed.append(index)
        self.deferred.extendleft(reversed(clashed))
        return batch


class WeightedBatchSampler:
    """Batches of one dataset each, the dataset drawn with probability proportional to weight.

    Args:
        row_hashes: per dataset, a ``(rows, text columns)`` array of text hashes
            (:func:`text_hashes`); datasets are laid end to end in this order.
        weights: one positive weight per dataset.
        batch_size: rows per batch.
        seed: the base seed; batches depend only on ``(seed, epoch)``.
        num_batches: batches per epoch; by default as many as the data fills once,
            ``sum(max(1, rows // batch_size))``.

    Duck-types ``torch.utils.data.BatchSampler`` (``batch_size``, ``drop_last``,
    ``__len__``, ``__iter__``, ``set_epoch``) so that this module needs no torch.
    """

    drop_last = False

    def __init__(
        self,
        row_hashes: Sequence[np.ndarray],
        weights: Sequence[float],
        batch_size: int,
        seed: int = 0,
        num_batches: int | None = None,
    ) -> None:
        if len(row_hashes) != len(weights) or not row_hashes:
            raise ValueError(f"need one weight per dataset, got {len(weights)} weights for {len(row_hashes)} datasets")
        if any(not w > 0 for w in weights):
            raise ValueError(f"weights must be positive, got {list(weights)}")
        if any(len(h) == 0 for h in row_hashes):
            raise ValueError("every dataset needs at least one row")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.row_hashes = list(row_hashes)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.probabilities = self.weights / self.weights.sum()
        self.batch_size = batch_size
        self.seed = int(seed)
        self.epoch = 0
        sizes = [len(h) for h in self.row_hashes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.num_batches = num_batches or sum(max(1, n // batch_size) for n in sizes)

    def set_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` (the trainer calls this at the start of each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def dataset_sequence(self) -> np.ndarray:
        """The dataset index of each batch of the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.choice(len(self.row_hashes), size=self.num_batches, p=self.probabilities)

    def iter_with_datasets(self) -> Iterator[tuple[int, list[int]]]:
        """``(dataset index, global row indices)`` for each batch of the current epoch."""
        streams = [
            _BatchStream(hashes, self.batch_size, (self.seed, self.epoch, index))
            for index, hashes in enumerate(self.row_hashes)
        ]
        for dataset_index in self.dataset_sequence().tolist():
            offset = int(self.offsets[dataset_index])
            yield dataset_index, [offset + i for i in streams[dataset_index].next_batch()]

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self.iter_with_datasets():
            yield batch


class WeightedSamplerFactory:
    """A ``multi_dataset_batch_sampler`` for ``SentenceTransformerTrainingArguments``.

    The trainer calls it with the ``ConcatDataset`` of the run's ``DatasetDict`` (in the
    dict's order, which must be the order of ``weights``), the per-dataset batch
    samplers (only their batch size is used), a generator (unused: the order comes from
    the seed alone) and the seed. A class rather than a closure because the trainer
    pickles its arguments into every checkpoint.

    Args:
        weights: one positive weight per dataset, in the DatasetDict's order.
        num_batches: batches per epoch, or None for :class:`WeightedBatchSampler`'s default.
    """

    def __init__(self, weights: Sequence[float], num_batches: int | None = None) -> None:
        self.weights = list(weights)
        self.num_batches = num_batches

    def __call__(
        self, dataset: Any, batch_samplers: Sequence[Any], generator: Any = None, seed: int | None = 0
    ) -> WeightedBatchSampler:
        hashes = [dataset_text_hashes(d) for d in dataset.datasets]
        return WeightedBatchSampler(
            hashes, self.weights, batch_size=batch_samplers[0].batch_size, seed=seed or 0, num_batches=self.num_batches
        )
