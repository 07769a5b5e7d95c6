"""Generic file formats, kept apart from what a source makes of a row.

In: a path to a ``.jsonl``/``.json`` file (plain, ``.gz`` or ``.zst`` with the 2 GiB
zstd window of Pushshift dumps), a TSV/CSV file, or a plain text file. Out: polars
DataFrames of raw rows with a ``_line`` column (1-based line number in the
decompressed file), and, through :class:`ReadContext`, every unreadable row
counted under a reason and quarantined with its file, line and first bytes.

Files are cut into chunks of whole lines of about 16 MiB (:func:`line_chunks`: a
plain file is memory-mapped and cut in place, a compressed one streamed). JSON lines
go through a fast path (polars' JSON reader, several chunks at once, with a strict
schema) and fall back to pyarrow's reader, then to a line-by-line parse of the chunk,
only when that chunk holds a bad line, so clean files pay nothing for the checks that
bad files need. An :class:`InputDigest` in the context hashes the input from the
reader's own blocks, so the manifest's SHA-256 costs no second read.

A caller that can start a file over (ingest's staging) may set
``ReadContext.whole_file``: a plain JSON-lines file of string fields is then read in
one pass by DuckDB's JSON reader (about half the CPU of polars' parser on SNLI lines),
its lines counted, measured and hashed on a thread of its own; at the first thing only
the chunked readers handle (a bad, blank or over-long line, a value of another type)
it raises :class:`WholeFileReadFailed` and the caller reads the file again, chunked.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from pipeline.shards import DropTally

ZSTD_MAX_WINDOW = 2**31
DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_MAX_LINE_BYTES = 1 << 20
QUARANTINE_HEAD_BYTES = 200
_BOM = b"\xef\xbb\xbf"


class InputFileError(Exception):
    """An input file that cannot be read to its end (truncated or corrupt archive).

    The message names the file and where it broke; rows read before the break are kept.
    """


class WholeFileReadFailed(Exception):
    """The one-pass reader (:func:`read_jsonl` with ``ReadContext.whole_file``) met
    something only the chunked readers handle (a bad, blank or over-long line, a value
    of the wrong type), possibly after it had yielded rows: the caller drops what it
    got and reads the file again with ``whole_file=False``."""


@dataclass
class ReadContext:
    """What a reader needs besides the path: the file's name and index, and tallies.

    Attributes:
        path: the input file.
        display_name: the name recorded in provenance and quarantine (the path as given).
        file_index: the file's position among the inputs (for a stable global order).
        max_line_bytes: longer lines are dropped as ``line_too_long`` without parsing.
        chunk_bytes: how much decompressed text one batch holds.
        bad_rows: rows that could not be read, by reason.
        quarantine: ``{file, line, reason, head}`` records of those rows.
        whole_file: a clean plain JSON-lines file may be read in one pass (DuckDB),
            which raises :class:`WholeFileReadFailed` at its first problem, possibly
            after rows came out; only a caller that can start the file over sets it.
    """

    path: Path
    display_name: str
    file_index: int = 0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    bad_rows: DropTally = field(default_factory=DropTally)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    lines_seen: int = 0
    input_digest: "InputDigest | None" = None
    whole_file: bool = False

    def open(self, path: Path) -> BinaryIO:
        """:func:`open_decompressed`; reads of the input itself also feed ``input_digest``."""
        return open_decompressed(Path(path), self.digest_for(path))

    def digest_for(self, path: Path) -> "InputDigest | None":
        """``input_digest`` when ``path`` is the input it hashes."""
        digest = self.input_digest
        return digest if digest is not None and Path(path) == digest.path else None

    def reject(self, line: int, reason: str, raw: bytes | str = b"") -> None:
        """Count an unreadable row under ``reason`` and quarantine it."""
        self.bad_rows.add(reason)
        head = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        self.quarantine.append(
            {
                "file": self.display_name,
                "line": line,
                "reason": reason,
                "head": head[:QUARANTINE_HEAD_BYTES].decode("utf-8", "backslashreplace"),
            }
        )


_ZSTD_SUFFIXES = (".zst", ".zstd")
_GZIP_SUFFIXES = (".gz",)


def is_compressed(path: Path) -> bool:
    """Whether :func:`open_decompressed` decompresses ``path`` (by its name)."""
    return path.name.lower().endswith(_ZSTD_SUFFIXES + _GZIP_SUFFIXES)


def open_decompressed(path: Path, digest: "InputDigest | None" = None) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing ``.gz`` and ``.zst`` on the fly.

    A truncated or corrupt archive raises :class:`InputFileError` naming the file and
    how far it was read. With ``digest``, the bytes read from a plain file also feed it
    (see :class:`InputDigest`); a compressed file ignores it.
    """
    name = path.name.lower()
    if name.endswith(_ZSTD_SUFFIXES):
        return io.BufferedReader(_ZstdFrames(path), buffer_size=1 << 20)
    if name.endswith(_GZIP_SUFFIXES):
        return io.BufferedReader(_GzipChecked(path), buffer_size=1 << 20)
    handle = open(path, "rb")
    return digest.reading(handle) if digest is not None else handle


