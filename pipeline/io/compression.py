"""Compressed inputs: ``.gz`` and ``.zst`` (with the 2 GiB window of Pushshift dumps) read as plain bytes.

In: a path. Out: a binary stream of the decompressed bytes; a truncated or corrupt
archive raises :class:`~pipeline.io.errors.InputFileError` naming the file and how
far it was read, after every byte decoded before the break has been handed out.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pipeline.io.errors import InputFileError

if TYPE_CHECKING:
    from pipeline.io.digest import InputDigest

ZSTD_MAX_WINDOW = 2**31


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
