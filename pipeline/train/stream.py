"""Streamed training batches: a run's Parquet shards in; endless batches, each from one dataset, out.

In: the run's datasets (:class:`~pipeline.train.data.TrainingDataset`: training shards
and text columns), one positive weight per dataset, the global batch size (rows per
step over all processes), a seed and ``window_rows``, the rows a dataset shuffles
together. Out: :meth:`BatchStream.next_batch`, one :class:`StreamBatch` after another:
its dataset, its row numbers (a row's position in its dataset's training shards laid
end to end in manifest order, as in the in-memory loader's table) and the texts of
each column, no text twice; and the stream's position as a small JSON-able state
(:meth:`BatchStream.state_dict`), from which :meth:`BatchStream.load_state_dict`
continues exactly where it was.

Reading (:class:`DatasetReader`): a pass over a dataset visits its shards in a seeded
order, each shard's row groups in a seeded order, and each row group in slices of at
most ``window_rows`` rows, read in order; consecutive slices are packed into windows
of at most ``window_rows`` rows (one slice at least). A window is read, its texts
hashed and its rows put in a seeded random order, and then handed out row by row; the
next window is read on a background thread meanwhile, so a dataset holds two windows
in memory (three while a batch spans two), whatever the corpus size. When a pass ends the next one begins in a
new seeded order (a small dataset repeats, as in the 1B project). Every order is a
function of (seed, dataset, pass, position) alone.

Batching (:class:`BatchStream`): global batch ``k`` comes from the dataset drawn for
``k`` with probability ``weight / sum(weights)``; its rows come from that dataset's
reader, and a row whose anchor, positive or negative text is already in the batch
waits for the dataset's next batch (MultipleNegativesRankingLoss would count the copy
as a false negative). Under torchrun every process runs the same stream and keeps its
own slice of each global batch (:mod:`pipeline.train.loader`), so all processes train
on one dataset at each step and the sequence of global batches is the same for any
number of processes.

numpy and pyarrow at import; polars when texts are hashed. No torch.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa

from pipeline.sampling.batch_sampler import text_hashes
from pipeline.train.verify import ShardError, ShardVerifier, open_shard

if TYPE_CHECKING:
    from pipeline.train.data import TrainingDataset

STATE_VERSION = 1
DEFAULT_WINDOW_ROWS = 100_000
# Datasets are drawn for this many batches at a time (one generator per block).
DRAW_BLOCK = 4096
# Tags that keep each kind of seeded choice on a generator of its own.
_DRAWS, _SHARD_ORDER, _GROUP_ORDER, _WINDOW_ORDER = 0, 1, 2, 3

# Where a window starts in its pass: (shard position, row-group position in that shard, slice of that row group).
Cursor = tuple[int, int, int]


@dataclass
class Window:
    """Rows of one dataset read together and shuffled: the table, and per position its row number and hashes."""

    pass_number: int
    start: Cursor
    next_pass: int
    next_start: Cursor
    table: pa.Table
    order: np.ndarray  # position -> row of ``table``
    rows: np.ndarray  # position -> row number in the dataset
    hashes: np.ndarray  # position -> text hashes

    def __len__(self) -> int:
        return len(self.order)

    def texts(self, position: int) -> tuple[str, ...]:
        row = int(self.order[position])
        return tuple(self.table.column(c)[row].as_py() for c in range(self.table.num_columns))


@dataclass
class HeldRow:
    """A row taken from its window but not yet trained on (its text clashed with a batch's)."""

    row: int
    texts: tuple[str, ...]
    hashes: list[int]


@dataclass
class StreamBatch:
    """One global batch: its index in the stream, its dataset, row numbers and texts by column."""

    index: int
    dataset: int
    name: str
    rows: list[int]
    texts: dict[str, list[str]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.rows)


class DatasetReader:
    """Endless rows of one dataset, a shuffled window at a time (see the module docstring).

    Args:
        index: the dataset's position in the run (part of every seed).
        dataset: its shards and columns.
        seed: the run's seed.
        window_rows: the most rows read and shuffled together.
        verifier: checks each shard's hash before it is opened (None: no check).
        pool: where the next window is read ahead (None: read when needed).
    """

    def __init__(
        self,
        index: int,
        dataset: TrainingDataset,
        seed: int,
        window_rows: int = DEFAULT_WINDOW_ROWS,
        verifier: ShardVerifier | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        if window_rows < 1:
            raise ValueError(f"window_rows must be at least 1, got {window_rows}")
        self.index = index
        self.name = dataset.entry.name
        self.shards = list(dataset.shards)
        self.columns = list(dataset.columns)
        self.rows = dataset.rows
        self.seed = int(seed)
        self.window_rows = window_rows
        self.verifier = verifier
        self.pool = pool
        self._shard_starts = np.concatenate([[0], np.cumsum([s.rows for s in self.shards])[:-1]]).astype(np.int64)
        self._schema = pa.schema([pa.field(c, pa.string()) for c in self.columns])
        # Read side (the background thread): footers seen, the open file, the open row group.
        self._group_rows: dict[int, list[int]] = {}
        self._file: tuple[int, Any] | None = None
        self._slices: list[Any] | None = None  # [(shard, group), next slice, batch iterator]
        # Hand-out side (the caller's thread).
        self.pass_number = 0
        self.start: Cursor = (0, 0, 0)
        self.offset = 0
        self._window: Window | None = None
        self._ahead: tuple[int, Cursor, Future[Window]] | None = None

    # --- the order of a pass --------------------------------------------------------
    def _rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *parts])

    def _parquet(self, shard: int) -> Any:
        if self._file is None or self._file[0] != shard:
            ref = self.shards[shard]
            if self.verifier is not None:
                self.verifier.wait(ref)
            self._file = (shard, open_shard(ref))
        return self._file[1]

    def _rows_per_group(self, shard: int) -> list[int]:
        if shard not in self._group_rows:
            metadata = self._parquet(shard).metadata
            self._group_rows[shard] = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        return self._group_rows[shard]

    def _slices_from(self, pass_number: int, cursor: Cursor):
        """``(cursor, shard, row group, slice, rows, first row number)`` from ``cursor`` to the pass's end."""
        shard_order = shard_order_of(self.seed, self.index, pass_number, len(self.shards))
        position, group_position, slice_number = cursor
        while position < len(shard_order):
            shard = int(shard_order[position])
            group_rows = self._rows_per_group(shard)
            group_order = self._rng(_GROUP_ORDER, self.index, pass_number, position).permutation(len(group_rows))
            group_starts = np.concatenate([[0], np.cumsum(group_rows)[:-1]])
            while group_position < len(group_order):
                group = int(group_order[group_position])
                total = group_rows[group]
                while slice_number * self.window_rows < total:
                    first = int(self._shard_starts[shard] + group_starts[group]) + slice_number * self.window_rows
                    rows = min(self.window_rows, total - slice_number * self.window_rows)
                    yield (position, group_position, slice_number), shard, group, slice_number, rows, first
                    slice_number += 1
                group_position, slice_number = group_position + 1, 0
            position, group_position = position + 1, 0

    def _read_slice(self, shard: int, group: int, slice_number: int) -> pa.RecordBatch:
        """Slice ``slice_number`` of a row group; row groups are read in order, so the open one continues."""
        if self._slices is None or self._slices[0] != (shard, group) or self._slices[1] != slice_number:
            batches = self._parquet(shard).iter_batches(batch_size=self.window_rows, row_groups=[group], columns=self.columns)
            self._slices = [(shard, group), 0, batches]
            for _ in range(slice_number):
                next(batches)
            self._slices[1] = slice_number
        batch = next(self._slices[2])
        self._slices[1] += 1
        return batch

    def read_window(self, pass_number: int, start: Cursor) -> Window:
        """The window that starts at ``start`` of pass ``pass_number``: read, hashed, shuffled."""
        slices, total = [], 0
        next_pass, next_start = pass_number + 1, (0, 0, 0)
        for cursor, shard, group, slice_number, rows, first in self._slices_from(pass_number, start):
            if slices and total + rows > self.window_rows:
                next_pass, next_start = pass_number, cursor
                break
            slices.append((shard, group, slice_number, rows, first))
            total += rows
        parts = []
        for shard, group, slice_number, rows, _ in slices:
            try:
                batch = self._read_slice(shard, group, slice_number)
            except (pa.ArrowException, OSError, StopIteration) as exc:
                raise ShardError(f"{self.shards[shard].path}: row group {group} cannot be read ({exc!r})") from None
            if batch.num_rows != rows:
                raise ShardError(f"{self.shards[shard].path}: row group {group} gave {batch.num_rows} rows, expected {rows}")
            parts.append(pa.Table.from_batches([batch]).cast(self._schema))
        table = pa.concat_tables(parts).combine_chunks()
        numbers = np.concatenate([np.arange(first, first + rows, dtype=np.int64) for *_, rows, first in slices])
        hashes = text_hashes([table.column(c) for c in self.columns])
        order = self._rng(_WINDOW_ORDER, self.index, pass_number, *start).permutation(total)
        return Window(pass_number, start, next_pass, next_start, table, order, numbers[order], hashes[order])

    # --- handing rows out -----------------------------------------------------------
    def _submit(self, pass_number: int, start: Cursor) -> None:
        if self.pool is not None:
            self._ahead = (pass_number, start, self.pool.submit(self.read_window, pass_number, start))

    def prefetch(self) -> None:
        """Start reading the first window now (in the background), if nothing is read or reading."""
        if self._window is None and self._ahead is None:
            self._submit(self.pass_number, self.start)

    def _load(self, pass_number: int, start: Cursor) -> Window:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            window = ahead[2].result()  # a failed read raises here, before any row of it is used
            if ahead[:2] == (pass_number, start):
                return window
        return self.read_window(pass_number, start)

    def next_row(self) -> tuple[Window, int]:
        """The next row: its window and position there."""
        if self._window is None or self.offset >= len(self._window):
            if self._window is not None:
                self.pass_number, self.start, self.offset = self._window.next_pass, self._window.next_start, 0
            self._window = self._load(self.pass_number, self.start)
            self._submit(self._window.next_pass, self._window.next_start)
        self.offset += 1
        return self._window, self.offset - 1

    def state_dict(self) -> dict[str, Any]:
        """Where the next row comes from: the pass, the start of its window and the rows taken from it."""
        if self._window is not None and self.offset >= len(self._window):
            return {"pass": self._window.next_pass, "start": list(self._window.next_start), "offset": 0}
        return {"pass": self.pass_number, "start": list(self.start), "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (the window it points into is read again)."""
        self.discard()
        self.pass_number, self.start, self.offset = int(state["pass"]), tuple(state["start"]), int(state["offset"])

    def discard(self) -> None:
        """Drop the windows held and wait out a read in flight."""
        if self._ahead is not None:
            try:
                self._ahead[2].result()
            except Exception:  # noqa: BLE001 - the read is thrown away; reading it again raises again
                pass
        self._ahead, self._window = None, None


class BatchStream:
    """Endless global batches, each from one dataset drawn by weight, no text twice in a batch.

    Args:
        datasets: the run's datasets, in data_config order.
        weights: one positive weight per dataset.
        batch_size: rows of a global batch (per-process batch size x processes).
        seed: the run's seed; the stream is a function of it (and of the data) alone.
        window_rows: rows a dataset reads and shuffles together (see the module docstring).
        multiple_of: a batch's length is cut to a multiple of this (the process count)
            so that every process gets as many rows; the rows cut wait for the
            dataset's next batch.
        verifier: checks each shard's SHA-256 before a reader opens it.
        read_threads: threads reading windows ahead (0: read when needed).
    """

    def __init__(
        self,
        datasets: Sequence[TrainingDataset],
        weights: Sequence[float],
        batch_size: int,
        seed: int = 0,
        window_rows: int = DEFAULT_WINDOW_ROWS,
        multiple_of: int = 1,
        verifier: ShardVerifier | None = None,
        read_threads: int = 2,
    ) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"need one weight per dataset, got {len(weights)} weights for {len(datasets)} datasets")
        if any(not w > 0 for w in weights):
            raise ValueError(f"weights must be positive, got {list(weights)}")
        if batch_size < multiple_of or multiple_of < 1:
            raise ValueError(f"batch_size {batch_size} must be at least multiple_of {multiple_of} (and that at least 1)")
        self.names = [d.entry.name for d in datasets]
        self.columns = [list(d.columns) for d in datasets]
        self.probabilities = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.batch_size = batch_size
        self.seed = int(seed)
        self.window_rows = window_rows
        self.multiple_of = multiple_of
        self._pool = ThreadPoolExecutor(read_threads, thread_name_prefix="pairforge-read") if read_threads else None
        self.readers = [DatasetReader(i, d, seed, window_rows, verifier, self._pool) for i, d in enumerate(datasets)]
        self.held: list[deque[HeldRow]] = [deque() for _ in datasets]
        self.batches = 0
        self.clashes = 0  # rows held back because a text of theirs was in the batch already
        self._draws: tuple[int, np.ndarray] | None = None

    @property
    def batches_per_pass(self) -> int:
        """Global batches the data fills once: ``sum(max(1, rows // batch_size))``."""
        return sum(max(1, r.rows // self.batch_size) for r in self.readers)

    def dataset_of(self, index: int) -> int:
        """The dataset drawn for global batch ``index``."""
        block = index // DRAW_BLOCK
        if self._draws is None or self._draws[0] != block:
            rng = np.random.default_rng([self.seed, _DRAWS, block])
            self._draws = (block, rng.choice(len(self.readers), size=DRAW_BLOCK, p=self.probabilities))
        return int(self._draws[1][index % DRAW_BLOCK])

    def prefetch(self) -> None:
        """Start reading each dataset's next window, the datasets drawn soonest first."""
        upcoming = dict.fromkeys(self.dataset_of(self.batches + k) for k in range(min(DRAW_BLOCK, 64 * len(self.readers))))
        for index in [*upcoming, *range(len(self.readers))]:
            self.readers[index].prefetch()

    def next_batch(self) -> StreamBatch:
        """The next global batch (fewer than ``batch_size`` rows only when its dataset has too few distinct texts)."""
        dataset = self.dataset_of(self.batches)
        reader, held = self.readers[dataset], self.held[dataset]
        chosen: list[tuple[Window, int] | HeldRow] = []
        seen: set[int] = set()
        clashed: list[HeldRow] = []
        budget = reader.rows + len(held)
        while len(chosen) < self.batch_size and budget > 0:
            budget -= 1
            candidate: tuple[Window, int] | HeldRow = held.popleft() if held else reader.next_row()
            if isinstance(candidate, HeldRow):
                hashes = candidate.hashes
            else:
                hashes = candidate[0].hashes[candidate[1]].tolist()
            if seen.isdisjoint(hashes):
                chosen.append(candidate)
                seen.update(hashes)
            else:
                clashed.append(_hold(candidate))
        self.clashes += len(clashed)
        cut = len(chosen) % self.multiple_of
        if len(chosen) < self.multiple_of:
            raise ValueError(
                f"dataset {self.names[dataset]!r} filled a batch with only {len(chosen)} distinct rows, fewer than"
                f" the {self.multiple_of} training processes: give it more rows or leave it out of the data config"
            )
        left_over = [_hold(c) for c in chosen[len(chosen) - cut :]] if cut else []
        held.extendleft(reversed(left_over + clashed))
        batch = self._materialize(dataset, chosen[: len(chosen) - cut])
        self.batches += 1
        return batch

    def _materialize(self, dataset: int, chosen: list[tuple[Window, int] | HeldRow]) -> StreamBatch:
        columns = self.columns[dataset]
        texts: dict[str, list[Any]] = {c: [None] * len(chosen) for c in columns}
        rows: list[int] = [0] * len(chosen)
        by_window: dict[int, tuple[Window, list[int], list[int]]] = {}
        for slot, candidate in enumerate(chosen):
            if isinstance(candidate, HeldRow):
                rows[slot] = candidate.row
                for column, text in zip(columns, candidate.texts):
                    texts[column][slot] = text
            else:
                window, position = candidate
                rows[slot] = int(window.rows[position])
                entry = by_window.setdefault(id(window), (window, [], []))
                entry[1].append(slot)
                entry[2].append(position)
        for window, slots, positions in by_window.values():
            taken = window.table.take(pa.array(window.order[positions]))
            for column in columns:
                for slot, text in zip(slots, taken.column(column).to_pylist()):
                    texts[column][slot] = text
        return StreamBatch(self.batches, dataset, self.names[dataset], rows, texts)

    def state_dict(self) -> dict[str, Any]:
        """The stream's position: batches drawn, and each dataset's reader position and held rows."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "window_rows": self.window_rows,
            "batches": self.batches,
            "datasets": [
                {"name": name, **reader.state_dict(), "held": [{"row": h.row, "texts": list(h.texts)} for h in held]}
                for name, reader, held in zip(self.names, self.readers, self.held)
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a stream over the same data and settings.

        Raises:
            ValueError: the state is of another version, seed, batch size, window or dataset list.
        """
        mine = {"version": STATE_VERSION, "seed": self.seed, "batch_size": self.batch_size, "window_rows": self.window_rows}
        theirs = {key: state.get(key) for key in mine}
        names = [d.get("name") for d in state.get("datasets", [])]
        if theirs != mine or names != self.names:
            raise ValueError(f"the loader state is of another stream ({theirs}, datasets {names}); this one is {mine}, {self.names}")
        for reader, held, saved in zip(self.readers, self.held, state["datasets"]):
            reader.load_state_dict(saved)
            held.clear()
            if saved["held"]:
                texts = [[h["texts"][c] for h in saved["held"]] for c in range(len(reader.columns))]
                hashes = text_hashes(texts)
                held.extend(HeldRow(int(h["row"]), tuple(h["texts"]), hashes[i].tolist()) for i, h in enumerate(saved["held"]))
        self.batches = int(state["batches"])

    def close(self) -> None:
        """Stop reading ahead and drop every window."""
        for reader in self.readers:
            reader.discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def shard_order_of(seed: int, dataset: int, pass_number: int, shards: int) -> np.ndarray:
    """The order in which pass ``pass_number`` over dataset ``dataset`` visits its shards."""
    return np.random.default_rng([int(seed), _SHARD_ORDER, dataset, pass_number]).permutation(shards)


def first_use_order(datasets: Sequence[TrainingDataset], weights: Sequence[float], seed: int) -> list[Any]:
    """Every shard of the run, in about the order the readers first open them.

    A shard's first use is estimated as the rows its dataset's first pass reads before
    it, divided by the dataset's share of the batches; so each dataset's first shard
    comes first, and a heavy dataset's later shards before a light one's. The shard
    check hashes them in this order (:class:`~pipeline.train.verify.ShardVerifier`).
    """
    total = float(sum(weights))
    keyed = []
    for index, (dataset, weight) in enumerate(zip(datasets, weights)):
        before = 0
        for shard in shard_order_of(seed, index, 0, len(dataset.shards)).tolist():
            keyed.append((before * total / weight, index, dataset.shards[shard]))
            before += dataset.shards[shard].rows
    return [shard for *_, shard in sorted(keyed, key=lambda k: k[:2])]


def _hold(candidate: tuple[Window, int] | HeldRow) -> HeldRow:
    if isinstance(candidate, HeldRow):
        return candidate
    window, position = candidate
    return HeldRow(int(window.rows[position]), window.texts(position), window.hashes[position].tolist())


def planned_batches(batches_per_pass: int, epochs: float, steps_per_epoch: int | None) -> int:
    """Global batches in ``epochs`` passes (``steps_per_epoch`` batches a pass when given)."""
    return max(1, math.ceil((steps_per_epoch or batches_per_pass) * epochs))
