"""What a reader needs besides the path: names, bounds, the reader strategy, and tallies.

In: an input file and its position among a source's inputs. Out: a
:class:`ReadContext` that every reader of :mod:`pipeline.io` fills with the rows it
could not read (counted by reason and quarantined with file, line and first bytes)
and the file's line count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal

from pipeline.corpus.manifest import DropTally
from pipeline.io.compression import open_decompressed
from pipeline.io.digest import InputDigest

DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_MAX_LINE_BYTES = 1 << 20
QUARANTINE_HEAD_BYTES = 200
# ``auto``: a clean plain JSON-lines file of string fields is read in one pass by
# DuckDB (pipeline.io.jsonl.one_pass) where the caller can start a file over;
# ``chunked``: always polars/pyarrow over 16 MiB chunks.
JsonlReader = Literal["auto", "chunked"]
JSONL_READERS: tuple[str, ...] = ("auto", "chunked")


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
        lines_seen: the file's line count, once a reader has read it to its end.
        input_digest: hashes the input from the reader's own blocks (see
            :class:`~pipeline.io.digest.InputDigest`), or None.
        jsonl_reader: ``auto`` lets :func:`~pipeline.io.jsonl.read_jsonl` read a clean
            plain file of string fields in one pass, which may have to start the file
            over (it then calls :meth:`restart`); ``chunked`` never does.
        on_restart: called by :meth:`restart`: the consumer drops every row it took
            from this file. Without it, ``auto`` reads chunked (nothing to start over).
        batch_rows: rows per batch of the one-pass reader.
        readers: the readers that read the file, in order (``one-pass``, ``chunked``):
            ``["one-pass", "chunked"]`` when the one-pass reader gave up and the file was
            read again.
    """

    path: Path
    display_name: str
    file_index: int = 0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    bad_rows: DropTally = field(default_factory=DropTally)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    lines_seen: int = 0
    input_digest: InputDigest | None = None
    jsonl_reader: JsonlReader = "chunked"
    on_restart: Callable[[], None] | None = None
    batch_rows: int = 100_000
    readers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.jsonl_reader not in JSONL_READERS:
            raise ValueError(f"jsonl_reader must be one of {', '.join(JSONL_READERS)}, got {self.jsonl_reader!r}")

    @property
    def can_restart(self) -> bool:
        """Whether a reader may start this file over (the consumer can drop what it took)."""
        return self.on_restart is not None

    def restart(self) -> None:
        """Forget everything read from the file so far: tallies, quarantine, line count,
        hash; the consumer drops its rows (``on_restart``). A reader then reads it again."""
        if self.on_restart is None:
            raise RuntimeError(f"{self.display_name}: a reader tried to start over a file whose rows cannot be dropped")
        self.bad_rows = DropTally()
        self.quarantine = []
        self.lines_seen = 0
        if self.input_digest is not None:
            self.input_digest = self.input_digest.restarted()
        self.on_restart()

    def open(self, path: Path) -> BinaryIO:
        """:func:`~pipeline.io.compression.open_decompressed`; reads of the input itself also feed ``input_digest``."""
        return open_decompressed(Path(path), self.digest_for(path))

    def digest_for(self, path: Path) -> InputDigest | None:
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
