"""What decides which negatives are mined: :class:`MiningConfig`, saved in the mined manifest.

In: option values (sentence-transformers' names). Out: a frozen, validated config;
its fields, the model's fingerprint and the source dataset's config hash make the
mined manifest's resolved config and hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.corpus.shards import DEFAULT_ROWS_PER_SHARD
from pipeline.embed.index import IndexConfig, IndexKind

SamplingStrategy = Literal["top", "random"]
OutputFormat = Literal["triplet", "n-tuple"]


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
        relative_margin: keep a candidate only if ``score <= positive - |positive| * relative_margin``;
            the default 0.05 is NV-Retriever's TopK-PercPos (a negative scores below 95% of
            the positive: docs/mining.md, "The default"); None (``--relative-margin none``)
            takes the top candidates whatever their score.
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
    relative_margin: float | None = 0.05
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
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.index_config()  # validates the index settings
        object.__setattr__(self, "extra_corpus", tuple(str(p) for p in self.extra_corpus))

    def resolved_range_max(self, max_positives: int) -> int:
        """``range_max``, derived as sentence-transformers derives it when None."""
        if self.range_max is not None:
            return self.range_max
        filtered = self.absolute_margin is not None or self.relative_margin is not None or self.max_score is not None
        per_negative = 10 if filtered else 1
        return self.range_min + self.num_negatives * per_negative + max_positives

    def index_config(self) -> IndexConfig:
        """The FAISS index settings of this config."""
        return IndexConfig(
            index=self.index, ivf_threshold=self.ivf_threshold, nlist=self.nlist, nprobe=self.nprobe,
            ivf_train_size=self.ivf_train_size, hnsw_m=self.hnsw_m, hnsw_ef_search=self.hnsw_ef_search, seed=self.seed,
        )  # fmt: skip
