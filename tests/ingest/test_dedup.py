"""Exact dedup by hash partitions, and MinHash near-dedup."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.ingest.dedup import ExactDeduplicator, NearDuplicateFilter


@pytest.mark.parametrize("memory_rows", [0, 500, 10_000], ids=["spilled", "spilled-midway", "in-memory"])
@pytest.mark.parametrize("n_buckets", [1, 4, 64])
def test_keep_mask_keeps_first_occurrence_in_row_order(n_buckets: int, memory_rows: int) -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 50, size=1000).astype(np.uint64)
    dedup = ExactDeduplicator(n_buckets=n_buckets, memory_rows=memory_rows)
    for start in range(0, 1000, 137):  # batches of uneven size
        part = keys[start : start + 137]
        dedup.add(part * np.uint64(0x9E3779B97F4A7C15), part)
    keep = dedup.keep_mask()
    expected = np.zeros(1000, dtype=bool)
    seen = set()
    for i, k in enumerate(keys.tolist()):
        if k not in seen:
            seen.add(k)
            expected[i] = True
    assert (keep == expected).all()


@pytest.mark.parametrize("memory_rows", [0, 10])
def test_rows_equal_in_first_hash_half_only_are_not_duplicates(memory_rows: int) -> None:
    dedup = ExactDeduplicator(n_buckets=2, memory_rows=memory_rows)
    dedup.add(np.array([7, 7], dtype=np.uint64), np.array([1, 2], dtype=np.uint64))
    assert dedup.keep_mask().tolist() == [True, True]


def test_bucket_count_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ExactDeduplicator(n_buckets=3)


def test_near_duplicates_are_dropped_and_distinct_texts_kept() -> None:
    base = "how do i learn to play the guitar quickly as an adult beginner"
    texts = [base, base + "?", "what is the capital city of australia and why was it chosen", base + "!!"]
    mask = NearDuplicateFilter(threshold=0.8).keep(texts[:2])
    assert mask.tolist() == [True, False]
    # State carries across calls: a later batch is checked against earlier ones.
    assert NearDuplicateFilter(threshold=0.8).keep(texts).tolist() == [True, False, True, False]


@pytest.mark.parametrize("memory_rows", [0, 100_000], ids=["spilled", "in-memory"])
def test_first_hash_collisions_and_large_batches_match_a_set(memory_rows: int) -> None:
    # Few distinct first halves (many 64-bit "collisions" with different second halves),
    # repeats in both halves, and a batch larger than the block add() cuts it into.
    rng = np.random.default_rng(7)
    n = 150_000
    h1 = rng.integers(0, 40, size=n).astype(np.uint64) << np.uint64(58)
    h2 = rng.integers(0, 2_000, size=n).astype(np.uint64)
    dedup = ExactDeduplicator(n_buckets=8, memory_rows=memory_rows)
    dedup.add(h1[:140_000], h2[:140_000])
    dedup.add(h1[140_000:], h2[140_000:])
    seen: set[tuple[int, int]] = set()
    expected = np.zeros(n, dtype=bool)
    for i, key in enumerate(zip(h1.tolist(), h2.tolist())):
        if key not in seen:
            seen.add(key)
            expected[i] = True
    keep = dedup.keep_mask()
    assert 0 < expected.sum() < n
    assert (keep == expected).all()


def test_a_partition_without_repeats_keeps_every_row() -> None:
    dedup = ExactDeduplicator(n_buckets=1, memory_rows=0)
    dedup.add(np.arange(1_000, dtype=np.uint64), np.zeros(1_000, dtype=np.uint64))
    assert dedup.keep_mask().all()