class InputDigest:
    """The SHA-256 of a plain input file, taken from the blocks its reader reads anyway.

    Hashing an input in a second pass reads it twice; here each block a reader gets is
    also hashed, in order, on a background thread (hashlib releases the GIL, and the
    blocks are immutable ``bytes``). The digest counts only when the file was opened
    once and read whole, from its start: :meth:`result` checks the byte count and
    returns None otherwise (a source that sniffs a header first, or stops early), and
    the caller hashes the file itself.
    """

    _IN_FLIGHT = 4  # blocks waiting for the hash thread, at most

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.bytes = 0
        self._sha = hashlib.sha256()
        self._opens = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()

    def reading(self, handle: BinaryIO) -> BinaryIO:
        """``handle`` (the file just opened), its reads fed to this digest."""
        self.opened()
        return _DigestedReads(handle, self)

    def opened(self) -> None:
        """Count an opening of the file whose bytes the caller feeds itself, in order."""
        self._opens += 1

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pairforge-hash")
        self.bytes += len(data)
        self._pending.append(self._pool.submit(self._sha.update, data))
        while len(self._pending) > self._IN_FLIGHT:
            self._pending.popleft().result()

    def hash_here(self, data: Any) -> None:
        """Hash the next bytes on the calling thread (a reader that is a thread of its own)."""
        self.bytes += len(data)
        self._sha.update(data)

    def result(self) -> str | None:
        """The hex SHA-256 when the file was read once and whole; else None."""
        while self._pending:
            self._pending.popleft().result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._opens != 1 or self.bytes != os.path.getsize(self.path):
            return None
        return self._sha.hexdigest()


