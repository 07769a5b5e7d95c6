"""The one-pass JSON-lines reader: a clean plain file of string fields, read whole by DuckDB.

In: a plain JSON-lines path, an Arrow schema of string fields, a
:class:`~pipeline.io.context.ReadContext`. Out: polars DataFrames of those fields plus
``_line``, in file order, or :class:`WholeFileReadFailed` at the first thing only the
chunked reader handles (a bad, blank or over-long line, a value of another type),
possibly after rows came out: :func:`pipeline.io.jsonl.read_jsonl` then starts the
file over with the chunked reader (:meth:`~pipeline.io.context.ReadContext.restart`).

DuckDB's JSON reader parses with its own threads at about half the CPU of polars'
parser on SNLI lines; a thread of its own meanwhile counts the file's lines, finds
the longest and (given an :class:`~pipeline.io.digest.InputDigest`) hashes it, in
one pass through a memory mapping whose pages are dropped once read.
"""

from __future__ import annotations

import mmap
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.io.compression import is_compressed
from pipeline.io.context import ReadContext
from pipeline.io.digest import InputDigest
from pipeline.io.jsonl.chunked import PolarsFastPath
from pipeline.io.lines import BOM, COUNT_STEP, unmap_before


class WholeFileReadFailed(Exception):
    """The one-pass reader met something only the chunked reader handles (a bad, blank
    or over-long line, a value of the wrong type), possibly after it had yielded rows:
    the file is read again, chunked, after its consumer dropped what it got."""


def read_jsonl_one_pass(path: Path, schema: pa.Schema, ctx: ReadContext) -> Iterator[pl.DataFrame] | None:
    """A plain JSON-lines file of string fields read in one pass by DuckDB's JSON
    reader (its own threads, about twice polars' speed per byte here), or None when
    the file does not qualify (compressed, not a regular file, empty, a byte-order
    mark, a path DuckDB would take for a glob or a URL): the chunked readers take it
    from the start.

    DuckDB stops at a malformed line, bad UTF-8 or a line that is not an object, skips
    blank lines, parses lines over our size bound and turns a number, list or object
    where a string is declared into text: each of those ends the pass with
    :class:`WholeFileReadFailed` (a converted value found by the same check as the
    chunked fast path; a skipped or over-long line by the scan that counts and
    measures the lines, with the file's SHA-256, on a thread of its own). Rows come in
    file order, row ``i`` being line ``i``.
    """
    if is_compressed(path) or not all(pa.types.is_string(f.type) for f in schema):
        return None
    if any(c in str(path) for c in "*?[{") or "://" in str(path):  # DuckDB would read it as a glob or URL
        return None
    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode) or not status.st_size or handle.read(len(BOM)) == BOM:
            return None
    return _whole_file_rows(path, schema, ctx, status.st_size)


def _whole_file_rows(path: Path, schema: pa.Schema, ctx: ReadContext, size: int) -> Iterator[pl.DataFrame]:
    import duckdb

    scan = _FileScan(path, size, ctx.digest_for(path), ctx.max_line_bytes)
    columns = ", ".join(f"{_sql_string(name)}: 'VARCHAR'" for name in schema.names)
    connection = duckdb.connect(
        config={
            "threads": pl.thread_pool_size(),  # what polars uses (POLARS_MAX_THREADS)
            "produce_arrow_string_view": True,  # polars takes the strings without a copy
            "autoinstall_known_extensions": False,  # never a download at run time
            "autoload_known_extensions": False,
        }
    )
    query = (
        f"SELECT * FROM read_json({_sql_string(str(path))}, format = 'newline_delimited', records = 'true', "
        f"columns = {{{columns}}}, maximum_object_size = {max(ctx.max_line_bytes, 1 << 20) + 1})"
    )
    check = PolarsFastPath(schema)  # string fields only: the chunked fast path's check applies
    line = 1
    completed = False
    try:
        for batch in connection.sql(query).to_arrow_reader(ctx.batch_rows):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            if scan.problem is not None:  # the scan runs ahead: stop before parsing the rest
                raise WholeFileReadFailed(f"{path}: {scan.problem}")
            if check.holds_converted_values(frame):
                raise WholeFileReadFailed(f"{path}: a value of another type where a string is declared")
            lines = pl.int_range(line, line + frame.height, eager=True, dtype=pl.Int64)
            line += frame.height
            yield frame.select(schema.names).with_columns(lines.alias("_line"))
        completed = True
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        # DuckDB's error: raised by the query, or later through the Arrow stream (as an
        # OSError); a real I/O error shows again when the file is read chunked.
        raise WholeFileReadFailed(f"{path}: {exc}") from exc
    finally:
        connection.close()
        newlines = scan.result(cut_short=not completed)
    if newlines.longest > ctx.max_line_bytes:
        raise WholeFileReadFailed(f"{path}: a line of {newlines.longest:,} bytes (over the bound)")
    if line - 1 != newlines.lines:
        raise WholeFileReadFailed(f"{path}: {newlines.lines} lines but {line - 1} rows (blank lines)")
    ctx.lines_seen = newlines.lines


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class _ScanResult:
    lines: int
    longest: int  # bytes of the longest line, its newline not counted


class _FileScan:
    """Counts a plain file's lines and finds its longest on a thread of its own (and,
    given its :class:`InputDigest`, hashes it in the same pass), through a memory
    mapping whose pages are dropped once read, while another reader parses the file.

    :attr:`problem` says, as soon as the scan reaches it, why the one-pass read cannot
    stand (an empty line, or one over ``max_line_bytes``), so the parse stops early."""

    _BLOCK = 16 << 20

    def __init__(self, path: Path, size: int, digest: InputDigest | None, max_line_bytes: int) -> None:
        self._stop = False
        self.problem: str | None = None
        self._max_line_bytes = max_line_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pairforge-scan")
        self._future = self._pool.submit(self._run, Path(path), size, digest)

    def _run(self, path: Path, size: int, digest: InputDigest | None) -> _ScanResult:
        newlines = 0
        longest = 0
        previous = -1  # where the last newline seen is
        released = 0
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            if digest is not None:
                digest.opened()
            with memoryview(mapped) as whole:
                for start in range(0, size, self._BLOCK):
                    if self._stop:
                        break
                    end = min(start + self._BLOCK, size)
                    with whole[start:end] as block:
                        if digest is not None:
                            digest.hash_here(block)
                        data = np.frombuffer(block, dtype=np.uint8)
                        for step in range(0, len(data), COUNT_STEP):
                            ends = np.flatnonzero(data[step : step + COUNT_STEP] == 10) + (start + step)
                            if len(ends):
                                gaps = np.diff(ends)
                                first_gap = int(ends[0] - previous)
                                longest = max(longest, first_gap - 1, int(gaps.max(initial=1)) - 1)
                                if self.problem is None and (first_gap == 1 or (len(gaps) and int(gaps.min()) == 1)):
                                    self.problem = "an empty line"
                                previous = int(ends[-1])
                                newlines += len(ends)
                            if self.problem is None and longest > self._max_line_bytes:
                                self.problem = f"a line of {longest:,} bytes (over the bound)"
                        del data
                    released = unmap_before(mapped, released, end)
        if self._stop:
            return _ScanResult(0, 0)
        if previous < size - 1:  # a last line without a newline
            newlines += 1
            longest = max(longest, size - 1 - previous)
        return _ScanResult(newlines, longest)

    def result(self, cut_short: bool = False) -> _ScanResult:
        """Wait for the scan; ``cut_short`` when its count is no longer wanted."""
        self._stop = cut_short
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()
