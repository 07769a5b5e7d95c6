"""Temporary batch files and hash partitions: how ingest keeps memory flat.

In: polars DataFrames. Out: folders of uncompressed Arrow IPC files
(:class:`FrameFiles`), read back a batch at a time (:func:`read_batches`), and rows
spread over hash partitions of a key on disk (:func:`key_partitions`), so a join or a
"first of each key" rule can run one partition at a time.

Used by :mod:`pipeline.ingest` and by the source modules whose candidates need a
join over all rows (Reddit's parent lookup).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import polars as pl

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
    however large the whole, memory holds about one batch.
    """
    pending: list[pl.DataFrame] = []
    pending_rows = 0
    for path in paths:
        batch = pl.read_ipc(path)
        pending.append(batch)
        pending_rows += batch.height
        if pending_rows >= batch_rows:
            yield concat(pending)
            pending, pending_rows = [], 0
    if pending:
        yield concat(pending)


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

    On disk, each batch of rows becomes one Arrow IPC file holding one record batch
    per partition (few files, however many partitions), and a partition is read back
    by fetching just its record batches from each file.
    """
    import pyarrow as pa

    if n_parts == 1:
        rows = read_all(paths)
        if rows is not None:
            yield 0, rows if where is None else rows.filter(where)
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    part_dir = Path(tempfile.mkdtemp(prefix=".partitions-", dir=work_dir))
    try:
        # (file, {partition: [record batch positions]}) for each batch written.
        written: list[tuple[Path, dict[int, list[int]]]] = []
        schema: pa.Schema | None = None
        for number, batch in enumerate(read_batches(paths)):
            if where is not None:
                batch = batch.filter(where)
            split = batch.with_columns(partition_of(key, n_parts).alias("_part")).partition_by(
                "_part", as_dict=True, include_key=False, maintain_order=True
            )
            path = part_dir / f"{number:06d}.arrow"
            positions: dict[int, list[int]] = {}
            with pa.OSFile(str(path), "wb") as sink:
                writer = None
                count = 0
                for (index,), rows in sorted(split.items()):
                    table = rows.to_arrow()
                    schema = schema or table.schema
                    if writer is None:
                        writer = pa.ipc.new_file(sink, schema)
                    for record_batch in table.cast(schema).to_batches():
                        positions.setdefault(int(index), []).append(count)
                        writer.write_batch(record_batch)
                        count += 1
                if writer is not None:
                    writer.close()
            written.append((path, positions))
        for index in range(n_parts):
            pieces = []
            for path, positions in written:
                if index in positions:
                    with pa.OSFile(str(path)) as source:
                        reader = pa.ipc.open_file(source)
                        for position in positions[index]:
                            piece = pl.from_arrow(reader.get_batch(position))
                            assert isinstance(piece, pl.DataFrame)
                            pieces.append(piece)
            if pieces:
                yield index, concat(pieces)
    finally:
        shutil.rmtree(part_dir, ignore_errors=True)
