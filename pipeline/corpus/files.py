"""Files written the safe way, and the hashes that identify them.

In: bytes, JSON values, paths. Out: files renamed into place only once complete
(:func:`atomic_write_bytes`, :func:`atomic_write_json`), SHA-256 digests of files
and of resolved configs (:func:`config_hash` over :func:`canonical_json`).

Nothing written holds a timestamp: the same values give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

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


def input_entries(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """``{path, bytes, sha256}`` for each input, in the order given."""
    entries = []
    for path in paths:
        p = Path(path)
        entries.append({"path": str(path), "bytes": p.stat().st_size, "sha256": file_sha256(p)})
    return entries


def relative_input_entries(paths: Iterable[str | os.PathLike[str]], root: Path) -> list[dict[str, Any]]:
    """:func:`input_entries` with each path relative to ``root`` (a step's corpus root), so
    a corpus moved or rebuilt elsewhere keeps byte-identical manifests."""
    return [{**entry, "path": os.path.relpath(Path(entry["path"]).resolve(), root)} for entry in input_entries(paths)]
