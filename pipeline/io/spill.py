"""Temporary batch files and hash partitions: how ingest keeps memory flat.

In: polars DataFrames. Out: folders of uncompressed Arrow IPC files
(:class:`FrameFiles`), read back a batch at a time (:func:`read_batches`), and rows
spread over hash partitions of a key on disk (:func:`key_partitions`), so a join or a
"first of each key" rule can run one partition at a time.

Used by :mod:`pipeline.ingest` and by the source modules whose candidates need a
join over all rows (Reddit's parent lookup). Reading batches back hands freed heap
to the operating system between batches (:func:`pipeline.memory.trimmed`), so a
long pass stays at about one batch of resident memory.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import polars as pl

from pipeline.memory import trimmed

BATCH_ROWS = 100_000
# Bytes of staged data per key partition: a partition is what one join holds.
PARTITION_BYTES = 16 << 20
HASH_SEED = 0x5EED_0001


class FrameFiles:
    """A folder of uncompressed Arrow IPC files, one per DataFrame written, in order.

    polars writes and reads them natively (no conversion to Arrow types and back);
    reading one file at a time keeps memory to about one batch.
    """

    def __init__(self, folder: Path, create: bool = True, fresh: bool = False) -> None:
        self.folder = Path(folder)
        if fresh and self.folder.exists():
            shutil.rmtree(self.folder)
        if create:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._count = len(self.files())

    def write(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` as the next file."""
        frame.write_ipc(self.folder / f"{self._count:06d}.arrow", compression="uncompressed")
        self._count += 1

    def files(self) -> list[Path]:
        """The files written, in order."""
        return sorted(self.folder.glob("*.arrow")) if self.folder.is_dir() else []

    def read(self) -> pl.DataFrame | None:
        """All rows written, as one DataFrame (None when nothing was written)."""
        return read_all(self.files())


