"""Hard-negative mining: a pair dataset folder in, a triplet dataset folder out.

In: a dataset folder (``part-*.parquet`` shards with ``anchor, positive[, negative],
id, source_file, source_line`` and a ``manifest.json``, see docs/corpus-format.md;
the ``heldout/`` split is never read), optional extra corpus shards, a local
sentence-transformers model and a :class:`MiningConfig`. Out: a dataset folder of
triplet shards (``anchor, positive, negative`` or ``negative_1 .. negative_k``) and a
manifest with stage ``mine``, the drop accounting and the mining statistics.

The steps, each counting what it drops:

1. read the training pairs, normalize every text and give each distinct text an id;
2. embed each distinct text once (anchors and corpus share one table), reading what
   the on-disk :class:`~pipeline.embedding_cache.EmbeddingCache` already holds and
   encoding the rest in token-length-sorted batches; the embeddings live in a
   memory-mapped file;
3. index the corpus with FAISS, chosen by size: exact inner product (scanned in
   blocks from the memory map) below ``ivf_threshold``, an IVF index trained on a
   sample with its inverted lists on disk above it, HNSW on request; one search
   for all distinct anchors;
4. select negatives with sentence-transformers' ``mine_hard_negatives`` semantics
   (``range_min``/``range_max`` are ranks among the surviving candidates, margins are
   measured against the anchor's lowest positive score) behind a false-negative
   guard (never a positive of the anchor, never a text equal, after normalization
   and case folding, to the anchor or to one of its positives);
5. write the shards, then the manifest.

torch, faiss and sentence-transformers are imported inside the functions that use
them; the model is not even loaded when every embedding is cached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.embedding_cache import EmbeddingCache, default_cache_dir, text_keys
from pipeline.memory import release_free_memory
from pipeline.shards import (
    DEFAULT_ROWS_PER_SHARD,
    MANIFEST_NAME,
    DropTally,
    ShardWriter,
    atomic_write_json,
    check_accounting,
    config_hash,
    input_entries,
    library_versions,
    read_manifest,
    remove_stale_shards,
    shard_paths,
    shards_intact,
)

SamplingStrategy = Literal["top", "random"]
OutputFormat = Literal["triplet", "n-tuple"]
IndexKind = Literal["auto", "flat", "ivf", "hnsw"]

REQUIRED_COLUMNS = ("anchor", "positive", "id", "source_file", "source_line")
HISTOGRAM_BINS = np.linspace(-1.0, 1.0, 41)
_CORPUS_BLOCK = 131_072
_QUERY_BLOCK = 16_384
_CACHE_FLUSH = 32_768
_WORK_DIR = ".mine-work"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class MiningConfig:
    """Everything that decides which negatives are mined (saved in the manifest).

    Attributes:
        model: a local sentence-transformers folder; None for the packaged all-MiniLM-L6-v2.
        num_negatives: negatives per pair.
        range_min: skip this many of the best surviving candidates (a rank).
        range_max: consider at most this many surviving candidates (a rank); None
            derives it as sentence-transformers does.
        max_score: drop candidates scoring above this.
        min_score: drop candidates scoring below this.
        absolute_margin: keep a candidate only if ``score <= positive - absolute_margin``.
        relative_margin: keep a candidate only if ``score <= positive - |positive| * relative_margin``.
        sampling_strategy: ``top`` takes the best candidates, ``random`` samples them.
        seed: seed of ``random`` sampling (and of IVF training).
        output_format: ``triplet`` gives one row per (pair, negative); ``n-tuple``
            gives one row per pair with ``negative_1 .. negative_k`` (pairs short of
            k negatives are dropped).
        index: ``auto`` (flat below ``ivf_threshold`` corpus texts, IVF above), or
            ``flat``, ``ivf``, ``hnsw``.
        ivf_threshold: corpus size from which ``auto`` uses IVF.
        nlist: IVF lists; None for ``2 * sqrt(corpus size)``.
        nprobe: IVF lists searched per query.
        ivf_train_size: IVF training sample size; None for ``40 * nlist``.
        hnsw_m: HNSW graph degree.
        hnsw_ef_search: HNSW search breadth.
        batch_size: encoder batch size.
        extra_corpus: dataset folders or Parquet files whose ``positive``,
            ``negative*`` or ``text`` columns join the candidate corpus.
        rows_per_shard: the most rows an output shard holds.
    """

    model: str | None = None
    num_negatives: int = 1
    range_min: int = 0
    range_max: int | None = None
    max_score: float | None = None
    min_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    sampling_strategy: SamplingStrategy = "top"
    seed: int = 0
    output_format: OutputFormat = "triplet"
    index: IndexKind = "auto"
    ivf_threshold: int = 250_000
    nlist: int | None = None
    nprobe: int = 64
    ivf_train_size: int | None = None
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    batch_size: int = 64
    extra_corpus: tuple[str, ...] = field(default_factory=tuple)
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise ValueError(f"range_min must be non-negative, got {self.range_min}")
        if self.range_max is not None and self.num_negatives > self.range_max - self.range_min:
            raise ValueError(
                f"cannot mine {self.num_negatives} negatives: only {self.range_max - self.range_min} candidates"
                f" remain between range_min={self.range_min} and range_max={self.range_max}"
            )
        if self.sampling_strategy not in ("top", "random"):
            raise ValueError(f"sampling_strategy must be 'top' or 'random', got {self.sampling_strategy!r}")
        if self.output_format not in ("triplet", "n-tuple"):
            raise ValueError(f"output_format must be 'triplet' or 'n-tuple', got {self.output_format!r}")
        if self.index not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"index must be auto, flat, ivf or hnsw, got {self.index!r}")
        if self.nprobe < 1 or self.batch_size < 1 or self.hnsw_m < 2:
            raise ValueError("nprobe and batch_size must be at least 1, hnsw_m at least 2")
        object.__setattr__(self, "extra_corpus", tuple(str(p) for p in self.extra_corpus))

    def resolved_range_max(self, max_positives: int) -> int:
        """``range_max``, derived as sentence-transformers derives it when None."""
        if self.range_max is not None:
            return self.range_max
        filtered = self.absolute_margin is not None or self.relative_margin is not None or self.max_score is not None
        per_negative = 10 if filtered else 1
        return self.range_min + self.num_negatives * per_negative + max_positives


# --- step 1: pairs and the text table -------------------------------------------


@dataclass
class TextTable:
    """Distinct normalized texts of a mining run and the pairs pointing at them.

    Attributes:
        texts: the distinct normalized texts (what gets encoded), by text id.
        display: for each text id, the first original spelling seen (what gets written).
        guard_group: for each text id, a group id shared by texts equal after case folding.
        pairs: the training rows (original columns plus ``anchor_tid``, ``positive_tid``).
        corpus_tids: sorted text ids of the candidate corpus.
        dropped: rows dropped while reading, by reason.
    """

    texts: list[str]
    display: list[str]
    guard_group: np.ndarray
    pairs: pl.DataFrame
    corpus_tids: np.ndarray
    dropped: dict[str, int]


def _read_shard(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    try:
        return pl.read_parquet(path, columns=columns)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"{path}: unreadable Parquet shard ({exc})") from exc


def _negative_columns(names: list[str]) -> list[str]:
    return [n for n in names if n == "negative" or (n.startswith("negative_") and n[9:].isdigit())]


def read_pairs(dataset_dir: Path) -> tuple[pl.DataFrame, list[Path]]:
    """The training rows of a dataset folder (never ``heldout/``) and the shards read.

    Raises:
        ValueError: a shard lacks a required column or cannot be read.
    """
    paths = shard_paths(dataset_dir, "train")
    frames = []
    for path in paths:
        frame = _read_shard(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (see docs/corpus-format.md)")
        keep = list(REQUIRED_COLUMNS) + _negative_columns(frame.columns)
        frames.append(frame.select(keep))
    if not frames:
        return pl.DataFrame(schema={c: (pl.Int64 if c == "source_line" else pl.String) for c in REQUIRED_COLUMNS}), paths
    return pl.concat(frames, how="diagonal"), paths


def read_extra_corpus(paths: tuple[str, ...]) -> tuple[pl.Series, list[Path]]:
    """Texts of extra corpus shards (``positive``, ``negative*`` and ``text`` columns)."""
    series: list[pl.Series] = []
    files: list[Path] = []
    for given in paths:
        root = Path(given)
        shard_files = shard_paths(root, "train") if root.is_dir() else [root]
        if not shard_files or not all(p.is_file() for p in shard_files):
            raise FileNotFoundError(f"extra corpus not found or holds no part-*.parquet shards: {given}")
        for path in shard_files:
            frame = _read_shard(path)
            text_columns = [c for c in frame.columns if c in ("positive", "text") or c in _negative_columns(frame.columns)]
            if not text_columns:
                raise ValueError(f"{path}: no positive, negative or text column to use as corpus")
            series += [frame.get_column(c).cast(pl.String).drop_nulls() for c in text_columns]
            files.append(path)
    return (pl.concat(series) if series else pl.Series("text", [], dtype=pl.String)), files


def _normalized(series: pl.Series) -> pl.Series:
    from pipeline.normalize import normalize_column

    frame = pl.DataFrame({"t": series.cast(pl.String)})
    return normalize_column(frame, "t").get_column("t")


def build_text_table(pairs: pl.DataFrame, extra: pl.Series) -> TextTable:
    """Normalize every text, number the distinct ones, map pairs and corpus onto them."""
    dropped = DropTally()
    negative_columns = _negative_columns(pairs.columns)
    pairs = pairs.with_columns(
        _normalized(pairs.get_column("anchor")).alias("_anchor_norm"),
        _normalized(pairs.get_column("positive")).alias("_positive_norm"),
    )
    empty = (pairs.get_column("_anchor_norm").fill_null("") == "") | (pairs.get_column("_positive_norm").fill_null("") == "")
    dropped.add("empty_anchor_or_positive", int(empty.sum()))
    pairs = pairs.filter(~empty)

    originals = [pairs.get_column("anchor"), pairs.get_column("positive")]
    normals = [pairs.get_column("_anchor_norm"), pairs.get_column("_positive_norm")]
    for name in negative_columns:
        column = pairs.get_column(name).drop_nulls()
        originals.append(column)
        normals.append(_normalized(column))
    if len(extra):
        originals.append(extra)
        normals.append(_normalized(extra))
    every = pl.DataFrame(
        {"norm": pl.concat([s.alias("n") for s in normals]), "orig": pl.concat([s.alias("o").cast(pl.String) for s in originals])}
    ).filter(pl.col("norm") != "")
    distinct = every.unique(subset="norm", keep="first", maintain_order=True).with_row_index("tid")
    distinct = distinct.with_columns(
        pl.col("tid").min().over(pl.col("norm").str.to_lowercase()).alias("group")
    )
    lookup = distinct.select("norm", "tid")
    pairs = (
        pairs.join(lookup.rename({"norm": "_anchor_norm", "tid": "anchor_tid"}), on="_anchor_norm", how="left", maintain_order="left")
        .join(lookup.rename({"norm": "_positive_norm", "tid": "positive_tid"}), on="_positive_norm", how="left", maintain_order="left")
        .drop("_anchor_norm", "_positive_norm")
    )
    corpus_norms = normals[1:]
    corpus = (
        pl.DataFrame({"norm": pl.concat([s.alias("n") for s in corpus_norms])})
        .unique()
        .join(lookup, on="norm", how="inner")
        .get_column("tid")
        .to_numpy()
    )
    return TextTable(
        texts=distinct.get_column("norm").to_list(),
        display=distinct.get_column("orig").to_list(),
        guard_group=distinct.get_column("group").to_numpy().astype(np.int64),
        pairs=pairs,
        corpus_tids=np.unique(corpus.astype(np.int64)),
        dropped=dropped.as_dict(),
    )


# --- step 2: embeddings ---------------------------------------------------------

EncoderBackend = Literal["auto", "numpy", "torch"]


class PlainEncoder:
    """A Transformer + mean/CLS pooling + Normalize sentence-transformers model run with
    plain ``transformers``: the same embeddings as ``SentenceTransformer.encode``, without
    importing sentence-transformers (about 300 MiB of resident memory saved).

    The torch backend's choice for such models (on a GPU, or with ``encoder="torch"``);
    :func:`load_mining_encoder` falls back to sentence-transformers for any other
    architecture (prompts, other pooling, extra modules).
    """

    backend = "torch"

    def __init__(self, folder: Path, transformer_dir: Path, pooling: str, max_seq_length: int, device: str) -> None:
        # transformers resolves its names lazily, and that is not thread-safe: two
        # mining tasks starting at once in a flow's worker threads can see a half-made
        # module ("cannot import name 'AutoModel'").
        from pipeline.models import HEAVY_IMPORT_LOCK

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


def resolve_encoder(model_path: Path, device: str | None = None, backend: str = "auto") -> tuple[str, str]:
    """The encoder backend and device a run uses, decided without importing torch.

    ``auto`` picks the numpy encoder (:mod:`pipeline.encoder_numpy`) on a CPU for plain
    BERT + mean/CLS Pooling (+ Normalize) models, and torch otherwise (another
    architecture, a visible GPU, or an explicit non-CPU ``device``).

    Returns:
        ``("numpy", "cpu")`` or ``("torch", device)``.

    Raises:
        ValueError: an unknown backend, or ``numpy`` asked for a model or device it cannot run.
    """
    from pipeline.encoder_numpy import gpu_visible, numpy_encoder_spec

    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"encoder backend must be auto, numpy or torch, got {backend!r}")
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"the numpy encoder runs on the CPU only, not on device {device!r}")
        if numpy_encoder_spec(model_path) is None:
            raise ValueError(
                f"{model_path}: the numpy encoder runs plain BERT + mean/CLS Pooling (+ Normalize) models with"
                " model.safetensors and tokenizer.json only; use the torch encoder"
            )
        return "numpy", "cpu"
    on_cpu = device == "cpu" or (device is None and not gpu_visible())
    if backend == "auto" and on_cpu and numpy_encoder_spec(model_path) is not None:
        return "numpy", "cpu"
    return "torch", device or ("cuda" if gpu_visible() else "cpu")


def embedding_cache_key(fingerprint: str, backend: str, device: str) -> str:
    """The embedding cache's key: the model fingerprint, the backend and the device kind.

    Backends (and CPU against GPU, and the numpy encoder's MKL and OpenBLAS products)
    agree to about 1e-7, not bit for bit; keeping their vectors apart keeps a run's
    output a function of its inputs, model, config and machine, never of which backend
    happened to fill the cache first.
    """
    import hashlib

    if backend == "numpy":
        from pipeline.encoder_numpy import gemm_kind

        backend = f"numpy-{gemm_kind()}"
    return hashlib.sha256(f"{fingerprint}|{backend}|{device.split(':', 1)[0]}".encode()).hexdigest()


def load_mining_encoder(model_path: Path, device: str | None = None, backend: str = "auto") -> Any:
    """An encoder with ``encode``, ``max_seq_length``, ``get_embedding_dimension`` and ``backend``.

    ``numpy`` (see :func:`resolve_encoder`) gives a
    :class:`~pipeline.encoder_numpy.NumpyBertEncoder`; ``torch`` runs a plain
    Transformer + Pooling + Normalize model on ``transformers`` alone
    (:class:`PlainEncoder`) and anything else through sentence-transformers.
    """
    from pipeline.encoder_numpy import (
        NumpyBertEncoder,
        numpy_encoder_spec,
        plain_stack_spec,
    )

    backend, device = resolve_encoder(model_path, device, backend)
    if backend == "numpy":
        return NumpyBertEncoder(numpy_encoder_spec(model_path))
    from pipeline.models import load_encoder

    stack = plain_stack_spec(model_path)
    if stack is None:
        model = load_encoder(model_path, device=device)
        model.backend = "torch"
        return model
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    transformer_dir, pooling, _normalize, max_len = stack
    return PlainEncoder(model_path, transformer_dir, pooling, max_len, device=device)


def encoder_dimension(model_path: Path, backend: str, encoder: Any | None) -> int:
    """The embedding width: from the BERT config for numpy, from the loaded encoder otherwise."""
    if backend == "numpy":
        from pipeline.encoder_numpy import numpy_encoder_spec

        spec = numpy_encoder_spec(model_path)
        return int(json.loads((spec.transformer_dir / "config.json").read_text(encoding="utf-8"))["hidden_size"])
    return int(encoder.get_embedding_dimension())


def token_lengths(model_path: Path, backend: str, encoder: Any | None, texts: list[str]) -> np.ndarray:
    """Tokens per text (truncated, special tokens included), with the backend's own tokenizer."""
    lengths = np.empty(len(texts), dtype=np.int64)
    if backend == "numpy":
        from pipeline.encoder_numpy import load_tokenizer, numpy_encoder_spec

        tokenizer = load_tokenizer(numpy_encoder_spec(model_path))
        for start in range(0, len(texts), 8192):
            encodings = tokenizer.encode_batch(texts[start : start + 8192], add_special_tokens=True)
            lengths[start : start + len(encodings)] = [len(e.ids) for e in encodings]
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
        from pipeline.encoder_numpy import encode_batches

        yield from encode_batches(encoder, batch_texts)
        return
    for texts in batch_texts:
        yield np.asarray(
            encoder.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False),
            dtype=np.float32,
        )


