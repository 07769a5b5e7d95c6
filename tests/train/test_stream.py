"""Tests for pipeline.train.stream and .loader: streamed batches against the in-memory loader, on the real samples."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.train.data import load_training_data, training_datasets
from pipeline.train.stream import BatchStream, DatasetReader
from tests.train.conftest import REAL_WEIGHTS


def _stream(corpus: tuple[Path, Path], batch_size: int = 32, window_rows: int = 700, **kwargs) -> BatchStream:
    datasets = training_datasets(*corpus)
    return BatchStream(datasets, [d.entry.weight for d in datasets], batch_size, seed=7, window_rows=window_rows, **kwargs)


def _texts(table, rows) -> list[tuple[str, ...]]:
    columns = [table.column(c).to_pylist() for c in table.column_names]
    return [tuple(c[r] for c in columns) for r in rows]


def test_a_pass_reads_every_row_once_the_rows_of_the_memory_loader(real_corpus: tuple[Path, Path]) -> None:
    """Per dataset, one pass of the reader is the in-memory table's multiset of rows, in another order."""
    memory = load_training_data(*real_corpus)
    for index, (dataset, table) in enumerate(zip(training_datasets(*real_corpus), memory.tables)):
        # a window smaller than a row group: row groups are read in slices
        reader = DatasetReader(index, dataset, seed=3, window_rows=300)
        taken = [reader.next_row() for _ in range(dataset.rows)]
        rows = [int(window.rows[i]) for window, i in taken]
        assert sorted(rows) == list(range(dataset.rows)), dataset.entry.name
        assert Counter(window.texts(i) for window, i in taken) == Counter(_texts(table, range(table.num_rows)))
        assert [window.texts(i) for window, i in taken] == _texts(table, rows)  # row numbers index the memory table
        assert rows != sorted(rows)  # shuffled
        assert reader.state_dict() == {"pass": 1, "start": [0, 0, 0], "offset": 0}
        second = [int(w.rows[i]) for w, i in (reader.next_row() for _ in range(dataset.rows))]
        assert sorted(second) == sorted(rows) and second != rows  # a new pass, a new order
        reader.discard()


def test_no_text_twice_in_a_batch_and_datasets_drawn_by_weight(real_corpus: tuple[Path, Path]) -> None:
    stream = _stream(real_corpus)
    batches = [stream.next_batch() for _ in range(1500)]
    stream.close()
    for batch in batches:
        texts = [t for column in batch.texts.values() for t in column]
        assert len(set(texts)) == len(texts), (batch.index, batch.name)
        assert len(batch) == 32
        assert len(set(batch.rows)) == len(batch.rows)
    assert stream.clashes > 20  # the real samples repeat texts: the rule had work to do
    counts = Counter(b.name for b in batches)
    total = sum(REAL_WEIGHTS.values())
    for name, weight in REAL_WEIGHTS.items():
        p = weight / total
        expected, sigma = len(batches) * p, math.sqrt(len(batches) * p * (1 - p))
        assert abs(counts[name] - expected) < 4 * sigma, (name, counts[name], expected)


def test_batches_use_each_row_as_often_over_an_epoch(real_corpus: tuple[Path, Path]) -> None:
    """Over 3 passes of each dataset, every row is trained on 3 times, give or take the rows held back at the edges."""
    datasets = training_datasets(*real_corpus)
    for dataset in datasets[:2]:
        stream = BatchStream([dataset], [1], 32, seed=1, window_rows=700)
        counts = Counter(r for _ in range(3 * dataset.rows // 32) for r in stream.next_batch().rows)
        stream.close()
        assert set(counts) == set(range(dataset.rows))
        assert Counter(counts.values()).keys() <= {2, 3, 4}
        assert Counter(counts.values())[3] > 0.97 * dataset.rows


def test_the_stream_resumes_exactly_from_its_state(real_corpus: tuple[Path, Path]) -> None:
    straight = _stream(real_corpus)
    batches = [straight.next_batch() for _ in range(120)]
    straight.close()
    first = _stream(real_corpus)
    for _ in range(70):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    first.close()
    resumed = _stream(real_corpus)
    resumed.load_state_dict(state)
    again = [resumed.next_batch() for _ in range(50)]
    resumed.close()
    assert [(b.index, b.name, b.rows, b.texts) for b in again] == [(b.index, b.name, b.rows, b.texts) for b in batches[70:]]
    with pytest.raises(ValueError, match="another stream"):
        _stream(real_corpus, batch_size=16).load_state_dict(state)


def test_held_rows_survive_a_resume(real_corpus: tuple[Path, Path]) -> None:
    """A state taken while rows are held back (their text clashed) restores them, texts and all."""
    stream = _stream(real_corpus, batch_size=64, window_rows=200)
    for _ in range(400):
        stream.next_batch()
        if any(stream.held):
            break
    state = json.loads(json.dumps(stream.state_dict()))
    assert any(d["held"] for d in state["datasets"])
    expected = [stream.next_batch() for _ in range(40)]
    stream.close()
    resumed = _stream(real_corpus, batch_size=64, window_rows=200)
    resumed.load_state_dict(state)
    assert [(b.rows, b.texts) for b in (resumed.next_batch() for _ in range(40))] == [(b.rows, b.texts) for b in expected]
    resumed.close()


def test_processes_split_each_global_batch(real_corpus: tuple[Path, Path]) -> None:
    """2 processes of 16 rows train on exactly the rows of 1 process of 32, the same dataset at each step."""
    from pipeline.train.loader import StreamingTrainData

    def rows_by_batch(world_size: int) -> list[list[tuple[str, list]]]:
        per_rank = []
        for rank in range(world_size):
            stream = _stream(real_corpus, batch_size=32, multiple_of=world_size)
            data = StreamingTrainData(stream, lambda rows: rows, rank=rank, world_size=world_size, prefetch=2)
            batches = iter(data)
            per_rank.append([next(batches) for _ in range(60)])
            batches.close()
            assert data.state_dict()["batches"] == 60
            stream.close()
        return per_rank

    (alone,) = rows_by_batch(1)
    first, second = rows_by_batch(2)
    for whole, a, b in zip(alone, first, second):
        assert len(a) == len(b) == 16
        assert whole == a + b
        assert not {r["anchor"] for r in a} & {r["anchor"] for r in b}


def test_a_short_batch_is_cut_to_a_multiple_of_the_processes(real_corpus: tuple[Path, Path]) -> None:
    """qqp-triplets has 73 rows but fewer distinct texts: a batch of 64 comes out short, cut to an even length."""
    datasets = [d for d in training_datasets(*real_corpus) if d.entry.name == "qqp-triplets"]
    stream = BatchStream(datasets, [1], 64, seed=0, multiple_of=4)
    lengths = {len(stream.next_batch()) for _ in range(20)}
    stream.close()
    assert lengths and all(n % 4 == 0 and 0 < n <= 64 for n in lengths)
    assert min(lengths) < 64


def test_window_memory_is_bounded(real_corpus: tuple[Path, Path]) -> None:
    """A dataset holds at most its current window and the one read ahead, whatever its size."""
    stream = _stream(real_corpus, window_rows=250)
    for _ in range(300):
        stream.next_batch()
    for reader in stream.readers:
        held = [w for w in (reader._window, reader._ahead[2].result() if reader._ahead else None) if w is not None]
        assert all(len(w) <= 250 for w in held) and len(held) <= 2
    stream.close()
    assert np.all([r._window is None for r in stream.readers])
