"""Exact and near-duplicate removal that scales past memory.

In: row hashes (two 64-bit halves of a 128-bit key) in row order, or texts for
MinHash. Out: a boolean mask, True for the rows to keep (the first occurrence of
each key, in row order).

Exact dedup never holds texts: each row's key is hashed, the hashes are split into
``n_buckets`` partitions by their high bits and spilled to disk, and each partition is
deduplicated on its own (a sort), so memory is bounded by the largest partition and
the partitions can be processed anywhere, in any order, with the same result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np

_ROW_DTYPE = np.dtype([("h1", "<u8"), ("h2", "<u8"), ("row", "<i8")])
_BLOCK_ROWS = 1 << 16


class ExactDeduplicator:
    """Collect row hashes batch by batch, then compute which rows are first occurrences.

    Args:
        n_buckets: hash partitions spilled to disk (a power of two).
        work_dir: where the partitions are written (a temporary folder by default).
        memory_rows: up to this many rows the hashes stay in memory (24 bytes a row,
            a few MiB with the sort that ranks them) and are deduplicated in one step, with no
            partition files; past it they go to the partitions on disk, so memory
            does not grow with the dataset. Same mask either way.
    """

    def __init__(self, n_buckets: int = 64, work_dir: str | Path | None = None, memory_rows: int = 100_000) -> None:
        if n_buckets < 1 or n_buckets & (n_buckets - 1):
            raise ValueError(f"n_buckets must be a power of two, got {n_buckets}")
        self.n_buckets = n_buckets
        self.memory_rows = memory_rows
        self.rows = 0
        self._work_dir = work_dir
        self._held: list[np.ndarray] = []  # records not spilled (all of them, until memory_rows)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._files: list[BinaryIO] = []
        self._shift = 64 - max(n_buckets.bit_length() - 1, 0)

    def add(self, h1: np.ndarray, h2: np.ndarray) -> None:
        """Add the hashes of the next rows, in row order."""
        # A block at a time: the temporaries of one block are reused by the next,
        # where one array the size of the whole would fault in fresh pages (about as
        # costly as the sorting here).
        for start in range(0, len(h1), _BLOCK_ROWS):
            self._add_block(h1[start : start + _BLOCK_ROWS], h2[start : start + _BLOCK_ROWS])

    def _add_block(self, h1: np.ndarray, h2: np.ndarray) -> None:
        n = len(h1)
        records = np.empty(n, dtype=_ROW_DTYPE)
        records["h1"] = h1
        records["h2"] = h2
        records["row"] = np.arange(self.rows, self.rows + n, dtype=np.int64)
        self.rows += n
        if self._tmp is None and self.rows <= self.memory_rows:
            self._held.append(records)
            return
        self._spill(records)

    def _spill(self, records: np.ndarray) -> None:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pairforge-dedup-", dir=self._work_dir)
            self._files = [open(self._bucket_path(b), "wb") for b in range(self.n_buckets)]
            held, self._held = self._held, []
            for earlier in held:
                self._spill(earlier)
        if self.n_buckets == 1:
            records.tofile(self._files[0])
            return
        # Bucket numbers fit 16 bits, where numpy's stable sort is a radix sort; one
        # gather puts each bucket's records together, in row order within it.
        bucket = (records["h1"] >> np.uint64(self._shift)).astype(np.uint16)
        order = np.argsort(bucket, kind="stable")
        grouped = _gather(records, order)
        bounds = np.searchsorted(bucket[order], np.arange(self.n_buckets + 1))
        for b in range(self.n_buckets):
            lo, hi = bounds[b], bounds[b + 1]
            if hi > lo:
                grouped[lo:hi].tofile(self._files[b])

    def _bucket_path(self, bucket: int) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name) / f"bucket-{bucket:04d}.bin"

    def keep_mask(self, map_partitions: Callable[[Callable[[Path], np.ndarray], list[Path]], Iterable[np.ndarray]] = map) -> np.ndarray:
        """True for the first row of each distinct hash, in the order rows were added.

        Args:
            map_partitions: applies :func:`partition_first_rows` to every partition
                file, like the builtin ``map`` (the default, in this process) or an
                executor's map (a Dask client's ``map`` + ``gather``, a process pool):
                partitions are independent and the merge does not depend on the order
                results come back in, so the mask is the same either way. Rows still
                in memory are deduplicated here with the builtin ``map``, and spilled
                first for any other.
        """
        keep = np.zeros(self.rows, dtype=bool)
        if self._tmp is None and map_partitions is map:
            held, self._held = self._held, []
            if held:
                keep[first_occurrences(np.concatenate(held))] = True
            return keep
        if self._tmp is None:
            self._spill(np.empty(0, dtype=_ROW_DTYPE))
        assert self._tmp is not None
        for handle in self._files:
            handle.close()
        paths = [self._bucket_path(bucket) for bucket in range(self.n_buckets)]
        for first_rows in map_partitions(partition_first_rows, paths):
            keep[first_rows] = True
        self._tmp.cleanup()
        return keep


def partition_first_rows(path: str | Path) -> np.ndarray:
    """Row numbers of the first occurrences in one spilled partition file (a task of its own)."""
    return first_occurrences(np.fromfile(Path(path), dtype=_ROW_DTYPE))


def first_occurrences(records: np.ndarray) -> np.ndarray:
    """Row numbers of the first occurrence of each (h1, h2) in one partition (in no
    particular order).

    A sort of ``h1`` alone finds the values that occur more than once (usually none:
    then every row is a first occurrence); only the records sharing an ``h1`` are
    ranked by (h1, h2, row), the costly sort, to keep the earliest row of each key.
    """
    if len(records) == 0:
        return np.empty(0, dtype=np.int64)
    h1 = records["h1"]
    ordered = np.sort(h1)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(repeated):
        return records["row"].copy()
    shared = repeated[np.minimum(np.searchsorted(repeated, h1), len(repeated) - 1)] == h1
    sharing = records[shared]
    ranked = _gather(sharing, np.lexsort((sharing["row"], sharing["h2"], sharing["h1"])))
    new_key = np.ones(len(ranked), dtype=bool)
    new_key[1:] = (ranked["h1"][1:] != ranked["h1"][:-1]) | (ranked["h2"][1:] != ranked["h2"][:-1])
    return np.concatenate([records["row"][~shared], ranked["row"][new_key]])


def _gather(records: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``records[order]``, taken from a plain (rows, 3) uint64 view of the same bytes:
    numpy's gather of a structured dtype goes field by field, element by element,
    and ``take`` of whole rows is faster again than fancy indexing (measured on
    671,835 records: 17 ms against 62)."""
    plain = np.ascontiguousarray(records).view(np.uint64).reshape(len(records), 3)
    return np.take(plain, order, axis=0).view(_ROW_DTYPE).reshape(len(order))


