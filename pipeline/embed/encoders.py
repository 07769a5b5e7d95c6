"""Text encoders behind one switch: a model folder and a choice in; an encoder and a batch plan out.

In: a local model folder, a device, and an encoder choice (:data:`ENCODER_CHOICES`:
``auto``, ``numpy``, ``numpy-mkl``, ``numpy-openblas`` or ``torch``). Out: an encoder
with ``encode(texts) -> float32 (n, dim)`` unit vectors, its tokenizer's lengths, and
the batch plan every caller encodes with (:func:`plan_encoding`: texts longest first,
one token length per batch, nothing padded), so a text's embedding is the same bytes
in whatever batch, slice, process or machine it is encoded.

``auto`` runs plain BERT + mean/CLS pooling models in numpy on a CPU
(:mod:`pipeline.embed.numpy_bert`: no torch in memory, MKL's products where the torch
wheel carries them) and everything else in torch: a plain Transformer + Pooling +
Normalize stack on ``transformers`` alone (:class:`PlainEncoder`), any other model
through sentence-transformers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np

from pipeline.devices import gpu_visible, use_local_models_only
from pipeline.memory import release_free_memory

EncoderChoice = Literal["auto", "numpy", "numpy-mkl", "numpy-openblas", "torch"]
ENCODER_CHOICES: tuple[str, ...] = ("auto", "numpy", "numpy-mkl", "numpy-openblas", "torch")


@dataclass(frozen=True)
class ResolvedEncoder:
    """The encoder a run uses, decided without importing torch.

    Attributes:
        backend: ``numpy`` or ``torch``.
        device: ``cpu``, ``cuda``, ``cuda:1``...
        gemm: the numpy encoder's dense products, ``mkl`` or ``openblas`` (None for torch).
    """

    backend: str
    device: str
    gemm: str | None = None


class PlainEncoder:
    """A Transformer + mean/CLS pooling + Normalize sentence-transformers model run with
    plain ``transformers``: the same embeddings as ``SentenceTransformer.encode``, without
    importing sentence-transformers (about 300 MiB of resident memory saved).

    The torch backend's choice for such models (on a GPU, or with ``--encoder torch``);
    :func:`load_text_encoder` falls back to sentence-transformers for any other
    architecture (prompts, other pooling, extra modules).
    """

    backend = "torch"

    def __init__(self, folder: Path, transformer_dir: Path, pooling: str, max_seq_length: int, device: str) -> None:
        # transformers resolves its names lazily, and that is not thread-safe: two
        # mining tasks starting at once in a flow's worker threads can see a half-made
        # module ("cannot import name 'AutoModel'").
        from pipeline.embed.models import HEAVY_IMPORT_LOCK

        with HEAVY_IMPORT_LOCK:
            import torch
            from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(transformer_dir), local_files_only=True, trust_remote_code=False)
        self.model.eval().to(device)
        self.device = device
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self._torch = torch

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        """Normalized float32 embeddings of ``texts`` (one padded batch)."""
        torch = self._torch
        features = self.tokenizer(
            texts, padding=True, truncation="longest_first", max_length=self.max_seq_length, return_tensors="pt"
        )
        features = {k: v.to(self.device) for k, v in features.items()}
        with torch.inference_mode():
            tokens = self.model(**features).last_hidden_state
            if self.pooling == "cls":
                pooled = tokens[:, 0]
            else:
                mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()


def resolve_encoder(model_path: Path, device: str | None = None, choice: str = "auto") -> ResolvedEncoder:
    """The encoder a run uses, decided without importing torch.

    ``auto`` picks the numpy encoder (:mod:`pipeline.embed.numpy_bert`) on a CPU for
    plain BERT + mean/CLS Pooling (+ Normalize) models, and torch otherwise (another
    architecture, a visible GPU, or an explicit non-CPU ``device``). ``numpy`` runs
    the numpy encoder with MKL's products where available; ``numpy-mkl`` and
    ``numpy-openblas`` choose the products.

    Raises:
        ValueError: an unknown choice, or a numpy choice for a model or device it cannot run.
    """
    from pipeline.embed.numpy_bert import gemm_kind, numpy_encoder_spec

    if choice not in ENCODER_CHOICES:
        raise ValueError(f"encoder must be one of {', '.join(ENCODER_CHOICES)}, got {choice!r}")
    if choice.startswith("numpy"):
        if device not in (None, "cpu"):
            raise ValueError(f"the numpy encoder runs on the CPU only, not on device {device!r}")
        if numpy_encoder_spec(model_path) is None:
            raise ValueError(
                f"{model_path}: the numpy encoder runs plain BERT + mean/CLS Pooling (+ Normalize) models with"
                " model.safetensors and tokenizer.json only; use --encoder torch"
            )
        return ResolvedEncoder("numpy", "cpu", gemm_kind(choice.partition("-")[2] or "auto"))
    on_cpu = device == "cpu" or (device is None and not gpu_visible())
    if choice == "auto" and on_cpu and numpy_encoder_spec(model_path) is not None:
        return ResolvedEncoder("numpy", "cpu", gemm_kind("auto"))
    return ResolvedEncoder("torch", device or ("cuda" if gpu_visible() else "cpu"))


def embedding_cache_key(fingerprint: str, encoder: ResolvedEncoder) -> str:
    """The embedding cache's key: the model fingerprint, the backend and the device kind.

    Backends (and CPU against GPU, and the numpy encoder's MKL and OpenBLAS products)
    agree to about 1e-7, not bit for bit; keeping their vectors apart keeps a run's
    output a function of its inputs, model, config and machine, never of which backend
    happened to fill the cache first.
    """
    backend = f"numpy-{encoder.gemm}" if encoder.backend == "numpy" else encoder.backend
    return hashlib.sha256(f"{fingerprint}|{backend}|{encoder.device.split(':', 1)[0]}".encode()).hexdigest()


def load_text_encoder(model_path: Path, encoder: ResolvedEncoder) -> Any:
    """An encoder with ``encode``, ``max_seq_length``, ``get_embedding_dimension`` and ``backend``.

    ``numpy`` gives a :class:`~pipeline.embed.numpy_bert.NumpyBertEncoder`; ``torch``
    runs a plain Transformer + Pooling + Normalize model on ``transformers`` alone
    (:class:`PlainEncoder`) and anything else through sentence-transformers.
    """
    from pipeline.embed.numpy_bert import NumpyBertEncoder, numpy_encoder_spec, plain_stack_spec

    if encoder.backend == "numpy":
        return NumpyBertEncoder(numpy_encoder_spec(model_path), gemm=encoder.gemm or "auto")
    from pipeline.embed.models import load_encoder

    stack = plain_stack_spec(model_path)
    if stack is None:
        model = load_encoder(model_path, device=encoder.device)
        model.backend = "torch"
        return model
    use_local_models_only()
    transformer_dir, pooling, _normalize, max_len = stack
    return PlainEncoder(model_path, transformer_dir, pooling, max_len, device=encoder.device)


def encoder_dimension(model_path: Path, backend: str, encoder: Any | None) -> int:
    """The embedding width: from the BERT config for numpy, from the loaded encoder otherwise."""
    if backend == "numpy":
        from pipeline.embed.numpy_bert import numpy_encoder_spec

        spec = numpy_encoder_spec(model_path)
        return int(json.loads((spec.transformer_dir / "config.json").read_text(encoding="utf-8"))["hidden_size"])
    return int(encoder.get_embedding_dimension())


def token_lengths(model_path: Path, backend: str, encoder: Any | None, texts: list[str]) -> np.ndarray:
    """Tokens per text (truncated, special tokens included), with the backend's own tokenizer."""
    lengths = np.empty(len(texts), dtype=np.int64)
    if backend == "numpy":
        from pipeline.embed.numpy_bert import load_tokenizer, numpy_encoder_spec

        tokenizer = load_tokenizer(numpy_encoder_spec(model_path))
        for start in range(0, len(texts), 8192):
            batch = texts[start : start + 8192]
            lengths[start : start + len(batch)] = [len(e.ids) for e in tokenizer.encode_batch(batch, add_special_tokens=True)]
        del tokenizer
        release_free_memory()  # the tokenizer's encodings of every text: hand the heap back
        return lengths
    max_len = encoder.max_seq_length or 512
    for start in range(0, len(texts), 8192):
        ids = encoder.tokenizer(
            texts[start : start + 8192], add_special_tokens=True, truncation=True, max_length=max_len,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]
        lengths[start : start + len(ids)] = [len(x) for x in ids]
    return lengths


# A batch holds at most batch_size x this many tokens: long texts come in smaller
# batches, so a batch's activations stay small (each core encodes one batch at once).
TOKENS_PER_TEXT_BUDGET = 32


def token_budget_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, token_budget: int) -> list[np.ndarray]:
    """Cut length-sorted ``order`` into batches of at most ``batch_size`` texts and
    ``token_budget`` tokens, so a batch of long texts stays small in memory.

    A batch holds texts of ONE token length: nothing is padded. Padding changes a
    text's embedding in the last bits (the attention sums run over more positions),
    so with padding a text's bytes would depend on which other texts happen to need
    encoding with it (what the cache already holds, how datasets were scheduled on a
    cluster). Without it, each text's embedding is the same bytes in any batch.
    """
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        length = int(lengths[order[start]])
        size = max(1, min(batch_size, token_budget // max(length, 1)))
        window = lengths[order[start : start + size]]
        if window[-1] != length:  # sorted longest first: stop where the length changes
            size = int(np.argmax(window != length))
        batches.append(order[start : start + size])
        start += size
    return batches


def plan_encoding(lengths: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The one batch plan of a run: texts longest first, cut by :func:`token_budget_batches`.

    Returns:
        ``order`` (the texts' positions, in encoding order) and ``offsets`` (int64,
        batch ``b`` is ``order[offsets[b]:offsets[b + 1]]``).
    """
    order = np.lexsort((np.arange(len(lengths)), -lengths)).astype(np.int64)
    batches = token_budget_batches(order, lengths, batch_size, batch_size * TOKENS_PER_TEXT_BUDGET)
    offsets = np.zeros(len(batches) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in batches])
    return order, offsets


def split_plan(offsets: np.ndarray, padded_tokens: np.ndarray, n_slices: int) -> list[tuple[int, int]]:
    """Cut the batch plan into at most ``n_slices`` runs of whole batches with about equal
    padded tokens (the encoder's work); each run is a ``(first row, end row)`` range."""
    n_batches = len(offsets) - 1
    if n_batches <= 0:
        return []
    n_slices = max(1, min(n_slices, n_batches))
    cumulative = np.cumsum(padded_tokens)
    cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, n_slices) / n_slices, side="left") + 1
    # Exactly n_slices non-empty runs: cut i lies in [i + 1, n_batches - (n_slices - 1 - i)],
    # and after the cut before it (a batch heavier than a share would merge two cuts).
    low = np.arange(1, n_slices)
    cuts = np.clip(cuts, low, n_batches - (n_slices - 1) + low - 1)
    cuts = np.maximum.accumulate(np.maximum(cuts, low))
    for i in range(1, len(cuts)):
        cuts[i] = max(cuts[i], cuts[i - 1] + 1)
    bounds = np.concatenate([[0], cuts, [n_batches]]).astype(np.int64)
    return [(int(offsets[a]), int(offsets[b])) for a, b in pairwise(bounds)]


def encode_in_batches(encoder: Any, batch_texts: Iterable[list[str]]) -> Iterator[np.ndarray]:
    """float32 embeddings of each batch in order: numpy batches spread over the cores,
    torch batches one after the other (torch spreads each batch itself)."""
    if getattr(encoder, "backend", "torch") == "numpy":
        from pipeline.embed.numpy_bert import encode_batches

        yield from encode_batches(encoder, batch_texts)
        return
    for texts in batch_texts:
        yield np.asarray(
            encoder.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False),
            dtype=np.float32,
        )
