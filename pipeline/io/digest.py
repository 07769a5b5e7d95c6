"""An input's SHA-256, taken from the blocks its reader reads anyway.

In: a plain input file and the blocks read from it. Out: its hex SHA-256 (for the
manifest) when the file was read once and whole, else None (the caller hashes the
file itself).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO


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
        self._drain()
        if self._opens != 1 or self.bytes != os.path.getsize(self.path):
            return None
        return self._sha.hexdigest()

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def restarted(self) -> "InputDigest":
        """A fresh digest of the same file, for a reader that starts it over; this one stops."""
        self._drain()
        return InputDigest(self.path)


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