# --- step 3: the index and the search ---------------------------------------------


def _gather(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(embeddings[rows], dtype=np.float32)


def resolve_index_kind(config: MiningConfig, corpus_size: int) -> str:
    """The index a run uses: the configured one, or flat/IVF by corpus size for ``auto``."""
    if config.index != "auto":
        return config.index
    return "flat" if corpus_size < config.ivf_threshold else "ivf"


def _search_flat(embeddings, corpus_rows, query_rows, k, bar) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    dim = embeddings.shape[1]
    heap = faiss.ResultHeap(len(query_rows), k, keep_max=True)
    for c_start in range(0, len(corpus_rows), _CORPUS_BLOCK):
        block = _gather(embeddings, corpus_rows[c_start : c_start + _CORPUS_BLOCK])
        index = faiss.IndexFlatIP(dim)
        index.add(block)
        block_k = min(k, len(block))
        for q_start in range(0, len(query_rows), _QUERY_BLOCK):
            queries = _gather(embeddings, query_rows[q_start : q_start + _QUERY_BLOCK])
            scores, ids = index.search(queries, block_k)
            ids = np.where(ids >= 0, ids + c_start, -1)
            heap.add_result_subset(np.arange(q_start, q_start + len(queries), dtype=np.int64), scores, ids)
            bar.update(len(queries))
    heap.finalize()
    return heap.D, heap.I


def build_ivf_index(embeddings, corpus_rows: np.ndarray, config: MiningConfig, work_dir: Path):
    """An IVF-Flat inner-product index whose inverted lists live on disk (memory-mapped).

    Trained on a seeded sample of the corpus, filled block by block into partial
    indexes written to ``work_dir`` and merged into one on-disk list file, so the
    RAM used does not grow with the corpus.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    n, dim = len(corpus_rows), embeddings.shape[1]
    nlist = config.nlist or int(min(max(16, round(2 * np.sqrt(n))), 65_536))
    nlist = max(1, min(nlist, n))
    train_size = min(n, config.ivf_train_size or 40 * nlist)
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(n, size=train_size, replace=False))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = config.seed
    index.cp.niter = 10  # IVF needs coarse cells, not converged centroids
    index.train(_gather(embeddings, corpus_rows[sample]))
    trained_path = work_dir / "trained.index"
    faiss.write_index(index, str(trained_path))
    part_paths = []
    for start in range(0, n, _CORPUS_BLOCK):
        part = faiss.read_index(str(trained_path))
        block = _gather(embeddings, corpus_rows[start : start + _CORPUS_BLOCK])
        part.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
        path = work_dir / f"part-{len(part_paths):05d}.index"
        faiss.write_index(part, str(path))
        part_paths.append(str(path))
        del part
    index = faiss.read_index(str(trained_path))
    merge_ondisk(index, part_paths, str(work_dir / "lists.ivfdata"))
    for path in part_paths:
        os.unlink(path)
    index.nprobe = min(config.nprobe, nlist)
    return index


def _build_hnsw_index(embeddings, corpus_rows: np.ndarray, config: MiningConfig):
    import faiss

    index = faiss.IndexHNSWFlat(embeddings.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    for start in range(0, len(corpus_rows), _CORPUS_BLOCK):
        index.add(_gather(embeddings, corpus_rows[start : start + _CORPUS_BLOCK]))
    index.hnsw.efSearch = max(config.hnsw_ef_search, 1)
    return index


class _NoBar:
    def update(self, _n: int) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar, or a silent stand-in that does not import tqdm (tqdm.auto pulls in asyncio)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="query")


def search_candidates(
    embeddings: np.ndarray,
    corpus_rows: np.ndarray,
    query_rows: np.ndarray,
    k: int,
    config: MiningConfig,
    work_dir: Path,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The ``k`` best corpus positions for each query row, best first.

    Returns:
        scores (nq, k) float32 and corpus positions (nq, k) int64 (-1 where fewer
        than ``k`` exist), and a description of the index used.
    """
    kind = resolve_index_kind(config, len(corpus_rows))
    k_eff = max(1, min(k, len(corpus_rows)))
    info: dict[str, Any] = {"kind": kind, "corpus_size": len(corpus_rows), "k": int(k)}
    if kind == "flat":
        passes = -(-len(corpus_rows) // _CORPUS_BLOCK)
        with _progress_bar(len(query_rows) * passes, "searching (exact)", progress) as bar:
            scores, ids = _search_flat(embeddings, corpus_rows, query_rows, k_eff, bar)
    else:
        index = build_ivf_index(embeddings, corpus_rows, config, work_dir) if kind == "ivf" else _build_hnsw_index(
            embeddings, corpus_rows, config
        )
        if kind == "ivf":
            info.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
        else:
            info.update(hnsw_m=config.hnsw_m, ef_search=config.hnsw_ef_search)
        scores = np.empty((len(query_rows), k_eff), dtype=np.float32)
        ids = np.empty((len(query_rows), k_eff), dtype=np.int64)
        with _progress_bar(len(query_rows), f"searching ({kind})", progress) as bar:
            for start in range(0, len(query_rows), _QUERY_BLOCK):
                queries = _gather(embeddings, query_rows[start : start + _QUERY_BLOCK])
                scores[start : start + len(queries)], ids[start : start + len(queries)] = index.search(queries, k_eff)
                bar.update(len(queries))
        del index
    if k_eff < k:
        scores = np.concatenate([scores, np.full((len(scores), k - k_eff), -np.inf, dtype=np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((len(ids), k - k_eff), -1, dtype=np.int64)], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    return scores, ids, info


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
        self, cache_key: str, anchor_keys: np.ndarray, corpus_keys: np.ndarray, k: int, config: MiningConfig, vectors_sha256: str
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
        from pipeline.embedding_cache import _atomic_save_npy

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


# --- step 4: selection -------------------------------------------------------------


SKIP_RULES = (
    "is_positive",
    "equals_anchor",
    "equals_positive",
    "absolute_margin",
    "relative_margin",
    "max_score",
    "min_score",
    "range_min",
)


@dataclass
class Selection:
    """Chosen negatives per anchor, best first.

    Attributes:
        tids: (n_anchors, num_negatives) text ids, -1 where none was found.
        scores: (n_anchors, num_negatives) anchor-negative scores (-inf where none).
        counts: (n_anchors,) negatives found per anchor.
        skipped: candidates skipped, by rule (each counted under the first rule that fired).
        candidates: candidates retrieved (excluding padding).
        beyond_range_max: surviving candidates left out by ``range_max``.
    """

    tids: np.ndarray
    scores: np.ndarray
    counts: np.ndarray
    skipped: dict[str, int]
    candidates: int
    beyond_range_max: int


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def select_negatives(
    candidate_tids: np.ndarray,
    candidate_scores: np.ndarray,
    anchor_tids: np.ndarray,
    pair_anchor: np.ndarray,
    pair_positive_tids: np.ndarray,
    pair_positive_scores: np.ndarray,
    guard_group: np.ndarray,
    config: MiningConfig,
    range_max: int,
    text_seeds: np.ndarray | None = None,
) -> Selection:
    """Pick negatives for each distinct anchor from its ranked candidates.

    Args:
        candidate_tids: (n_anchors, K) candidate text ids, best first, -1 for padding.
        candidate_scores: (n_anchors, K) their scores (float32).
        anchor_tids: (n_anchors,) the text id of each anchor.
        pair_anchor: (n_pairs,) the anchor index of each pair.
        pair_positive_tids: (n_pairs,) the positive's text id of each pair.
        pair_positive_scores: (n_pairs,) the anchor-positive score of each pair.
        guard_group: (n_texts,) group ids of texts equal after normalization and case folding.
        config: the selection settings.
        range_max: the resolved ``range_max``.
        text_seeds: (n_texts,) uint64 per-text values for ``random`` sampling (text hashes),
            so a choice depends on the texts, not on row order.

    Returns:
        The :class:`Selection`.
    """
    n_anchors = candidate_tids.shape[0]
    scores = candidate_scores.astype(np.float32, copy=True)
    valid = candidate_tids >= 0
    safe_tids = np.where(valid, candidate_tids, 0)
    anchor_index = np.arange(n_anchors, dtype=np.int64)[:, None]

    n_texts = np.int64(len(guard_group))
    pos_codes = np.unique(pair_anchor.astype(np.int64) * n_texts + pair_positive_tids)
    is_positive = np.isin(anchor_index * n_texts + safe_tids, pos_codes)
    cand_group = guard_group[safe_tids]
    equals_anchor = cand_group == guard_group[anchor_tids][:, None]
    group_codes = np.unique(pair_anchor.astype(np.int64) * n_texts + guard_group[pair_positive_tids])
    equals_positive = np.isin(anchor_index * n_texts + cand_group, group_codes)

    # sentence-transformers measures margins against the anchor's lowest positive score.
    lowest_positive = np.full(n_anchors, np.inf, dtype=np.float32)
    np.minimum.at(lowest_positive, pair_anchor, pair_positive_scores.astype(np.float32))
    lowest = lowest_positive[:, None]
    rules: list[tuple[str, np.ndarray]] = [
        ("is_positive", is_positive),
        ("equals_anchor", equals_anchor),
        ("equals_positive", equals_positive),
    ]
    if config.absolute_margin is not None:
        rules.append(("absolute_margin", scores + np.float32(config.absolute_margin) > lowest))
    if config.relative_margin is not None:
        threshold = lowest - np.abs(lowest) * np.float32(config.relative_margin)
        rules.append(("relative_margin", scores > threshold))
    if config.max_score is not None:
        rules.append(("max_score", scores > np.float32(config.max_score)))
    if config.min_score is not None:
        rules.append(("min_score", scores < np.float32(config.min_score)))

    alive = valid.copy()
    skipped = {name: 0 for name in SKIP_RULES}
    for name, mask in rules:
        hit = alive & mask
        skipped[name] = int(hit.sum())
        alive &= ~mask

    # Candidates arrive sorted by score; ranks count survivors only, as in sentence-transformers.
    rank = np.cumsum(alive, axis=1) - 1
    skipped["range_min"] = int((alive & (rank < config.range_min)).sum())
    beyond = int((alive & (rank >= range_max)).sum())
    options = alive & (rank >= config.range_min) & (rank < range_max)

    k = config.num_negatives
    if config.sampling_strategy == "random":
        seeds = text_seeds if text_seeds is not None else np.arange(len(guard_group), dtype=np.uint64)
        anchor_seed = _mix64(seeds[anchor_tids] ^ _mix64(np.full(n_anchors, config.seed, dtype=np.uint64)))
        priority = _mix64(anchor_seed[:, None] ^ seeds[safe_tids])
        priority = np.where(options, priority, np.iinfo(np.uint64).max)
        picked_cols = np.argsort(priority, axis=1, kind="stable")[:, :k]
        picked = np.zeros_like(options)
        np.put_along_axis(picked, picked_cols, True, axis=1)
        picked &= options
    else:
        picked = options & (np.cumsum(options, axis=1) <= k)

    counts = picked.sum(axis=1)
    # Column order is score order: the picked columns, left to right, best first.
    cols = np.argsort(~picked, axis=1, kind="stable")[:, :k]
    if cols.shape[1] < k:
        pad = np.zeros((n_anchors, k - cols.shape[1]), dtype=cols.dtype)
        cols = np.concatenate([cols, pad], axis=1)
    filled = np.arange(k)[None, :] < counts[:, None]
    tids = np.where(filled, np.take_along_axis(candidate_tids, cols, axis=1), -1)
    chosen_scores = np.where(filled, np.take_along_axis(scores, cols, axis=1), -np.inf).astype(np.float32)
    return Selection(
        tids=tids.astype(np.int64),
        scores=chosen_scores,
        counts=counts.astype(np.int64),
        skipped=skipped,
        candidates=int(valid.sum()),
        beyond_range_max=beyond,
    )


# --- step 5: output ---------------------------------------------------------------


def output_schema(num_negatives: int, output_format: OutputFormat) -> pa.Schema:
    """The Arrow schema of mined shards: ``negative``, or ``negative_1..k`` for n-tuples."""
    from pipeline.records import arrow_schema

    if output_format == "triplet" or num_negatives == 1:
        return arrow_schema(True)
    base = arrow_schema(False)
    negatives = [pa.field(f"negative_{i}", pa.string(), nullable=False) for i in range(1, num_negatives + 1)]
    return pa.schema(list(base)[:2] + negatives + list(base)[2:])


def _histogram(values: np.ndarray) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    counts, _ = np.histogram(np.clip(values, -1.0, 1.0), bins=HISTOGRAM_BINS)
    summary: dict[str, Any] = {"count": len(values), "bins": [round(float(b), 2) for b in HISTOGRAM_BINS]}
    summary["counts"] = [int(c) for c in counts]
    if len(values):
        quantiles = np.quantile(values.astype(np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
        summary.update(
            mean=round(float(values.astype(np.float64).mean()), 6),
            min=round(float(quantiles[0]), 6), p25=round(float(quantiles[1]), 6), median=round(float(quantiles[2]), 6),
            p75=round(float(quantiles[3]), 6), max=round(float(quantiles[4]), 6),
        )
    return summary


def _write_output(
    out_dir: Path,
    table: TextTable,
    selection: Selection,
    config: MiningConfig,
    dropped: DropTally,
) -> tuple[list[dict[str, Any]], int, np.ndarray]:
    """Write the mined rows; returns shard entries, rows written and the written negative scores."""
    pairs = table.pairs
    k = config.num_negatives
    schema = output_schema(k, config.output_format)
    pair_anchor = pairs.get_column("_anchor_index").to_numpy()
    counts = selection.counts[pair_anchor]
    display = table.display
    written_scores: list[np.ndarray] = []
    with ShardWriter(out_dir, schema, rows_per_shard=config.rows_per_shard) as writer:
        if config.output_format == "triplet":
            dropped.add("no_negative_in_range", int((k - counts).sum()))
            for start in range(0, len(pairs), 65_536):
                block = pairs.slice(start, 65_536)
                anchors = pair_anchor[start : start + len(block)]
                neg_tids = selection.tids[anchors]
                neg_scores = selection.scores[anchors]
                row_idx, slot = np.nonzero(neg_tids >= 0)
                ids = block.get_column("id").to_list()
                suffix = k > 1
                columns = {
                    "anchor": block.get_column("anchor").gather(row_idx),
                    "positive": block.get_column("positive").gather(row_idx),
                    "negative": pl.Series([display[t] for t in neg_tids[row_idx, slot]], dtype=pl.String),
                    "id": pl.Series([f"{ids[r]}#{s + 1}" if suffix else ids[r] for r, s in zip(row_idx, slot)], dtype=pl.String),
                    "source_file": block.get_column("source_file").gather(row_idx),
                    "source_line": block.get_column("source_line").gather(row_idx),
                }
                writer.write(pl.DataFrame(columns))
                written_scores.append(neg_scores[row_idx, slot])
        else:
            full = counts == k
            dropped.add("no_negative_in_range", int((counts == 0).sum()))
            dropped.add("too_few_negatives", int(((counts > 0) & ~full).sum()))
            for start in range(0, len(pairs), 65_536):
                block = pairs.slice(start, 65_536)
                keep = full[start : start + len(block)]
                rows = np.flatnonzero(keep)
                anchors = pair_anchor[start : start + len(block)][rows]
                neg_tids = selection.tids[anchors]
                columns = {"anchor": block.get_column("anchor").gather(rows), "positive": block.get_column("positive").gather(rows)}
                names = ["negative"] if k == 1 else [f"negative_{i}" for i in range(1, k + 1)]
                for slot, name in enumerate(names):
                    columns[name] = pl.Series([display[t] for t in neg_tids[:, slot]], dtype=pl.String)
                for name in ("id", "source_file", "source_line"):
                    columns[name] = block.get_column(name).gather(rows)
                writer.write(pl.DataFrame(columns))
                written_scores.append(selection.scores[anchors].ravel())
    shards = [s.as_dict() for s in writer.shards]
    scores = np.concatenate(written_scores) if written_scores else np.empty(0, dtype=np.float32)
    return shards, writer.rows, scores


# --- the whole step ----------------------------------------------------------------


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


_PLAN_TEXTS = "encode-plan.parquet"
_PLAN_BATCHES = "encode-batches.npy"
_EMBEDDINGS = "embeddings.npy"


@dataclass(frozen=True)
class MiningJob:
    """One dataset's mining run between its steps: small, picklable, passed between tasks.

    :func:`prepare_mining` makes it (and the work folder ``<out_dir>/.mine-work``
    holding the embedding memmap and the encoding plan), :func:`encode_slice` encodes
    one slice of the plan into the shared embedding cache (any process, any machine
    that sees ``out_dir`` and ``cache_dir``), :func:`finish_mining` searches, selects
    and writes. The plan is cut into batches before it is cut into slices, so every
    text is encoded in the same batch however many slices or workers share the work.

    Attributes:
        dataset_dir, out_dir, cache_dir: absolute folders.
        config: the mining settings.
        backend, device: the encoder (see :func:`resolve_encoder`).
        cache_key: the embedding cache's key (:func:`embedding_cache_key`).
        dim: the embedding width.
        slices: ``(first row, end row)`` ranges of the encoding plan, whole batches each.
        cached: texts already in the cache when the job was prepared.
        to_encode: texts the slices encode.
        rows_read: training rows read (before the empty-text drop).
        resolved, resolved_hash, inputs, source_manifest: what the manifest records.
        skipped_manifest: the existing manifest when the output is already up to date.
    """

    dataset_dir: str
    out_dir: str
    config: MiningConfig
    cache_dir: str
    backend: str = "numpy"
    device: str = "cpu"
    cache_key: str = ""
    dim: int = 0
    slices: tuple[tuple[int, int], ...] = ()
    cached: int = 0
    to_encode: int = 0
    rows_read: int = 0
    resolved: dict[str, Any] = field(default_factory=dict)
    resolved_hash: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    source_manifest: dict[str, Any] = field(default_factory=dict)
    skipped_manifest: dict[str, Any] | None = None

    @property
    def work_dir(self) -> Path:
        """The run's scratch folder (removed by :func:`finish_mining`)."""
        return Path(self.out_dir) / _WORK_DIR

    @property
    def model_path(self) -> Path:
        from pipeline.models import resolve_model_path

        return resolve_model_path(self.config.model)


def _checked_folders(dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {dataset_dir}")
    source_manifest = read_manifest(dataset_dir)
    if source_manifest is None:
        raise ValueError(f"{dataset_dir / MANIFEST_NAME}: missing; the dataset folder is incomplete (rerun its stage)")
    if _same_path(out_dir, dataset_dir) or dataset_dir.resolve() in out_dir.resolve().parents:
        raise ValueError(f"--out {out_dir} must not be the input dataset folder or inside it")
    if out_dir.resolve() in dataset_dir.resolve().parents:
        raise ValueError(f"--out {out_dir} must not contain the input dataset folder {dataset_dir}")
    return source_manifest


def _read_table(dataset_dir: Path, config: MiningConfig) -> tuple[TextTable, int]:
    pairs, _ = read_pairs(dataset_dir)
    extra, _ = read_extra_corpus(config.extra_corpus)
    table = build_text_table(pairs, extra)
    return table, len(pairs)


def _prepare(
    dataset_dir: Path,
    out_dir: Path,
    config: MiningConfig,
    cache_dir: Path | None,
    device: str | None,
    encoder_backend: str,
    force: bool,
    n_slices: int,
    echo: Echo | None,
) -> tuple[MiningJob, TextTable | None, Any | None]:
    """The job, the text table and the encoder when one had to be loaded to plan."""
    from pipeline.models import cached_model_fingerprint, resolve_model_path

    dataset_dir, out_dir = Path(dataset_dir).resolve(), Path(out_dir).resolve()
    source_manifest = _checked_folders(dataset_dir, out_dir)
    cache_root = Path(cache_dir).resolve() if cache_dir else default_cache_dir()

    # 1. inputs, config and the skip check
    model_path = resolve_model_path(config.model)
    fingerprint = cached_model_fingerprint(model_path, cache_root / "fingerprints")
    pairs, train_files = read_pairs(dataset_dir)
    extra, extra_files = read_extra_corpus(config.extra_corpus)
    if len(pairs) == 0:
        raise ValueError(f"{dataset_dir}: no training pairs to mine (no rows in part-*.parquet); nothing to do")
    resolved = {
        **asdict(config),
        "extra_corpus": list(config.extra_corpus),
        "model_fingerprint": fingerprint,
        "source_config_hash": source_manifest.get("config_hash"),
    }
    resolved_hash = config_hash(resolved)
    # Paths relative to the output's parent (the corpus root): a corpus moved or rebuilt
    # elsewhere keeps byte-identical manifests.
    corpus_root = out_dir.parent
    inputs = [
        {**entry, "path": os.path.relpath(Path(entry["path"]).resolve(), corpus_root)}
        for entry in input_entries(train_files + extra_files)
    ]
    job = MiningJob(
        dataset_dir=str(dataset_dir), out_dir=str(out_dir), config=config, cache_dir=str(cache_root),
        rows_read=len(pairs), resolved=resolved, resolved_hash=resolved_hash, inputs=inputs, source_manifest=source_manifest,
    )
    existing = read_manifest(out_dir)
    if (
        not force
        and existing is not None
        and existing.get("stage") == "mine"
        and existing.get("config_hash") == resolved_hash
        and existing.get("inputs") == inputs
        and shards_intact(out_dir, existing)
    ):
        if echo is not None:
            echo(f"skipped: {out_dir} already holds this mining run (config {resolved_hash[:12]}); use --force to redo it")
        return replace(job, skipped_manifest=existing), None, None

    table = build_text_table(pairs, extra)
    del pairs, extra
    if len(table.pairs) == 0:
        raise ValueError(f"{dataset_dir}: every pair has an empty anchor or positive after normalization; nothing to mine")
    if echo is not None:
        echo(f"{len(table.pairs):,} pairs, {len(table.texts):,} distinct texts, corpus of {len(table.corpus_tids):,}")

    # 2a. what the cache holds, straight into the run's embedding memmap; a plan for the rest
    backend, device = resolve_encoder(model_path, device, encoder_backend)
    cache_key = embedding_cache_key(fingerprint, backend, device)
    cache = EmbeddingCache(cache_root, cache_key)
    encoder = None
    if not cache.exists and backend != "numpy":
        encoder = load_mining_encoder(model_path, device, backend)
    dim = cache.dim if cache.exists else encoder_dimension(model_path, backend, encoder)
    work_dir = job.work_dir
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    embeddings = np.lib.format.open_memmap(work_dir / _EMBEDDINGS, mode="w+", dtype=np.float32, shape=(len(table.texts), dim))
    found = cache.read_into(text_keys(table.texts), embeddings, np.arange(len(table.texts)))
    embeddings.flush()
    del embeddings
    missing = np.flatnonzero(~found)
    slices: list[tuple[int, int]] = []
    if len(missing):
        missing_texts = [table.texts[i] for i in missing]
        if encoder is None and backend != "numpy":
            encoder = load_mining_encoder(model_path, device, backend)
        lengths = token_lengths(model_path, backend, encoder, missing_texts)
        release_free_memory()  # the tokenizer's encodings of every text, freed
        order, offsets = plan_encoding(lengths, config.batch_size)
        rows = missing[order]
        pl.DataFrame({"tid": rows, "text": [table.texts[i] for i in rows]}).write_parquet(work_dir / _PLAN_TEXTS)
        np.save(work_dir / _PLAN_BATCHES, offsets, allow_pickle=False)
        sizes = np.diff(offsets)
        padded = sizes * lengths[order[offsets[:-1]]]
        slices = split_plan(offsets, padded, n_slices)
    job = replace(
        job, backend=backend, device=device, cache_key=cache_key, dim=int(dim), slices=tuple(slices),
        cached=int(found.sum()), to_encode=len(missing),
    )
    return job, table, encoder


def prepare_mining(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: MiningConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    encoder_backend: EncoderBackend = "auto",
    force: bool = False,
    n_slices: int = 1,
    echo: Echo | None = print,
) -> MiningJob:
    """Step one of a mining run split over workers: check, read, plan the encoding.

    Reads the pairs and the extra corpus, decides whether the output is already up to
    date (``job.skipped_manifest``), copies every cached embedding into the work
    folder and plans the encoding of the rest, cut into at most ``n_slices`` slices
    for :func:`encode_slice`. Then :func:`finish_mining`. :func:`mine_negatives` runs
    the same three steps in one process; the output is byte-identical.

    Raises:
        The errors of :func:`mine_negatives`.
    """
    job, _, _ = _prepare(
        Path(dataset_dir), Path(out_dir), config, Path(cache_dir) if cache_dir else None, device, encoder_backend, force,
        n_slices, echo,
    )
    return job


def encode_slice(job: MiningJob, slice_index: int, echo: Echo | None = None, encoder: Any | None = None) -> dict[str, Any]:
    """Encode slice ``slice_index`` of a job's plan into the shared embedding cache.

    Any process may run any slice, in any order, at the same time as others: each
    writes its own cache segments (atomic files named by content). Runs in a Dask
    worker, one slice per task (one worker per GPU where there are GPUs).

    Args:
        job: from :func:`prepare_mining`.
        slice_index: which of ``job.slices``.
        echo: where the rate line goes (None for silence).
        encoder: an already loaded encoder of the job's backend (else loaded here).

    Returns:
        ``{"slice", "texts", "seconds"}``.
    """
    first, end = job.slices[slice_index]
    work_dir = job.work_dir
    offsets = np.load(work_dir / _PLAN_BATCHES, allow_pickle=False)
    plan = pl.scan_parquet(work_dir / _PLAN_TEXTS).slice(first, end - first).collect()
    texts = plan.get_column("text").to_list()
    bounds = offsets[(offsets >= first) & (offsets <= end)] - first
    if encoder is None:
        encoder = load_mining_encoder(job.model_path, job.device, job.backend)
    cache = EmbeddingCache(job.cache_dir, job.cache_key, job.dim)
    keys = text_keys(texts)
    started = time.perf_counter()
    pending: list[np.ndarray] = []
    pending_start = 0
    done = 0
    batch_texts = (texts[a:b] for a, b in pairwise(bounds))
    for vectors in encode_in_batches(encoder, batch_texts):
        pending.append(vectors)
        done += len(vectors)
        if done - pending_start >= _CACHE_FLUSH:
            cache.append(keys[pending_start:done], np.concatenate(pending))
            pending, pending_start = [], done
    if pending:
        cache.append(keys[pending_start:done], np.concatenate(pending))
    elapsed = time.perf_counter() - started
    if echo is not None:
        echo(f"slice {slice_index}: encoded {done:,} texts in {elapsed:.1f}s ({done / max(elapsed, 1e-9):,.0f} texts/s, {job.backend})")
    return {"slice": slice_index, "texts": done, "seconds": elapsed}


def finish_mining(job: MiningJob, echo: Echo | None = print, table: TextTable | None = None) -> dict[str, Any]:
    """Last step: gather the slices' embeddings, search once, select, write shards and manifest.

    Texts a slice did not deliver (a lost worker, a corrupt cache entry) are encoded
    here, with the same batch plan. The work folder is removed at the end.

    Returns:
        The manifest written (with ``embedding_counts`` added to the returned dict);
        for a skipped job, the existing manifest with ``skipped`` added.
    """
    if job.skipped_manifest is not None:
        return {**job.skipped_manifest, "skipped": True}
    config = job.config
    out_dir, dataset_dir, work_dir = Path(job.out_dir), Path(job.dataset_dir), job.work_dir
    try:
        if table is None:
            table, _ = _read_table(dataset_dir, config)
        embeddings = np.load(work_dir / _EMBEDDINGS, mmap_mode="r+", allow_pickle=False)
        # 2b. the slices' embeddings, from the cache
        if job.to_encode:
            plan_tids = pl.read_parquet(work_dir / _PLAN_TEXTS, columns=["tid"]).get_column("tid").to_numpy().astype(np.int64)
            cache = EmbeddingCache(job.cache_dir, job.cache_key, job.dim)
            found = cache.read_into(text_keys([table.texts[i] for i in plan_tids]), embeddings, plan_tids)
            if not found.all():
                lost = plan_tids[~found]
                if echo is not None:
                    echo(f"{len(lost):,} texts of the encoding plan are not in the cache; encoding them here")
                encoder = load_mining_encoder(job.model_path, job.device, job.backend)
                lost_texts = [table.texts[i] for i in lost]
                order, offsets = plan_encoding(token_lengths(job.model_path, job.backend, encoder, lost_texts), config.batch_size)
                batch_texts = ([lost_texts[i] for i in order[a:b]] for a, b in pairwise(offsets))
                vectors = np.concatenate(list(encode_in_batches(encoder, batch_texts)))
                embeddings[lost[order]] = vectors
                cache.append(text_keys([lost_texts[i] for i in order]), vectors)
                del encoder
        embeddings.flush()
        embed_counts = {"texts": len(table.texts), "cached": job.cached, "encoded": job.to_encode}

        # 3. distinct anchors, positive scores, one search
        anchor_tid_per_pair = table.pairs.get_column("anchor_tid").to_numpy().astype(np.int64)
        positive_tid_per_pair = table.pairs.get_column("positive_tid").to_numpy().astype(np.int64)
        anchor_tids, pair_anchor = np.unique(anchor_tid_per_pair, return_inverse=True)
        table.pairs = table.pairs.with_columns(pl.Series("_anchor_index", pair_anchor))
        positive_scores = np.empty(len(pair_anchor), dtype=np.float32)
        for start in range(0, len(pair_anchor), 65_536):
            a = _gather(embeddings, anchor_tid_per_pair[start : start + 65_536])
            p = _gather(embeddings, positive_tid_per_pair[start : start + 65_536])
            positive_scores[start : start + len(a)] = np.einsum("ij,ij->i", a, p)
        positives_per_anchor = np.bincount(
            np.unique(pair_anchor.astype(np.int64) * len(table.texts) + positive_tid_per_pair) // len(table.texts),
            minlength=len(anchor_tids),
        )
        max_positives = int(positives_per_anchor.max())
        range_max = config.resolved_range_max(max_positives)
        if config.num_negatives > range_max - config.range_min:
            raise ValueError(f"range_max={range_max} leaves fewer than num_negatives={config.num_negatives} candidates")
        k = range_max + max_positives
        all_keys = text_keys(table.texts)
        searches = SearchCache(Path(job.cache_dir) / job.cache_key[:32] / "searches")
        search_key = searches.key(
            job.cache_key, all_keys[anchor_tids], all_keys[table.corpus_tids], k, config, embeddings_sha256(embeddings)
        )
        found_search = searches.load(search_key)
        if found_search is None:
            scores, positions, index_info = search_candidates(
                embeddings, table.corpus_tids, anchor_tids, k, config, work_dir, progress=echo is not None
            )
            searches.store(search_key, scores, positions, index_info)
        else:
            scores, positions, index_info = found_search
        candidate_tids = np.where(positions >= 0, table.corpus_tids[np.maximum(positions, 0)], -1)

        # 4. selection
        seeds = all_keys[:, 1]
        selection = select_negatives(
            candidate_tids, scores, anchor_tids, pair_anchor, positive_tid_per_pair, positive_scores,
            table.guard_group, config, range_max, text_seeds=seeds,
        )
        del embeddings

        # 5. output
        remove_stale_shards(out_dir)
        unit_slots = config.output_format == "triplet" and config.num_negatives > 1
        per_row = config.num_negatives if unit_slots else 1
        dropped = DropTally()
        dropped.update({reason: n * per_row for reason, n in table.dropped.items()})
        shards, rows_written, negative_scores = _write_output(out_dir, table, selection, config, dropped)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    source_manifest = job.source_manifest
    manifest = {
        "dataset": out_dir.name,
        "source": source_manifest.get("source"),
        "stage": "mine",
        "unit": "pair_negative_slot" if unit_slots else "pair",
        "rows_read": job.rows_read * per_row,
        "rows_kept": rows_written,
        "rows_train": rows_written,
        "rows_heldout": 0,
        "dropped": dropped.as_dict(),
        "columns": output_schema(config.num_negatives, config.output_format).names,
        "shards": shards,
        "inputs": job.inputs,
        "failures": [],
        "quarantine": {"path": None, "rows": 0},
        "mined_from": {
            "dataset": source_manifest.get("dataset"),
            "path": os.path.relpath(dataset_dir, out_dir.parent),
            "stage": source_manifest.get("stage"),
            "config_hash": source_manifest.get("config_hash"),
        },
        "mining": {
            "pairs": len(table.pairs),
            "anchors": len(anchor_tids),
            "distinct_texts": len(table.texts),
            "corpus_size": len(table.corpus_tids),
            "max_positives_per_anchor": max_positives,
            "range_max": int(range_max),
            "encoder": {"backend": job.backend, "device": job.device.split(":", 1)[0]},
            "index": index_info,
            "candidates_retrieved": selection.candidates,
            "candidates_skipped": selection.skipped,
            "candidates_beyond_range_max": selection.beyond_range_max,
            "anchors_short_of_negatives": int((selection.counts < config.num_negatives).sum()),
            "anchors_without_negative": int((selection.counts == 0).sum()),
            "positive_scores": _histogram(positive_scores),
            "negative_scores": _histogram(negative_scores),
        },
        "config": job.resolved,
        "config_hash": job.resolved_hash,
        "versions": library_versions("faiss-cpu", "sentence-transformers", "torch", "numpy"),
    }
    check_accounting(manifest)
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    if echo is not None:
        echo(
            f"embeddings: {embed_counts['cached']:,} from cache, {embed_counts['encoded']:,} encoded;"
            f" index {index_info['kind']} over {index_info['corpus_size']:,} texts"
        )
    return {**manifest, "embedding_counts": embed_counts}


def mine_negatives(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: MiningConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    force: bool = False,
    echo: Echo | None = print,
    encoder_backend: EncoderBackend = "auto",
) -> dict[str, Any]:
    """Mine hard negatives for a pair dataset and write a triplet dataset, in this process.

    The same steps as :func:`prepare_mining`, :func:`encode_slice` and
    :func:`finish_mining` run on a cluster, with the same output bytes.

    Args:
        dataset_dir: a complete dataset folder (with ``manifest.json``).
        out_dir: the output dataset folder (created; previous shards replaced).
        config: the mining settings.
        cache_dir: the embedding cache root; None for :func:`default_cache_dir`.
        device: the encoder's device; None: a GPU when one is visible, else the CPU.
        force: mine even when the output manifest already matches.
        echo: where progress lines go (None for silence).
        encoder_backend: ``auto`` (numpy on a CPU for plain BERT models, else torch),
            ``numpy`` or ``torch`` (see :func:`resolve_encoder`).

    Returns:
        The manifest written (or the existing one, when the step was skipped; then
        ``skipped`` is added to the returned dict, not to the file).

    Raises:
        FileNotFoundError: the dataset folder, a shard or the model is missing.
        ValueError: the dataset is incomplete, empty or malformed, or ``out_dir``
            would overwrite the input.
    """
    job, table, encoder = _prepare(
        Path(dataset_dir), Path(out_dir), config, Path(cache_dir) if cache_dir else None, device, encoder_backend, force, 1, echo
    )
    if job.skipped_manifest is None and job.slices:
        if encoder is None:
            encoder = load_mining_encoder(job.model_path, job.device, job.backend)
        for index in range(len(job.slices)):
            encode_slice(job, index, echo=echo, encoder=encoder)
    # The model's weights and buffers are not needed for the search: free them first,
    # and hand the freed heap back (glibc keeps it otherwise, and it would count in
    # the peak the index and the search add to).
    del encoder
    release_free_memory()
    return finish_mining(job, echo=echo, table=table)


# --- command line -----------------------------------------------------------------


def add_mine_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pairforge mine`` (sentence-transformers' names)."""
    parser.add_argument("dataset_dir", type=Path, help="a dataset folder with part-*.parquet shards and manifest.json")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--model", default=None, help="local sentence-transformers folder (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"embedding cache (default: {default_cache_dir()})")
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--range-min", type=int, default=0)
    parser.add_argument("--range-max", type=int, default=None)
    parser.add_argument("--max-score", type=float, default=None)
    parser.add_argument("--min-score", type=float, default=None)
    parser.add_argument("--absolute-margin", type=float, default=None)
    parser.add_argument("--relative-margin", type=float, default=None)
    parser.add_argument("--sampling-strategy", choices=("top", "random"), default="top")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-format", choices=("triplet", "n-tuple"), default="triplet")
    parser.add_argument("--index", choices=("auto", "flat", "ivf", "hnsw"), default="auto")
    parser.add_argument("--ivf-threshold", type=int, default=MiningConfig.ivf_threshold)
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--nprobe", type=int, default=MiningConfig.nprobe)
    parser.add_argument("--hnsw-m", type=int, default=MiningConfig.hnsw_m)
    parser.add_argument("--batch-size", type=int, default=MiningConfig.batch_size)
    parser.add_argument("--extra-corpus", nargs="*", default=[], help="dataset folders or Parquet files added to the corpus")
    parser.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD)
    parser.add_argument("--device", default=None, help="encoder device (default: cuda if a GPU is visible, else cpu)")
    parser.add_argument(
        "--encoder", choices=("auto", "numpy", "torch"), default="auto",
        help="encoder backend: auto runs plain BERT models in numpy on a CPU (less memory), others in torch",
    )
    parser.add_argument("--force", action="store_true", help="mine even if the output manifest already matches")


def mine_command(args: argparse.Namespace) -> int:
    """Run ``pairforge mine`` and print a summary; 0 on success."""
    config = MiningConfig(
        model=args.model,
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        max_score=args.max_score,
        min_score=args.min_score,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        sampling_strategy=args.sampling_strategy,
        seed=args.seed,
        output_format=args.output_format,
        index=args.index,
        ivf_threshold=args.ivf_threshold,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        batch_size=args.batch_size,
        extra_corpus=tuple(args.extra_corpus),
        rows_per_shard=args.rows_per_shard,
    )
    manifest = mine_negatives(
        args.dataset_dir, args.out, config, cache_dir=args.cache_dir, device=args.device, force=args.force,
        encoder_backend=args.encoder,
    )
    if manifest.get("skipped"):
        return 0
    stats = manifest["mining"]
    skipped = ", ".join(f"{k}={v:,}" for k, v in stats["candidates_skipped"].items() if v) or "none"
    dropped = ", ".join(f"{k}={v:,}" for k, v in manifest["dropped"].items()) or "none"
    print(
        f"mined {args.out}: {manifest['rows_kept']:,} rows written of {manifest['rows_read']:,} {manifest['unit']}s read;"
        f" dropped: {dropped}\n"
        f"  anchors {stats['anchors']:,}, short of negatives {stats['anchors_short_of_negatives']:,};"
        f" candidates skipped: {skipped}\n"
        f"  positive score mean {stats['positive_scores'].get('mean', float('nan')):.3f},"
        f" negative score mean {stats['negative_scores'].get('mean', float('nan')):.3f}",
        file=sys.stdout,
    )
    return 0