class _DigestedReads(io.BufferedIOBase):
    """A plain file whose ``read``/``read1``/``readline`` results also feed an :class:`InputDigest`."""

    def __init__(self, handle: BinaryIO, digest: InputDigest) -> None:
        self._handle = handle
        self._digest = digest

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._handle.read(size)
        self._digest.feed(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        data = self._handle.read1(size)  # type: ignore[attr-defined]
        self._digest.feed(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = self._handle.readline(size)
        self._digest.feed(data)
        return data

    def close(self) -> None:
        self._handle.close()
        super().close()


class _ZstdFrames(io.RawIOBase):
    """Decompress every frame of a zstd file; a stream that stops inside a frame is an error.

    python-zstandard's stream reader reports a clean end when the input stops in the
    middle of a frame, so a dump cut short would pass for a whole one; this reader
    checks that the last frame finished.
    """

    def __init__(self, path: Path) -> None:
        import zstandard

        self._zstd = zstandard
        self._path = path
        self._raw = open(path, "rb")
        self._size = os.path.getsize(path)
        self._decompressor = self._new_decompressor()
        self._buffer = b""  # decompressed bytes not all handed out yet: from _pos on
        self._pos = 0
        self._out = 0
        self._done = False

    def _new_decompressor(self) -> Any:
        return self._zstd.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pos == len(self._buffer) and not self._done:
            try:
                self._fill()
            except InputFileError as exc:
                # Hand out what was decoded before the break first (as an end of
                # stream), and raise on the next read, so no whole line is lost.
                self._error = exc
                self._done = True
        if self._pos == len(self._buffer) and self._error is not None:
            if self._error_pending_eof:
                self._error_pending_eof = False
                return 0
            raise self._error
        # Copied once, from a view: slicing the bytes would copy the piece and the rest.
        n = min(len(buffer), len(self._buffer) - self._pos)
        with memoryview(self._buffer) as view:
            buffer[:n] = view[self._pos : self._pos + n]
        self._pos += n
        self._out += n
        return n

    def _fill(self) -> None:
        compressed = self._raw.read(1 << 20)
        if not compressed:
            self._done = True
            if not self._decompressor.eof and self._started:
                raise InputFileError(
                    f"{self._path}: truncated zstd archive: the stream ends inside a frame after"
                    f" {self._out:,} decompressed bytes (file is {self._size:,} bytes)"
                )
            return
        try:
            self._started = True
            out = self._decompressor.decompress(compressed)
            while self._decompressor.eof and self._decompressor.unused_data:
                rest = self._decompressor.unused_data
                self._decompressor = self._new_decompressor()
                out += self._decompressor.decompress(rest)
        except self._zstd.ZstdError as exc:
            raise InputFileError(
                f"{self._path}: corrupt zstd archive near compressed byte {self._raw.tell():,} of"
                f" {self._size:,} ({self._out:,} bytes decompressed before it): {exc}"
            ) from exc
        self._buffer, self._pos = out, 0  # called once all of the last buffer is handed out

    _started = False
    _error: InputFileError | None = None
    _error_pending_eof = True

    def close(self) -> None:
        self._raw.close()
        super().close()


class _GzipChecked(io.RawIOBase):
    """gzip with the truncation and corruption errors turned into :class:`InputFileError`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._inner = gzip.open(path, "rb")
        self._out = 0

    def readable(self) -> bool:
        return True

    _error_pending_eof = True

    def readinto(self, buffer: Any) -> int:
        try:
            n = self._inner.readinto(buffer)
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            if self._error_pending_eof:  # first an end of stream, so buffered lines get out
                self._error_pending_eof = False
                return 0
            raise InputFileError(
                f"{self._path}: truncated or corrupt gzip archive after {self._out:,} decompressed bytes: {exc}"
            ) from exc
        self._out += n
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


@dataclass(frozen=True)
class LineChunk:
    """Whole lines of decompressed text: ``data`` holds lines ``first_line``... (1-based)."""

    data: bytes
    first_line: int
    n_lines: int


def line_chunks(path: Path, ctx: ReadContext) -> Iterator[LineChunk]:
    """The lines of an input file in chunks of whole lines (see :func:`iter_line_chunks`).

    A plain file is memory-mapped and cut in place (:func:`_mapped_line_chunks`); a
    compressed one, or one that cannot be mapped, is read as a stream. Same chunks,
    same rejects, same line numbers either way.
    """
    path = Path(path)
    # A pipe is opened once, as a stream, below: opening it to look and again to read
    # would let its writer finish into the first opening and leave the second waiting.
    if not is_compressed(path) and stat.S_ISREG(os.stat(path).st_mode):
        with open(path, "rb") as handle:
            status = os.fstat(handle.fileno())
            try:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if status.st_size else None
                mappable = True
            except (OSError, ValueError):
                mappable = False
            if mappable:
                yield from _mapped_line_chunks(mapped, status.st_size, ctx, ctx.digest_for(path))
                return
    with ctx.open(path) as stream:
        yield from iter_line_chunks(stream, ctx)


def _mapped_line_chunks(
    mapped: mmap.mmap | None, size: int, ctx: ReadContext, digest: "InputDigest | None"
) -> Iterator[LineChunk]:
    """:func:`iter_line_chunks` for a mapped file: each chunk is ONE copy out of the page
    cache (a stream reads a block, then joins the previous block's last partial line
    to it), and pages already cut are unmapped again, so memory stays flat."""
    if digest is not None:
        digest.opened()
    if mapped is None:  # an empty file
        ctx.lines_seen = 0
        return
    with mapped:
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        pos = len(_BOM) if mapped[: len(_BOM)] == _BOM else 0
        if digest is not None and pos:
            digest.feed(mapped[:pos])
        line_no = 1
        released = 0
        while pos < size:
            end = min(pos + ctx.chunk_bytes, size)
            if end < size:
                cut = mapped.rfind(b"\n", pos, end)
                if cut < 0:  # one line longer than a chunk: find its end
                    newline = mapped.find(b"\n", end)
                    line_end = size if newline < 0 else newline
                    if line_end - pos > ctx.max_line_bytes:
                        ctx.reject(line_no, "line_too_long", mapped[pos : pos + QUARANTINE_HEAD_BYTES])
                        skipped_to = size if newline < 0 else newline + 1
                        if digest is not None:
                            for start in range(pos, skipped_to, ctx.chunk_bytes):
                                digest.feed(mapped[start : min(start + ctx.chunk_bytes, skipped_to)])
                        pos = skipped_to
                        line_no += 1
                        released = _unmap_before(mapped, released, pos)
                        continue
                    cut = line_end
                end = min(cut + 1, size)
            data = mapped[pos:end]
            if digest is not None:
                digest.feed(data)
            if not data.endswith(b"\n"):  # the last line, without a newline
                data += b"\n"
            n_lines = count_newlines(data)
            yield from _bounded_chunks(data, line_no, ctx, n_lines)
            line_no += n_lines
            pos = end
            released = _unmap_before(mapped, released, pos)
        ctx.lines_seen = line_no - 1


def _unmap_before(mapped: mmap.mmap, released: int, pos: int) -> int:
    """Drop the mapped pages before ``pos`` (already copied out) from this process's
    memory; the file stays in the page cache. Returns the new released offset."""
    aligned = pos - pos % mmap.PAGESIZE
    if aligned > released and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED, released, aligned - released)
        return aligned
    return released


def iter_line_chunks(stream: BinaryIO, ctx: ReadContext) -> Iterator[LineChunk]:
    """Cut a byte stream into chunks of whole lines, dropping lines over the size bound.

    A byte-order mark at the start is removed. A line longer than
    ``ctx.max_line_bytes`` is skipped as it streams past (never held whole) and
    counted as ``line_too_long``. A last line without a newline is kept.
    ``ctx.lines_seen`` ends as the file's line count.
    """
    line_no = 1
    pending = b""  # the start of a line whose end is not read yet
    skipping = False
    first = True
    while True:
        block = stream.read(ctx.chunk_bytes)
        if first:
            first = False
            if block.startswith(_BOM):
                block = block[len(_BOM) :]
        if not block:
            # A broken archive reports its end once, then raises on the next read:
            # ask again so a truncated last line is never taken for a whole one.
            stream.read(1)
            break
        if skipping:
            cut = block.find(b"\n")
            if cut < 0:
                continue
            block = block[cut + 1 :]
            skipping = False
            line_no += 1
        cut = block.rfind(b"\n")
        if cut >= 0:
            # One copy of the block at most: whole lines go out, the tail waits.
            if pending:
                whole = b"".join((pending, memoryview(block)[: cut + 1]))
            elif cut + 1 == len(block):
                whole = block
            else:
                whole = block[: cut + 1]
            pending = block[cut + 1 :]
            n_lines = count_newlines(whole)
            yield from _bounded_chunks(whole, line_no, ctx, n_lines)
            line_no += n_lines
        else:
            pending += block
        if len(pending) > ctx.max_line_bytes:
            ctx.reject(line_no, "line_too_long", pending[:QUARANTINE_HEAD_BYTES])
            pending = b""
            skipping = True
    if skipping:
        line_no += 1
    elif pending:
        yield from _bounded_chunks(pending + b"\n", line_no, ctx)
        line_no += 1
    ctx.lines_seen = line_no - 1


_COUNT_STEP = 1 << 20


def count_newlines(data: bytes) -> int:
    """The number of ``\\n`` bytes in ``data``.

    numpy, a MiB at a time: about twice ``bytes.count``'s speed, and the small
    temporary is reused by the allocator instead of faulting in fresh pages.
    """
    view = np.frombuffer(data, dtype=np.uint8)
    return sum(int(np.count_nonzero(view[i : i + _COUNT_STEP] == 10)) for i in range(0, len(view), _COUNT_STEP))


def _lines_within(data: bytes, limit: int) -> bool:
    """Whether no line of ``data`` is longer than ``limit`` bytes (newlines not counted).

    Same answer as ``max(map(len, data.split(b"\\n"))) <= limit`` without building a
    bytes object per line: it jumps to the last newline within ``limit`` bytes of each
    line start, so a 16 MiB chunk costs a few ``rfind`` calls instead of ~0.2 s.
    """
    pos = 0
    while len(data) - pos > limit:
        cut = data.rfind(b"\n", pos, pos + limit + 1)
        if cut < 0:
            return False
        pos = cut + 1
    return True


def _bounded_chunks(whole: bytes, line_no: int, ctx: ReadContext, n_lines: int | None = None) -> Iterator[LineChunk]:
    """Split whole lines further when one of them is over the size bound."""
    if _lines_within(whole, ctx.max_line_bytes):
        yield LineChunk(whole, line_no, count_newlines(whole) if n_lines is None else n_lines)
        return
    kept: list[bytes] = []
    first_kept = line_no
    for offset, line in enumerate(whole.split(b"\n")[:-1]):
        number = line_no + offset
        if len(line) > ctx.max_line_bytes:
            if kept:
                yield LineChunk(b"\n".join(kept) + b"\n", first_kept, len(kept))
                kept = []
            ctx.reject(number, "line_too_long", line)
            first_kept = number + 1
        else:
            if not kept:
                first_kept = number
            kept.append(line)
    if kept:
        yield LineChunk(b"\n".join(kept) + b"\n", first_kept, len(kept))


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int64": (int,),
    "double": (int, float),
    "bool": (bool,),
}


def _value_fits(value: Any, arrow_type: pa.DataType) -> bool:
    """Whether a parsed JSON value fits the declared Arrow type (None always fits)."""
    if value is None:
        return True
    if pa.types.is_list(arrow_type):
        return isinstance(value, list) and all(_value_fits(v, arrow_type.value_type) for v in value)
    expected = _PY_TYPES[str(arrow_type)]
    if isinstance(value, bool) and bool not in expected:
        return False
    return isinstance(value, expected)


def _parse_lines_strictly(chunk: LineChunk, schema: pa.Schema, ctx: ReadContext) -> pl.DataFrame:
    """Parse a chunk line by line, rejecting each line that is not a JSON object of the schema."""
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    lines: list[int] = []
    for offset, raw in enumerate(chunk.data.split(b"\n")[: chunk.n_lines]):
        number = chunk.first_line + offset
        line = raw.rstrip(b"\r")
        if not line.strip():
            ctx.reject(number, "empty_line", raw)
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            ctx.reject(number, "invalid_utf8", raw)
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            ctx.reject(number, "malformed_json", raw)
            continue
        if not isinstance(value, dict):
            ctx.reject(number, "not_a_json_object", raw)
            continue
        wrong = next((f.name for f in schema if not _value_fits(value.get(f.name), f.type)), None)
        if wrong is not None:
            ctx.reject(number, f"wrong_type:{wrong}", raw)
            continue
        for name in schema.names:
            columns[name].append(value.get(name))
        lines.append(number)
    table = pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names})
    return pl.from_arrow(table).with_columns(pl.Series("_line", lines, dtype=pl.Int64))  # type: ignore[union-attr]


class _PolarsFastPath:
    """polars' JSON reader (the fastest here) for schemas of plain strings and numbers.

    polars turns a number, a boolean, a list or an object found where a string is
    declared into its JSON text; a bad row must not pass for a good one. Such text
    looks like a JSON scalar or container, so the (rare) string values that do are
    parsed as JSON, and if one is not a JSON string the chunk is left to the strict
    readers. Any other problem (bad JSON, bad UTF-8, blank lines, a float in an int
    field) makes polars raise or miscount, which also hands the chunk over.
    """

    _FLAT = {"string": pl.String, "int64": pl.Int64, "double": pl.Float64, "bool": pl.Boolean}
    # What polars' text of a non-string JSON value starts and ends like.
    _LOOKS_CONVERTED = r"^(?:-?[0-9][0-9.eE+-]*|true|false|\[.*\]|\{.*\})$"

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = {f.name: self._FLAT[str(f.type)] for f in schema}
        self._strings = [f.name for f in schema if str(f.type) == "string"]

    @classmethod
    def for_schema(cls, schema: pa.Schema) -> "_PolarsFastPath | None":
        return cls(schema) if all(str(f.type) in cls._FLAT for f in schema) else None

    def read(self, chunk: LineChunk) -> pl.DataFrame | None:
        try:
            # polars validates the UTF-8 of every line (also of fields it does not
            # keep) and raises on a bad byte: no separate decode pass is needed.
            frame = pl.read_ndjson(io.BytesIO(chunk.data), schema=self.schema)
        except (pl.exceptions.PolarsError, UnicodeDecodeError, ValueError):
            return None
        if frame.height != chunk.n_lines or self.holds_converted_values(frame):
            return None
        lines = pl.int_range(chunk.first_line, chunk.first_line + chunk.n_lines, eager=True, dtype=pl.Int64)
        return frame.with_columns(lines.alias("_line"))

    def holds_converted_values(self, frame: pl.DataFrame) -> bool:
        """Whether a string column of ``frame`` holds a value that was not a JSON string."""
        if not self._strings:
            return False
        # One pass over every string column at once; almost always nothing matches.
        suspect_rows = frame.select(
            pl.any_horizontal(pl.col(name).str.contains(self._LOOKS_CONVERTED) for name in self._strings)
        ).to_series()
        if not suspect_rows.any():
            return False
        frame = frame.filter(suspect_rows)
        for name in self._strings:
            suspects = frame.get_column(name).filter(frame.get_column(name).str.contains(self._LOOKS_CONVERTED))
            for value in suspects.to_list():
                try:
                    orjson.loads(value)
                except orjson.JSONDecodeError:
                    continue  # text that merely looks like JSON ("[deleted]")
                return True
        return False


T = TypeVar("T")
R = TypeVar("R")


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[tuple[T, R]]:
    """``(item, function(item))`` in the order of ``items``, computed on a thread pool.

    For functions that release the GIL (polars, numpy, hashing). At most
    ``2 * workers`` items are in flight, so memory stays bounded. ``workers``
    defaults to polars' thread pool size (which follows ``POLARS_MAX_THREADS``); with
    one worker everything runs in the calling thread.
    """
    workers = workers or pl.thread_pool_size()
    if workers <= 1:
        for item in items:
            yield item, function(item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pairforge-parse") as pool:
        window: deque[tuple[T, Future[R]]] = deque()
        try:
            for item in items:
                window.append((item, pool.submit(function, item)))
                if len(window) >= 2 * workers:
                    first, future = window.popleft()
                    yield first, future.result()
        except GeneratorExit:  # the consumer stopped early
            for _, future in window:
                future.cancel()
            raise
        except Exception:
            # ``items`` raised (a truncated archive): what was read before the break
            # still comes out, then the error goes on.
            while window:
                first, future = window.popleft()
                yield first, future.result()
            raise
        while window:
            first, future = window.popleft()
            yield first, future.result()


_WHOLE_FILE_BATCH_ROWS = 100_000


def _read_jsonl_whole_file(path: Path, schema: pa.Schema, ctx: ReadContext) -> Iterator[pl.DataFrame] | None:
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
        if not stat.S_ISREG(status.st_mode) or not status.st_size or handle.read(len(_BOM)) == _BOM:
            return None
    return _whole_file_rows(path, schema, ctx, status.st_size)


def _whole_file_rows(path: Path, schema: pa.Schema, ctx: ReadContext, size: int) -> Iterator[pl.DataFrame]:
    import duckdb

    scan = _FileScan(path, size, ctx.digest_for(path))
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
    check = _PolarsFastPath(schema)  # string fields only: the chunked fast path's check applies
    line = 1
    completed = False
    try:
        for batch in connection.sql(query).to_arrow_reader(_WHOLE_FILE_BATCH_ROWS):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
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
    mapping whose pages are dropped once read, while another reader parses the file."""

    _BLOCK = 16 << 20

    def __init__(self, path: Path, size: int, digest: "InputDigest | None") -> None:
        self._stop = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pairforge-scan")
        self._future = self._pool.submit(self._run, Path(path), size, digest)

    def _run(self, path: Path, size: int, digest: "InputDigest | None") -> _ScanResult:
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
                        for step in range(0, len(data), _COUNT_STEP):
                            ends = np.flatnonzero(data[step : step + _COUNT_STEP] == 10) + (start + step)
                            if len(ends):
                                longest = max(longest, int(ends[0] - previous - 1), int(np.diff(ends).max(initial=1)) - 1)
                                previous = int(ends[-1])
                                newlines += len(ends)
                        del data
                    released = _unmap_before(mapped, released, end)
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


def read_jsonl(path: Path, schema: pa.Schema, ctx: ReadContext) -> Iterator[pl.DataFrame]:
    """Read the fields of ``schema`` from a JSON-lines file, a batch per chunk.

    Fields missing from a line come back null; lines that are not JSON objects whose
    values fit the schema are rejected into ``ctx`` (empty_line, invalid_utf8,
    malformed_json, not_a_json_object, wrong_type:FIELD, line_too_long).

    Raises:
        InputFileError: the archive is truncated or corrupt (rows before the break
            were already yielded).
    """
    import pyarrow.json as pa_json

    if ctx.whole_file:
        rows = _read_jsonl_whole_file(Path(path), schema, ctx)
        if rows is not None:
            yield from rows
            return
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    fast = _PolarsFastPath.for_schema(schema)
    with contextlib.closing(line_chunks(path, ctx)) as chunks:
        # polars parses a chunk releasing the GIL: several chunks are parsed at once
        # while this thread cuts the next ones and its caller cleans the rows. One
        # worker more than polars has threads, so a chunk is always being parsed while
        # this thread is busy (measured: about 4 % less wall time than as many).
        # Results come back in order; chunks the fast path refuses are read strictly,
        # here, in order.
        workers = pl.thread_pool_size() + 1
        parsed = ordered_map(fast.read, chunks, workers) if fast is not None else ((c, None) for c in chunks)
        for chunk, frame in parsed:
            if frame is not None:
                yield frame
                continue
            try:
                # pyarrow's JSON reader does not check UTF-8; a bad byte must not reach a shard.
                chunk.data.decode("utf-8")
                table = pa_json.read_json(
                    io.BytesIO(chunk.data),
                    read_options=pa_json.ReadOptions(block_size=max(len(chunk.data), 1 << 20)),
                    parse_options=options,
                )
                if table.num_rows != chunk.n_lines:
                    raise ValueError("blank lines in chunk")
            except (pa.ArrowInvalid, ValueError, UnicodeDecodeError):
                yield _parse_lines_strictly(chunk, schema, ctx)
                continue
            lines = pl.int_range(chunk.first_line, chunk.first_line + chunk.n_lines, eager=True, dtype=pl.Int64)
            yield pl.from_arrow(table.select(schema.names)).with_columns(lines.alias("_line"))  # type: ignore[union-attr]


def read_text_lines(path: Path, ctx: ReadContext) -> list[str | None]:
    """All lines of a plain text file (SentEval layout), ``None`` for lines that are not UTF-8.

    Line endings (LF or CRLF) and a BOM are removed; invalid lines are quarantined.
    """
    out: list[str | None] = []
    with contextlib.closing(line_chunks(path, ctx)) as chunks:
        for chunk in chunks:
            for offset, raw in enumerate(chunk.data.split(b"\n")[: chunk.n_lines]):
                try:
                    out.append(raw.rstrip(b"\r").decode("utf-8"))
                except UnicodeDecodeError:
                    ctx.reject(chunk.first_line + offset, "invalid_utf8", raw)
                    out.append(None)
    return out


def read_delimited(
    path: Path,
    ctx: ReadContext,
    *,
    delimiter: str,
    quoted: bool,
    columns: list[str],
    header: bool = True,
    batch_rows: int = 200_000,
) -> Iterator[pl.DataFrame]:
    """Read a TSV/CSV file into string columns named ``columns`` (by position or header).

    With ``quoted=False`` quote characters are ordinary text (GLUE's TSV, STSb); with
    ``quoted=True`` fields may be quoted and span lines (pandas' CSV export), and
    ``_line`` is the line where the record starts. Records whose field count differs
    from the header are rejected as ``wrong_field_count``; undecodable ones as
    ``invalid_utf8``.
    """
    import csv

    csv.field_size_limit(ctx.max_line_bytes)
    with ctx.open(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
        first = text.read(1)
        if first and first != "\ufeff":
            text_iter = _prepend(first, text)
        else:
            text_iter = text
        if quoted:
            reader = csv.reader(text_iter, delimiter=delimiter)
        else:
            reader = csv.reader(text_iter, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        names: list[str] = []
        batch: dict[str, list[Any]] = {name: [] for name in columns}
        lines: list[int] = []
        start_line = 1
        try:
            for record in reader:
                line = start_line
                start_line = reader.line_num + 1
                if not names:
                    if header:
                        names = [n.strip() for n in record]
                        missing = [c for c in columns if c not in names]
                        if missing:
                            raise InputFileError(f"{path}: header has no column {missing} (header: {names})")
                        continue
                    names = list(columns)
                if not record or record == [""]:
                    ctx.reject(line, "empty_line", "")
                    continue
                if len(record) != len(names):
                    ctx.reject(line, "wrong_field_count", delimiter.join(record))
                    continue
                if any("\udc80" <= ch <= "\udcff" for field in record for ch in field):
                    ctx.reject(line, "invalid_utf8", delimiter.join(record).encode("utf-8", "surrogateescape"))
                    continue
                row = dict(zip(names, record))
                for name in columns:
                    batch[name].append(row[name])
                lines.append(line)
                if len(lines) >= batch_rows:
                    yield _frame(batch, lines)
                    batch = {name: [] for name in columns}
                    lines = []
        except csv.Error as exc:
            raise InputFileError(f"{path}: unreadable CSV near line {start_line}: {exc}") from exc
        ctx.lines_seen = start_line - 1
        if lines:
            yield _frame(batch, lines)


def _prepend(first: str, text: io.TextIOBase) -> Iterator[str]:
    rest = text.readline()
    yield first + rest
    yield from text


def _frame(batch: Mapping[str, list[Any]], lines: list[int]) -> pl.DataFrame:
    frame = pl.DataFrame({name: pl.Series(name, values, dtype=pl.String) for name, values in batch.items()})
    return frame.with_columns(pl.Series("_line", lines, dtype=pl.Int64))


def read_json_document(path: Path) -> Any:
    """Parse a whole JSON document (SPECTER's data.json, metadata.json).

    Raises:
        InputFileError: the file is not valid JSON (names the file and the position).
    """
    with open_decompressed(path) as stream:
        data = stream.read()
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not a valid JSON document: {exc}") from exc


def reject_null_fields(frame: pl.DataFrame, required: list[str], ctx: ReadContext) -> pl.DataFrame:
    """Reject rows where a required field is missing or null (``missing_field:NAME``).

    The quarantine ``head`` of such a row is the JSON of the fields that were read.
    """
    for name in required:
        missing = frame.get_column(name).is_null()
        if missing.any():
            for row in frame.filter(missing).iter_rows(named=True):
                fields = {k: v for k, v in row.items() if k != "_line"}
                ctx.reject(row["_line"], f"missing_field:{name}", orjson.dumps(fields, default=str))
            frame = frame.filter(~missing)
    return frame


@dataclass(frozen=True)
class JsonValues:
    """Parsed lines of a JSON-lines file: ``values[i]`` is the JSON value on line ``lines[i]``."""

    lines: list[int]
    values: list[Any]


def read_json_values(path: Path, ctx: ReadContext) -> Iterator[JsonValues]:
    """Parse every line of a JSON-lines file as any JSON value (an array, an object, a string...).

    For files whose lines are not all objects of one schema (the 1B-pairs training
    files mix ``["a", "b"]`` lists with ``{"set": [...]}`` objects), so
    :func:`read_jsonl`'s Arrow fast path does not apply. One batch per chunk of about
    ``ctx.chunk_bytes``. Lines that cannot be parsed are rejected into ``ctx``
    (empty_line, invalid_utf8, malformed_json, line_too_long); what a value means is
    the caller's business.

    Raises:
        InputFileError: the archive is truncated or corrupt (batches before the break
            were already yielded).
    """
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    with contextlib.closing(line_chunks(path, ctx)) as chunks:
        for chunk in chunks:
            lines: list[int] = []
            values: list[Any] = []
            number = chunk.first_line
            for raw in chunk.data.split(b"\n")[: chunk.n_lines]:
                try:
                    values.append(loads(raw))
                    lines.append(number)
                except decode_error:
                    ctx.reject(number, _json_line_problem(raw), raw)
                number += 1
            yield JsonValues(lines, values)


def _json_line_problem(raw: bytes) -> str:
    """Why orjson refused a line: empty, not UTF-8, or not JSON."""
    if not raw.strip():
        return "empty_line"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "malformed_json"
