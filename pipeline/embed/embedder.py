"""Embeddings of texts through the on-disk cache: the call every model-based step makes.

In: a model folder (default: the packaged all-MiniLM-L6-v2), a device, an encoder
choice, a cache root and texts. Out: float32 unit vectors, one row per text, into an
array or memory map; each text is read from the :class:`~pipeline.embed.cache.EmbeddingCache`
when it is there and encoded otherwise (then stored), with the one batch plan of
:func:`~pipeline.embed.encoders.plan_encoding`. So a text gets the same bytes here as
in mining's sliced runs on a cluster, and a second step over the same texts (a
rebuild, the consistency filter after mining) encodes nothing.
"""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.embed.cache import EmbeddingCache, default_cache_dir, text_keys
from pipeline.embed.encoders import (
    ResolvedEncoder,
    embedding_cache_key,
    encode_in_batches,
    encoder_dimension,
    load_text_encoder,
    plan_encoding,
    resolve_encoder,
    token_lengths,
)
from pipeline.embed.models import cached_model_fingerprint, resolve_model_path
from pipeline.progress import progress_bar

# Vectors stored in the cache per segment, at most (a segment is one file pair).
CACHE_FLUSH_ROWS = 32_768


class Embedder:
    """One model's embeddings, cached on disk.

    Args:
        model: a local sentence-transformers folder; None for the packaged all-MiniLM-L6-v2.
        device: ``cpu``, ``cuda``...; None for a GPU when one is visible.
        encoder: ``auto``, ``numpy``, ``numpy-mkl``, ``numpy-openblas`` or ``torch``
            (:func:`~pipeline.embed.encoders.resolve_encoder`).
        cache_dir: the embedding cache root; None for ``$PAIRFORGE_CACHE/embeddings``
            or ``~/.cache/pairforge/embeddings``.
        batch_size: texts per encoder batch (fewer for long texts).

    Raises:
        FileNotFoundError: the model folder does not exist.
        ValueError: an encoder choice that cannot run this model or device.

    Example::

        embedder = Embedder()
        vectors = embedder.embed(["A man plays a guitar.", "Someone makes music."])
        print(float(vectors[0] @ vectors[1]))
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str | None = None,
        encoder: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model_path = resolve_model_path(model)
        self.cache_root = Path(cache_dir).resolve() if cache_dir else default_cache_dir()
        self.fingerprint = cached_model_fingerprint(self.model_path, self.cache_root / "fingerprints")
        self.resolved: ResolvedEncoder = resolve_encoder(self.model_path, device, encoder)
        self.cache_key = embedding_cache_key(self.fingerprint, self.resolved)
        self.cache = EmbeddingCache(self.cache_root, self.cache_key)
        self.batch_size = batch_size
        self._encoder: Any | None = None
        self.encoded = 0  # texts encoded (not found in the cache) by this embedder

    @property
    def encoder(self) -> Any:
        """The loaded encoder (loaded on first use: a fully cached run never loads it)."""
        if self._encoder is None:
            self._encoder = load_text_encoder(self.model_path, self.resolved)
        return self._encoder

    @property
    def dimension(self) -> int:
        """The embedding width."""
        if self.cache.dim is not None:
            return self.cache.dim
        return encoder_dimension(self.model_path, self.resolved.backend, self._torch_encoder())

    def _torch_encoder(self) -> Any | None:
        """The loaded torch encoder; None for numpy, whose width and tokenizer come from its files."""
        return None if self.resolved.backend == "numpy" else self.encoder

    def embed(self, texts: list[str], out: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """Unit vectors of ``texts``, row ``i`` for ``texts[i]`` (duplicates encoded once).

        Args:
            texts: the texts, as the model should see them (normalize them first).
            out: a float32 ``(len(texts), dimension)`` array or memory map to fill;
                None allocates one.
            progress: show a progress bar while encoding.
        """
        out = np.empty((len(texts), self.dimension), dtype=np.float32) if out is None else out
        if out.shape != (len(texts), self.dimension):
            raise ValueError(f"out has shape {out.shape}, expected ({len(texts)}, {self.dimension})")
        if not texts:
            return out
        keys = text_keys(texts)
        found = self.cache.read_into(keys, out, np.arange(len(texts)))
        missing = np.flatnonzero(~found)
        if not len(missing):
            return out
        # Each distinct missing text once, in the order of its first row.
        _, first = np.unique(keys[missing], axis=0, return_index=True)
        distinct = missing[np.sort(first)]
        distinct_texts = [texts[i] for i in distinct]
        lengths = token_lengths(self.model_path, self.resolved.backend, self._torch_encoder(), distinct_texts)
        order, offsets = plan_encoding(lengths, self.batch_size)
        batches = ([distinct_texts[i] for i in order[a:b]] for a, b in pairwise(offsets))
        pending: list[np.ndarray] = []
        start = 0
        done = 0
        with progress_bar(len(distinct), "encoding", progress, unit="text") as bar:
            for vectors in encode_in_batches(self.encoder, batches):
                out[distinct[order[done : done + len(vectors)]]] = vectors
                pending.append(vectors)
                done += len(vectors)
                bar.update(len(vectors))
                if done - start >= CACHE_FLUSH_ROWS:
                    self.cache.append(keys[distinct[order[start:done]]], np.concatenate(pending))
                    pending, start = [], done
        if pending:
            self.cache.append(keys[distinct[order[start:done]]], np.concatenate(pending))
        self.encoded += len(distinct)
        # Rows whose text repeats a distinct one get its vector.
        if len(distinct) < len(missing):
            self.cache.read_into(keys[missing], out, missing)
        return out