def read_batches(paths: Sequence[Path], batch_rows: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """The rows of Arrow IPC files in order, about ``batch_rows`` at a time.

    One file is read at a time (the files are batches of :class:`FrameFiles`), so
    however large the whole, memory holds about one batch; the heap a batch leaves
    free is returned before the next is read.
    """
    return trimmed(_rebatched((pl.read_ipc(path) for path in paths), batch_rows))


def read_all(paths: Sequence[Path]) -> pl.DataFrame | None:
    """Every row of Arrow IPC files, as one DataFrame (None for no files): for what
    is meant to fit in memory, a partition or a small input."""
    frames = [pl.read_ipc(path) for path in paths]
    return concat(frames) if frames else None


def concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Frames one after the other, one chunk per column.

    Rechunked: polars 2.1 can panic on string functions over frames concatenated
    from several record batches.
    """
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed", rechunk=True)


def partition_count(paths: Sequence[Path], partition_bytes: int | None = None) -> int:
    """How many key partitions the rows of ``paths`` need: about one per ``PARTITION_BYTES``.

    A function of the files' sizes only, so every rebuild of the same inputs (and
    every worker of a cluster) picks the same number.
    """
    total_bytes = sum(path.stat().st_size for path in paths)
    return max(1, -(-total_bytes // (partition_bytes or PARTITION_BYTES)))


def partition_of(key: pl.Expr, n_parts: int) -> pl.Expr:
    """The partition of each row: a seeded hash of ``key`` modulo ``n_parts``."""
    return (key.hash(HASH_SEED) % n_parts).cast(pl.Int64)


def key_partitions(
    paths: Sequence[Path], key: pl.Expr, n_parts: int, work_dir: Path, where: pl.Expr | None = None
) -> Iterator[tuple[int, pl.DataFrame]]:
    """``(partition, rows)`` of the rows of ``paths`` split by a hash of ``key``.

    Rows with equal keys land in the same partition, in input order; partitions come
    in order, one in memory at a time, and empty ones are skipped. With one
    partition the rows are not copied to disk first. With ``where``, only the rows
    where it holds are partitioned (the others are never written).

    On disk, each batch of rows becomes one file holding, partition after partition,
    an Arrow IPC stream of that partition's rows (few files, however many partitions);
    where each stream ends is kept here, so a partition is read back with one
    ``pread`` per file, its stream decoded on its own. A partition is then a piece of
    every batch file: batch files x partitions pieces, both growing with the input.
    Past ``MAX_FANOUT`` partitions the rows are split in two rounds instead: into
    groups of consecutive partitions, then each group (read back, in input order)
    into its own partitions, about 2 x batch files x sqrt(partitions) pieces for one
    more write and read of the rows.
    """
    if n_parts == 1:
        rows = read_all(paths)
        if rows is not None:
            yield 0, rows if where is None else rows.filter(where)
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    part_dir = Path(tempfile.mkdtemp(prefix=".partitions-", dir=work_dir))
    try:
        batches = (batch if where is None else batch.filter(where) for batch in read_batches(paths))
        batches = (batch.with_columns(partition_of(key, n_parts).alias(_PARTITION)) for batch in batches)
        if n_parts <= MAX_FANOUT:
            yield from _partitions(_split(batches, pl.col(_PARTITION), n_parts, part_dir), n_parts)
            return
        groups = -(-n_parts // MAX_FANOUT)
        per_group = -(-n_parts // groups)
        first_round = _split(batches, pl.col(_PARTITION) // per_group, groups, part_dir / "groups")
        for group in range(groups):
            folder = part_dir / f"group-{group:05d}"
            rows = _rebatched(_pieces(first_round, group))
            second_round = _split(rows, pl.col(_PARTITION) - group * per_group, per_group, folder)
            for index, partition in _partitions(second_round, per_group):
                yield group * per_group + index, partition
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(part_dir, ignore_errors=True)


# Past this many partitions, key_partitions splits rows in two rounds.
MAX_FANOUT = 256
_PARTITION = "_spill_partition"


def _split(batches: Iterable[pl.DataFrame], part: pl.Expr, n_parts: int, folder: Path) -> list[tuple[Path, np.ndarray]]:
    """Write each batch as one file of per-``part`` IPC streams; for each file, where
    each part's stream ends (a part without rows ends where the one before it does)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, batch in enumerate(batches):
        split = batch.with_columns(part.alias("_split")).partition_by(
            "_split", as_dict=True, include_key=False, maintain_order=True
        )
        path = folder / f"{number:06d}.arrows"
        ends = np.zeros(n_parts, dtype=np.int64)
        with open(path, "wb") as sink:
            for (index,), rows in sorted(split.items()):
                rows.write_ipc_stream(sink, compression="uncompressed")
                ends[index] = sink.tell()
        written.append((path, np.maximum.accumulate(ends)))
    return written


def _pieces(written: list[tuple[Path, np.ndarray]], index: int) -> Iterator[pl.DataFrame]:
    """Part ``index`` of each file :func:`_split` wrote, in file order."""
    for path, ends in written:
        start = int(ends[index - 1]) if index else 0
        if ends[index] > start:
            yield pl.read_ipc_stream(io.BytesIO(_read_range(path, start, int(ends[index]) - start)))


def _partitions(written: list[tuple[Path, np.ndarray]], n_parts: int) -> Iterator[tuple[int, pl.DataFrame]]:
    for index in range(n_parts):
        pieces = list(_pieces(written, index))
        if pieces:
            yield index, concat(pieces).drop(_PARTITION)


def _rebatched(frames: Iterable[pl.DataFrame], batch_rows: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """``frames`` concatenated into batches of about ``batch_rows`` rows, in order."""
    pending: list[pl.DataFrame] = []
    pending_rows = 0
    for frame in frames:
        pending.append(frame)
        pending_rows += frame.height
        if pending_rows >= batch_rows:
            yield concat(pending)
            pending, pending_rows = [], 0
    if pending:
        yield concat(pending)


def _read_range(path: Path, start: int, length: int) -> bytes:
    """``length`` bytes of ``path`` from ``start``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while length:
            data = os.pread(fd, length, start)
            if not data:
                raise OSError(f"{path}: ends before byte {start + length:,}")
            parts.append(data)
            start, length = start + len(data), length - len(data)
        return b"".join(parts)
    finally:
        os.close(fd)
