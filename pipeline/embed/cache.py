"""On-disk caches of embeddings (by model and text) and of search results (by everything a search depends on).

In: a cache root folder, a model fingerprint, text keys (128-bit hashes of
normalized texts) and float32 vectors. Out: the vectors already cached for those
keys, read through memory maps, and new segments appended for the rest
(:class:`EmbeddingCache`); and the results of earlier searches over the same
embeddings (:class:`SearchCache`), so a rebuild neither encodes nor searches again.

Layout, one folder per model fingerprint::

    <root>/<fingerprint[:32]>/meta.json                {"fingerprint", "dim", "format"}
    <root>/<fingerprint[:32]>/seg-<hash>.vectors.npy   float32 (n, dim)
    <root>/<fingerprint[:32]>/seg-<hash>.keys.npy      uint64 (n, 3): key_hi, key_lo, row digest

Only numpy ``.npy`` files are used, always loaded with ``allow_pickle=False``. A
segment's vectors are written before its keys, each through a temporary name and a
rename, so a segment without a keys file is invisible and a killed run leaves no
half entry. Every row carries an 8-byte BLAKE2b digest of its vector bytes: a row
whose bytes no longer match (a flipped bit, a truncated file) is reported as
missing, its key is retired in place, and the caller recomputes and re-appends it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.corpus.files import atomic_write_json

if TYPE_CHECKING:
    from pipeline.embed.index import IndexConfig

LOG = logging.getLogger(__name__)

CACHE_FORMAT = "pairforge-embeddings-v1"
_DEAD_KEY = np.uint64(0)


def default_cache_dir() -> Path:
    """``$PAIRFORGE_CACHE/embeddings``, else ``~/.cache/pairforge/embeddings``."""
    base = os.environ.get("PAIRFORGE_CACHE")
    return Path(base) / "embeddings" if base else Path.home() / ".cache" / "pairforge" / "embeddings"


def text_keys(texts: list[str]) -> np.ndarray:
    """128-bit BLAKE2b keys of ``texts`` as a uint64 array of shape (n, 2)."""
    keys = np.empty((len(texts), 2), dtype=np.uint64)
    raw = bytearray()
    for text in texts:
        raw += hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    if texts:
        keys[:] = np.frombuffer(bytes(raw), dtype="<u8").reshape(-1, 2)
    return keys


def row_digests(vectors: np.ndarray) -> np.ndarray:
    """An 8-byte BLAKE2b digest of each row's float32 bytes, as uint64 (n,)."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    raw = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows)
    return np.frombuffer(raw, dtype="<u8").copy() if raw else np.empty(0, dtype=np.uint64)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class EmbeddingCache:
    """Cached embeddings of one model, looked up by text key.

    Args:
        root: the cache root (one subfolder per model fingerprint).
        fingerprint: the cache key of the model and encoder
            (:func:`pipeline.embed.encoders.embedding_cache_key`).
        dim: the embedding dimension, or None to take it from an existing cache.

    Raises:
        ValueError: the cache folder holds embeddings of another dimension or format.
    """

    def __init__(self, root: str | os.PathLike[str], fingerprint: str, dim: int | None = None) -> None:
        self.folder = Path(root) / fingerprint[:32]
        self.fingerprint = fingerprint
        meta_path = self.folder / "meta.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else None
        if meta is not None:
            if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != fingerprint:
                raise ValueError(f"{meta_path}: not a {CACHE_FORMAT} cache of model {fingerprint[:12]}")
            if dim is not None and int(meta["dim"]) != dim:
                raise ValueError(f"{meta_path}: cached dimension {meta['dim']} differs from the model's {dim}")
            dim = int(meta["dim"])
        self.dim = dim
        self._segments: list[str] = []
        self._keys: np.ndarray = np.empty((0, 2), dtype=np.uint64)
        self._where: np.ndarray = np.empty((0, 2), dtype=np.int64)  # (segment, row) per sorted key
        if meta is not None:
            self._load_index()

    @property
    def exists(self) -> bool:
        """True when the cache folder holds a meta file (the dimension is known)."""
        return self.dim is not None

    @property
    def size(self) -> int:
        """Live entries in the cache."""
        return len(self._keys)

    def _load_index(self) -> None:
        keys, where = [], []
        for key_path in sorted(self.folder.glob("seg-*.keys.npy")):
            name = key_path.name[: -len(".keys.npy")]
            try:
                seg_keys = np.load(key_path, allow_pickle=False, mmap_mode="r")
                if seg_keys.ndim != 2 or seg_keys.shape[1] != 3 or seg_keys.dtype != np.uint64:
                    raise ValueError(f"shape {seg_keys.shape} dtype {seg_keys.dtype}")
            except (ValueError, OSError) as exc:
                LOG.warning("embedding cache: ignoring unreadable segment %s (%s)", key_path, exc)
                continue
            live = np.flatnonzero((seg_keys[:, 0] != _DEAD_KEY) | (seg_keys[:, 1] != _DEAD_KEY))
            seg_id = len(self._segments)
            self._segments.append(name)
            keys.append(np.asarray(seg_keys[live, :2]))
            where.append(np.stack([np.full(len(live), seg_id, dtype=np.int64), live.astype(np.int64)], axis=1))
        if not keys:
            return
        all_keys = np.concatenate(keys)
        all_where = np.concatenate(where)
        order = np.lexsort((all_keys[:, 1], all_keys[:, 0]))
        self._keys, self._where = all_keys[order], all_where[order]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """For each key, its position in the sorted index, or -1 when not cached."""
        found = np.full(len(keys), -1, dtype=np.int64)
        if not len(self._keys) or not len(keys):
            return found
        hi = self._keys[:, 0]
        left = np.searchsorted(hi, keys[:, 0], side="left")
        right = np.searchsorted(hi, keys[:, 0], side="right")
        present = right > left
        first = np.minimum(left, len(hi) - 1)
        exact = present & (self._keys[first, 1] == keys[:, 1])
        found[exact] = left[exact]
        # Several entries share the high word only by chance (or a duplicate write): scan them.
        for i in np.flatnonzero(present & ~exact & (right - left > 1)):
            for pos in range(left[i] + 1, right[i]):
                if self._keys[pos, 1] == keys[i, 1]:
                    found[i] = pos
                    break
        return found

    def read_into(self, keys: np.ndarray, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Copy cached vectors for ``keys`` into ``out[rows]``, verifying each row.

        Args:
            keys: uint64 (n, 2) text keys.
            out: a float32 (N, dim) array or memmap to fill.
            rows: int64 (n,) rows of ``out`` for each key.

        Returns:
            A bool mask (n,): True where the key was found and its bytes verified.
            Corrupt rows are retired from the cache and reported as False.
        """
        ok = np.zeros(len(keys), dtype=bool)
        positions = self.lookup(keys)
        hit = np.flatnonzero(positions >= 0)
        if not len(hit):
            return ok
        seg_of = self._where[positions[hit], 0]
        row_of = self._where[positions[hit], 1]
        for seg_id in np.unique(seg_of):
            in_seg = np.flatnonzero(seg_of == seg_id)
            name = self._segments[seg_id]
            seg_rows = row_of[in_seg]
            try:
                seg_keys = np.load(self.folder / f"{name}.keys.npy", allow_pickle=False, mmap_mode="r")
                # Most of a segment wanted (a rebuild): one sequential read beats a
                # gather through the memory map; a few rows: the map.
                dense = len(seg_rows) * 4 >= len(seg_keys)
                vectors = np.load(self.folder / f"{name}.vectors.npy", allow_pickle=False, mmap_mode=None if dense else "r")
                if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) < len(seg_keys):
                    raise ValueError(f"vectors shape {vectors.shape} does not match {len(seg_keys)} keys")
                order = np.argsort(seg_rows, kind="stable")
                block = np.asarray(vectors[seg_rows[order]], dtype=np.float32)
                del vectors
                stored = np.asarray(seg_keys[seg_rows[order], 2])
            except (ValueError, OSError) as exc:
                LOG.warning("embedding cache: segment %s unreadable (%s); recomputing its entries", name, exc)
                self._retire(name, seg_rows)
                continue
            good = (row_digests(block) == stored) & np.isfinite(block).all(axis=1)
            if not good.all():
                LOG.warning("embedding cache: %d corrupt entries in %s; recomputing them", int((~good).sum()), name)
                self._retire(name, seg_rows[order][~good])
            targets = hit[in_seg[order]]
            out[rows[targets[good]]] = block[good]
            ok[targets[good]] = True
        return ok

    def _retire(self, name: str, seg_rows: np.ndarray) -> None:
        """Mark rows of a segment dead by zeroing their keys (an atomic rewrite)."""
        key_path = self.folder / f"{name}.keys.npy"
        try:
            seg_keys = np.array(np.load(key_path, allow_pickle=False))
            seg_keys[seg_rows, 0] = _DEAD_KEY
            seg_keys[seg_rows, 1] = _DEAD_KEY
            _atomic_save_npy(key_path, seg_keys)
        except (ValueError, OSError):
            key_path.unlink(missing_ok=True)

    def append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store new vectors for ``keys`` as one segment (vectors first, keys last)."""
        if not len(keys):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            meta = {"dim": self.dim, "fingerprint": self.fingerprint, "format": CACHE_FORMAT}
            tmp = meta_path.with_name(f".meta.json.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(meta, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, meta_path)
        table = np.empty((len(keys), 3), dtype=np.uint64)
        table[:, :2] = keys
        table[:, 2] = row_digests(vectors)
        name = "seg-" + hashlib.sha256(table.tobytes()).hexdigest()[:24]
        _atomic_save_npy(self.folder / f"{name}.vectors.npy", vectors)
        _atomic_save_npy(self.folder / f"{name}.keys.npy", table)
        self._segments = []
        self._load_index()


def embeddings_sha256(embeddings: np.ndarray) -> str:
    """SHA-256 of an embedding matrix's float32 bytes, read in blocks (it may be a memmap)."""
    import hashlib

    digest = hashlib.sha256()
    for start in range(0, len(embeddings), 65_536):
        digest.update(np.ascontiguousarray(embeddings[start : start + 65_536], dtype="<f4").tobytes())
    return digest.hexdigest()


class SearchCache:
    """Search results of earlier runs, so a rebuild over the same texts does not search again.

    An entry is keyed by everything the search depends on: the embedding cache key
    (model, backend, device kind), the SHA-256 of the run's embedding bytes, the
    anchors' and the corpus' text keys in order, ``k`` and the index settings, so
    it is reused only where a new search would return the same arrays. It holds the (anchors, k) scores and corpus positions
    (``.npy``, loaded with ``allow_pickle=False``) and a JSON file, written last, with
    the index description and a SHA-256 of both arrays; an entry whose bytes do not
    match is ignored and searched again. Entries above ``max_bytes`` are not stored.
    """

    FORMAT = "pairforge-search-v1"

    def __init__(self, folder: Path, max_bytes: int = 1 << 30) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes

    def key(
        self, cache_key: str, anchor_keys: np.ndarray, corpus_keys: np.ndarray, k: int, config: "IndexConfig", vectors_sha256: str
    ) -> str:
        """The entry name for a search of ``anchor_keys`` against ``corpus_keys`` over
        embeddings whose bytes hash to ``vectors_sha256`` (:func:`embeddings_sha256`)."""
        import hashlib

        index = {name: getattr(config, name) for name in (
            "index", "ivf_threshold", "nlist", "nprobe", "ivf_train_size", "hnsw_m", "hnsw_ef_search", "seed",
        )}
        header = [self.FORMAT, cache_key, int(k), index, vectors_sha256]
        digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
        digest.update(np.ascontiguousarray(anchor_keys, dtype="<u8").tobytes())
        digest.update(b"|")
        digest.update(np.ascontiguousarray(corpus_keys, dtype="<u8").tobytes())
        return digest.hexdigest()[:40]

    @staticmethod
    def _checksum(scores: np.ndarray, positions: np.ndarray) -> str:
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(scores, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(positions, dtype="<i8").tobytes())
        return digest.hexdigest()

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        """The stored (scores, positions, index description), or None when absent or damaged."""
        meta_path = self.folder / f"{key}.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            scores = np.load(self.folder / f"{key}.scores.npy", allow_pickle=False)
            positions = np.load(self.folder / f"{key}.positions.npy", allow_pickle=False)
            if meta.get("format") != self.FORMAT or meta.get("sha256") != self._checksum(scores, positions):
                raise ValueError("checksum mismatch")
            return scores.astype(np.float32, copy=False), positions.astype(np.int64, copy=False), meta["index"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            import logging

            logging.getLogger(__name__).warning("search cache: ignoring damaged entry %s (%s)", meta_path, exc)
            return None

    def store(self, key: str, scores: np.ndarray, positions: np.ndarray, index_info: dict[str, Any]) -> None:
        """Keep a search's results (arrays first, the JSON that makes them visible last)."""
        if scores.nbytes + positions.nbytes > self.max_bytes:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _atomic_save_npy(self.folder / f"{key}.scores.npy", np.ascontiguousarray(scores, dtype="<f4"))
            _atomic_save_npy(self.folder / f"{key}.positions.npy", np.ascontiguousarray(positions, dtype="<i8"))
            meta = {"format": self.FORMAT, "index": index_info, "sha256": self._checksum(scores, positions)}
            atomic_write_json(self.folder / f"{key}.json", meta)
        except OSError as exc:  # a read-only or full cache disk costs a search next time, nothing more
            import logging

            logging.getLogger(__name__).warning("search cache: could not store %s (%s)", key, exc)
