"""Shard checks for training: a run's training shards in; an error naming the first bad one out.

In: the training shards of a run (:class:`ShardRef`: path, rows and SHA-256 from the
manifests) and a mode. Out: nothing when they are sound, :class:`ShardError` (a
``ValueError``, so the CLI prints it as one line and exits 2) naming the file when
one is not; and :meth:`ShardVerifier.report`, what the checks cost.

Three checks, from cheap to thorough:

1. **present and whole** (:func:`check_shards_present`), every shard, before the first
   step: the file exists and ends in Parquet's ``PAR1`` footer magic, which a
   truncated copy lacks. One ``stat`` and an 8-byte read a shard.
2. **row count**: its footer's row count equals the manifest's, when a reader first
   opens it (:func:`open_shard`).
3. **SHA-256** equal to the manifest's, by :class:`ShardVerifier`: ``upfront`` hashes
   every shard before the first step; ``background`` (the default) hashes them on
   threads in the order the readers will open them, and a reader that reaches a shard
   not hashed yet hashes it itself, so a shard whose bytes differ stops the run before
   any step uses a row of it; ``off`` skips the hash. The background order is the
   readers' (:func:`pipeline.train.stream.first_use_order`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pipeline.corpus.files import file_sha256

VerifyMode = Literal["background", "upfront", "off"]
VERIFY_MODES: tuple[str, ...] = ("background", "upfront", "off")
PARQUET_MAGIC = b"PAR1"


class ShardError(ValueError):
    """A training shard is missing, truncated, or not the file its manifest describes."""


@dataclass(frozen=True)
class ShardRef:
    """One training shard as its manifest lists it: absolute path, rows and SHA-256."""

    path: Path
    rows: int
    sha256: str
    manifest: Path


def check_shards_present(shards: Sequence[ShardRef]) -> None:
    """Every shard exists and ends in the Parquet footer magic.

    Raises:
        ShardError: the first shard that is missing, empty or truncated.
    """
    for shard in shards:
        try:
            size = shard.path.stat().st_size
        except FileNotFoundError:
            raise ShardError(f"{shard.manifest} lists a shard that is missing: {shard.path}") from None
        if size < 12:
            raise ShardError(f"{shard.path}: truncated ({size} bytes; a Parquet file is at least 12)")
        with open(shard.path, "rb") as handle:
            handle.seek(size - 4)
            if handle.read(4) != PARQUET_MAGIC:
                raise ShardError(f"{shard.path}: truncated or not Parquet (no PAR1 footer at its end, {size:,} bytes)")


def open_shard(shard: ShardRef) -> Any:
    """The shard as a ``pyarrow.parquet.ParquetFile``, its footer's row count checked.

    Raises:
        ShardError: the footer does not parse, or its row count is not the manifest's.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(shard.path)
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"{shard.path}: not a readable Parquet file ({exc})") from None
    if parquet.metadata.num_rows != shard.rows:
        raise ShardError(f"{shard.path}: {parquet.metadata.num_rows} rows but {shard.manifest} says {shard.rows}")
    return parquet


class ShardVerifier:
    """SHA-256 of each shard against its manifest, before the first step or in the background.

    Args:
        shards: the shards to hash, most urgent first (the order the readers open them).
        mode: ``upfront``, ``background`` or ``off`` (see the module docstring).
        threads: hashing threads (hashlib releases the GIL, so they run beside
            training); None: one in ``background`` mode, which keeps ahead of training
            without taking cores from it, and up to four in ``upfront`` mode.

    :meth:`wait` is what a reader calls before it opens a shard. Use as a context
    manager, or call :meth:`close` (which stops the background threads).
    """

    def __init__(self, shards: Sequence[ShardRef], mode: VerifyMode = "background", threads: int | None = None) -> None:
        if mode not in VERIFY_MODES:
            raise ValueError(f"verify mode must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
        self.mode = mode
        self._order = list(dict.fromkeys(shards))
        self._done: dict[Path, ShardError | None] = {}
        self._running: set[Path] = set()
        self._next = 0
        self._lock = threading.Condition()
        self._stopped = False
        self._bytes = 0
        self._hash_seconds = 0.0
        self._started = time.perf_counter()
        self._wait_seconds = 0.0
        self._threads: list[threading.Thread] = []
        if threads is None:
            threads = 1 if mode == "background" else min(4, os.cpu_count() or 1)
        if mode != "off":
            for n in range(max(1, threads)):
                thread = threading.Thread(target=self._work, name=f"pairforge-verify-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)
            if mode == "upfront":
                try:
                    self.wait_all()
                except ShardError:
                    self.close()
                    raise

    def __enter__(self) -> ShardVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _claim(self) -> ShardRef | None:
        with self._lock:
            while self._next < len(self._order) and not self._stopped:
                shard = self._order[self._next]
                self._next += 1
                if shard.path not in self._done and shard.path not in self._running:
                    self._running.add(shard.path)
                    return shard
            return None

    def _hash(self, shard: ShardRef) -> None:
        started = time.perf_counter()
        error = None
        try:
            digest = file_sha256(shard.path)
            if digest != shard.sha256:
                error = ShardError(
                    f"{shard.path}: SHA-256 {digest[:16]}... but {shard.manifest} says {shard.sha256[:16]}...;"
                    " the shard changed after its manifest was written: rebuild the dataset"
                )
            size = os.path.getsize(shard.path)
        except OSError as exc:
            error, size = ShardError(f"{shard.path}: cannot be read ({exc})"), 0
        with self._lock:
            self._running.discard(shard.path)
            self._done[shard.path] = error
            self._bytes += size
            self._hash_seconds += time.perf_counter() - started
            self._lock.notify_all()

    def _work(self) -> None:
        while (shard := self._claim()) is not None:
            self._hash(shard)

    def wait(self, shard: ShardRef) -> None:
        """Return once ``shard``'s hash matched its manifest (hashing it here if nobody has yet).

        Raises:
            ShardError: its hash does not match, or it cannot be read.
        """
        if self.mode == "off":
            return
        started = time.perf_counter()
        with self._lock:
            mine = shard.path not in self._done and shard.path not in self._running
            if mine:
                self._running.add(shard.path)
        if mine:
            self._hash(shard)
        with self._lock:
            while shard.path not in self._done:
                self._lock.wait()
            error = self._done[shard.path]
            self._wait_seconds += time.perf_counter() - started
        if error is not None:
            raise error

    def wait_all(self) -> None:
        """Return once every shard is hashed; raise the first mismatch in shard order."""
        for shard in self._order:
            self.wait(shard)

    def close(self) -> None:
        """Stop hashing shards nobody has asked for yet."""
        with self._lock:
            self._stopped = True
        for thread in self._threads:
            thread.join()

    def report(self) -> dict[str, Any]:
        """What the checks cost: shards hashed of all, bytes, hashing CPU-seconds, time readers waited."""
        with self._lock:
            return {
                "mode": self.mode,
                "shards": len(self._order),
                "verified": sum(1 for e in self._done.values() if e is None),
                "bytes": self._bytes,
                "hash_seconds": round(self._hash_seconds, 3),
                "wait_seconds": round(self._wait_seconds, 3),
            }