def shingles(text: str, size: int) -> set[str]:
    """The character ``size``-grams of ``text`` (the text itself when it is shorter): what MinHash hashes."""
    return {text[i : i + size] for i in range(max(len(text) - size + 1, 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    """The Jaccard similarity of two shingle sets (the quantity MinHash estimates)."""
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicateFilter:
    """Drop texts with an earlier text of estimated Jaccard similarity >= ``threshold``.

    Character ``shingle``-grams, MinHash with ``num_perm`` permutations and LSH
    (datasketch); deterministic for a fixed seed. Holds one signature per kept text,
    so it is an option for corpora whose signatures fit in memory.
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = 64, shingle: int = 5, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle = shingle
        self.seed = seed
        self._index = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._seen = 0

    def keep(self, texts: Sequence[str]) -> np.ndarray:
        """True for each text to keep, in order; kept texts join the index."""
        from datasketch import MinHash

        mask = np.ones(len(texts), dtype=bool)
        for position, text in enumerate(texts):
            signature = MinHash(num_perm=self.num_perm, seed=self.seed)
            signature.update_batch([g.encode("utf-8") for g in shingles(text, self.shingle)])
            if self._index.query(signature):
                mask[position] = False
                continue
            self._index.insert(str(self._seen), signature)
            self._seen += 1
        return mask
