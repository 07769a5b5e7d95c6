"""Parquet shard writer and dataset manifests: atomic files, manifest written last.

In: Arrow tables or polars DataFrames of rows, a dataset folder. Out: shards
``part-00000.parquet``, ``part-00001.parquet``... (zstd, at most ``rows_per_shard``
rows each), and ``manifest.json``.

Every file is written under a temporary name in the same folder and renamed, so a
reader never sees half a shard; the manifest is renamed into place last, so a folder
with a manifest is complete, and one without is not (a killed run). Nothing written
holds a timestamp: the same rows give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_NAME = "manifest.json"
QUARANTINE_NAME = "quarantine.jsonl"
SHARD_PATTERN = "part-*.parquet"
DEFAULT_ROWS_PER_SHARD = 500_000
_HASH_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the text hashed for config hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """The SHA-256 of a resolved config's canonical JSON."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented, key-sorted JSON, atomically."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: its path relative to the dataset folder, rows and hash."""

    path: str
    rows: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "sha256": self.sha256}


class ShardWriter:
    """Writes rows as fixed-size zstd Parquet shards, a row group at a time.

    Args:
        folder: the dataset folder (created if missing).
        schema: the Arrow schema of every shard.
        rows_per_shard: the most rows a shard holds.
        prefix: a subfolder of ``folder`` for these shards (``""`` or ``"heldout"``).
        background: encode, compress and hash the shards on a thread of their own
            (pyarrow releases the GIL), so the caller prepares the next rows meanwhile.
            At most two row groups wait for it. Same bytes either way.

    Rows are buffered only up to one row group (``ROW_GROUP_ROWS``): a row group is
    written as soon as it is full, so memory does not grow with the shard size. Row
    groups start every ``ROW_GROUP_ROWS`` rows of a shard, whatever batches the rows
    came in, so equal rows give equal bytes. Use as a context manager, or call
    :meth:`close`; :attr:`shards` lists what was written. Shards are named by their
    position, so equal input gives equal names.
    """

    ROW_GROUP_ROWS = 100_000
    # Columns of few distinct values get a dictionary. Texts and ids are mostly
    # distinct: a dictionary there costs a third of the encoding time and, under
    # zstd, makes the shard about a quarter larger (measured on SNLI pairs).
    DICTIONARY_COLUMNS = ("source_file",)
    _IN_FLIGHT = 2

    def __init__(
        self,
        folder: str | os.PathLike[str],
        schema: pa.Schema,
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        prefix: str = "",
        background: bool = False,
    ) -> None:
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
        self.folder = Path(folder)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self.shards: list[ShardInfo] = []
        self.rows = 0  # rows taken so far, written or buffered
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._shard_rows = 0  # rows of the current shard, handed to the writing side
        # The writing side (this thread, or the background one): the open shard file.
        self._writer: pq.ParquetWriter | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pairforge-shards") if background else None
        self._in_flight: deque[Future[None]] = deque()
        (self.folder / prefix).mkdir(parents=True, exist_ok=True)

    def write(self, rows: pa.Table | Any) -> None:
        """Add rows (an Arrow table or a polars DataFrame) in schema order."""
        table = rows if isinstance(rows, pa.Table) else rows.to_arrow()
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        while self._pending_rows >= self._next_group_rows():
            self._write_group(self._next_group_rows())

    def close(self) -> list[ShardInfo]:
        """Write what is buffered and return every shard written."""
        while self._pending_rows > 0:
            self._write_group(min(self._pending_rows, self._next_group_rows()))
        if self._shard_rows:
            self._run(self._close_file, self._shard_rows)
            self._shard_rows = 0
        while self._in_flight:
            self._in_flight.popleft().result()
        if self._pool is not None:
            self._pool.shutdown()
        return self.shards

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def _next_group_rows(self) -> int:
        """Rows of the next row group: a full group, or what is left of the shard."""
        return min(self.ROW_GROUP_ROWS, self.rows_per_shard - self._shard_rows)

    def _shard_path(self, index: int) -> tuple[str, Path]:
        name = f"part-{index:05d}.parquet"
        relative = f"{self.prefix}/{name}" if self.prefix else name
        return relative, self.folder / relative

    def _write_group(self, n_rows: int) -> None:
        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        head, rest = table.slice(0, n_rows), table.slice(n_rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._run(self._put_group, head)
        self._shard_rows += n_rows
        if self._shard_rows >= self.rows_per_shard:
            self._run(self._close_file, self._shard_rows)
            self._shard_rows = 0

    def _run(self, step: Callable[..., None], *args: Any) -> None:
        """Do a writing step here, or queue it for the background thread (in order)."""
        if self._pool is None:
            step(*args)
            return
        self._in_flight.append(self._pool.submit(step, *args))
        while len(self._in_flight) > self._IN_FLIGHT:
            self._in_flight.popleft().result()

    def _put_group(self, head: pa.Table) -> None:
        if self._writer is None:
            _, path = self._shard_path(len(self.shards))
            self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            self._writer = pq.ParquetWriter(
                self._tmp, self.schema, compression="zstd", write_statistics=True, store_schema=True,
                use_dictionary=[c for c in self.DICTIONARY_COLUMNS if c in self.schema.names],
            )
        # One chunk per column: the pages then do not depend on the batches rows came in.
        self._writer.write_table(head.combine_chunks(), row_group_size=head.num_rows)

    def _close_file(self, rows: int) -> None:
        assert self._writer is not None
        self._writer.close()
        relative, path = self._shard_path(len(self.shards))
        os.replace(self._tmp, path)
        self.shards.append(ShardInfo(relative, rows, file_sha256(path)))
        self._writer = None


def remove_stale_shards(folder: Path) -> None:
    """Delete shards, temporaries and the manifest a previous run left in ``folder``."""
    if not folder.exists():
        return
    for pattern in (MANIFEST_NAME, SHARD_PATTERN, f"heldout/{SHARD_PATTERN}", ".*.tmp-*", "heldout/.*.tmp-*", QUARANTINE_NAME):
        for path in folder.glob(pattern):
            path.unlink()


@dataclass
class DropTally:
    """Counts of rows dropped, by reason; the accounting every step reports."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n

    def update(self, other: Mapping[str, int]) -> None:
        for reason, n in other.items():
            self.add(reason, int(n))

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """Reason → count, sorted by reason (stable bytes in manifests)."""
        return {reason: int(self.counts[reason]) for reason in sorted(self.counts) if self.counts[reason]}


def input_entries(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """``{path, bytes, sha256}`` for each input, in the order given."""
    entries = []
    for path in paths:
        p = Path(path)
        entries.append({"path": str(path), "bytes": p.stat().st_size, "sha256": file_sha256(p)})
    return entries


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``pairforge`` always included)."""
    from importlib import metadata

    from pipeline import __version__

    versions = {"pairforge": __version__}
    for name in sorted(set(names) | {"pyarrow", "polars"}):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a dataset folder, or None when the folder has none (incomplete)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def check_accounting(manifest: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``rows_read == rows_kept + sum(dropped)``."""
    dropped = sum(manifest["dropped"].values())
    if manifest["rows_read"] != manifest["rows_kept"] + dropped:
        raise ValueError(
            f"accounting broken: rows_read={manifest['rows_read']} but rows_kept={manifest['rows_kept']}"
            f" + dropped={dropped}"
        )


def shards_intact(folder: str | os.PathLike[str], manifest: Mapping[str, Any]) -> bool:
    """True when every shard the manifest lists exists with the recorded hash."""
    base = Path(folder)
    for shard in manifest.get("shards", []):
        path = base / shard["path"]
        if not path.exists() or file_sha256(path) != shard["sha256"]:
            return False
    return True


def shard_paths(folder: str | os.PathLike[str], split: str = "train") -> list[Path]:
    """The shard files of a dataset folder for ``split`` (``train`` or ``heldout``), in order."""
    base = Path(folder)
    if split == "heldout":
        base = base / "heldout"
    return sorted(base.glob(SHARD_PATTERN))
