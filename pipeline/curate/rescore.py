"""Rescoring of negatives: a dataset folder with negatives in; the rows without likely false negatives out.

In: a dataset folder with a ``negative`` (or ``negative_1 .. negative_k``) column (a
mined dataset, or one ingested with negatives), a second model given as a folder (a
sentence-transformers ``CrossEncoder``, or a bi-encoder) and a :class:`RescoreConfig`.
Out: a dataset folder (:mod:`pipeline.curate.step`) without the rows holding a negative
that is no real negative; the manifest's ``rescoring`` section counts the negatives per
rule and holds the histograms of the rescoring model's positive scores, negative
scores and margins (also drawn into ``scores.png``).

Each negative is judged by these rules, in this order, and counted under the first
that fires:

1. ``equals_positive``: equal to the row's positive after normalization and case
   folding; ``near_duplicate``: the Jaccard similarity of their character 5-grams
   (the quantity MinHash estimates, computed exactly: each negative meets one
   positive) is at least ``near_duplicate_threshold``. Both drop the row as
   ``near_duplicate_of_positive``;
2. by the rescoring model (anchor, negative) against (anchor, positive), with
   sentence-transformers' ``mine_hard_negatives`` names and meanings: ``max_score``,
   ``absolute_margin`` (keep ``score <= positive - m``), ``relative_margin`` (keep
   ``score <= positive - |positive| * m``; 0.05 is NV-Retriever's TopK-PercPos 95 %).
   These drop the row as ``likely_false_negative``.

A row is one unit: a triplet row (one negative) goes with its negative; an n-tuple row
(``negative_1 .. negative_k``) is kept only when all its negatives pass (its columns
cannot hold fewer), dropped under its first failing negative's reason. A
CrossEncoder's scores are what its ``predict`` returns (after its activation: 0..1 for
the usual sigmoid); a bi-encoder's are cosine similarities through the embedding cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.corpus.manifest import SCORE_PLOT_NAME
from pipeline.corpus.schema import negative_columns
from pipeline.corpus.shards import DEFAULT_ROWS_PER_SHARD
from pipeline.curate.step import Echo, Verdict, distinct_texts, embed_rows, normalized, run_step

STAGE = "rescore"
SECTION = "rescoring"
RULES = ("equals_positive", "near_duplicate", "max_score", "absolute_margin", "relative_margin")
REASONS = {
    "equals_positive": "near_duplicate_of_positive",
    "near_duplicate": "near_duplicate_of_positive",
    "max_score": "likely_false_negative",
    "absolute_margin": "likely_false_negative",
    "relative_margin": "likely_false_negative",
}
ModelType = Literal["auto", "cross-encoder", "bi-encoder"]


@dataclass(frozen=True)
class RescoreConfig:
    """Which negatives the rescoring drops (saved in the manifest).

    Attributes:
        model: the rescoring model, a local folder: a sentence-transformers CrossEncoder or bi-encoder (required).
        model_type: auto (told by the folder's files), cross-encoder or bi-encoder.
        max_score: drop a negative the rescoring model scores above this.
        absolute_margin: drop a negative unless its score <= the positive's score - absolute_margin.
        relative_margin: drop a negative unless its score <= the positive's score - |positive's score| * relative_margin
            (0.05: NV-Retriever's TopK-PercPos 95%).
        near_duplicate_threshold: drop a negative whose character 5-gram Jaccard similarity with the positive is at
            least this; None: only negatives equal to the positive.
        batch_size: pairs (CrossEncoder) or texts (bi-encoder) per batch.
        rows_per_shard: the most rows an output shard holds.
    """

    model: str | None = None
    model_type: ModelType = "auto"
    max_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = 0.05
    near_duplicate_threshold: float | None = 0.8
    batch_size: int = 32
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD

    def __post_init__(self) -> None:
        if self.model_type not in ("auto", "cross-encoder", "bi-encoder"):
            raise ValueError(f"model_type must be auto, cross-encoder or bi-encoder, got {self.model_type!r}")
        threshold = self.near_duplicate_threshold
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"near_duplicate_threshold must be in (0, 1], got {threshold}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


SHINGLE = 5


def rescoring_model_type(folder: Path) -> str:
    """``cross-encoder`` or ``bi-encoder``, told by a sentence-transformers folder's files.

    Raises:
        ValueError: the folder is neither (the message says what was looked for).
    """
    st_config = folder / "config_sentence_transformers.json"
    if st_config.is_file() and json.loads(st_config.read_text(encoding="utf-8")).get("model_type") == "CrossEncoder":
        return "cross-encoder"
    if (folder / "modules.json").is_file():
        return "bi-encoder"
    hf_config = folder / "config.json"
    if hf_config.is_file():
        architectures = json.loads(hf_config.read_text(encoding="utf-8")).get("architectures") or []
        if any(str(a).endswith("ForSequenceClassification") for a in architectures):
            return "cross-encoder"
    raise ValueError(
        f"{folder}: neither a sentence-transformers CrossEncoder (config_sentence_transformers.json with model_type"
        " CrossEncoder, or a *ForSequenceClassification config.json) nor a bi-encoder (modules.json)"
    )


# --- 1. the text rules ---------------------------------------------------------------


def text_rule_hits(keys: list[str | None], positive_keys: list[str], threshold: float | None) -> np.ndarray:
    """0 for a negative that passes, 1 ``equals_positive``, 2 ``near_duplicate`` (by 5-gram Jaccard)."""
    from pipeline.ingest.dedup import jaccard, shingles

    hits = np.zeros(len(keys), dtype=np.int8)
    for i, (negative, positive) in enumerate(zip(keys, positive_keys)):
        if negative is None:
            continue
        if negative == positive:
            hits[i] = 1
        elif threshold is not None and jaccard(shingles(negative, SHINGLE), shingles(positive, SHINGLE)) >= threshold:
            hits[i] = 2
    return hits


# --- 2. the model's scores -----------------------------------------------------------


def cross_encoder_scores(model: Path, device: str | None, anchors: list[str], texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
    """The CrossEncoder's score of each (anchor, text), each distinct pair scored once."""
    from pipeline.embed.models import load_cross_encoder

    pairs = pl.DataFrame({"a": anchors, "t": texts})
    distinct = pairs.unique(maintain_order=True)
    if not len(distinct):
        return np.empty(0, dtype=np.float32)
    encoder = load_cross_encoder(model, device=device)
    scores = encoder.predict(
        list(distinct.iter_rows()), batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True
    )  # fmt: skip
    lookup = distinct.with_columns(pl.Series("s", np.asarray(scores, dtype=np.float32).reshape(-1)))
    return pairs.join(lookup, on=["a", "t"], how="left", maintain_order="left").get_column("s").to_numpy().astype(np.float32)


def bi_encoder_scores(embedder: Any, anchors: list[str], texts: list[str], work_dir: Path, progress: bool) -> np.ndarray:
    """Cosine similarity of each (anchor, text) by the bi-encoder, every distinct text embedded once (cached)."""
    distinct, index = distinct_texts(pl.Series([*anchors, *texts], dtype=pl.String))
    vectors = embed_rows(distinct, embedder, work_dir, progress)
    a, t = index[: len(anchors)], index[len(anchors) :]
    scores = np.empty(len(anchors), dtype=np.float32)
    for start in range(0, len(anchors), 65_536):
        block = slice(start, start + 65_536)
        scores[block] = np.einsum("ij,ij->i", np.asarray(vectors[a[block]]), np.asarray(vectors[t[block]]))
    return scores


def model_rule_hits(scores: np.ndarray, positive: np.ndarray, config: RescoreConfig) -> np.ndarray:
    """0 for a negative that passes, else 3 ``max_score``, 4 ``absolute_margin``, 5 ``relative_margin`` (first that fires)."""
    hits = np.zeros(len(scores), dtype=np.int8)
    rules = []
    if config.max_score is not None:
        rules.append((3, scores > np.float32(config.max_score)))
    if config.absolute_margin is not None:
        rules.append((4, scores > positive - np.float32(config.absolute_margin)))
    if config.relative_margin is not None:
        rules.append((5, scores > positive - np.abs(positive) * np.float32(config.relative_margin)))
    for code, fired in rules:
        hits[(hits == 0) & fired] = code
    return hits


# --- 3. the verdict ------------------------------------------------------------------


def judge_negatives(pairs: pl.DataFrame, config: RescoreConfig, model_type: str, score: Any) -> Verdict:
    """Judge every negative; drop the rows holding one that fails.

    ``score(anchors, texts)`` gives the rescoring model's score of each (anchor, text).
    """
    from pipeline.mining.output import score_histogram
    from pipeline.plots import score_histograms_plot

    columns = negative_columns(pairs.columns)
    if not columns:
        raise ValueError("rescoring needs negatives: the dataset has no negative column (mine it first)")
    n, k = len(pairs), len(columns)
    anchors = normalized(pairs.get_column("anchor")).to_list()
    positives = normalized(pairs.get_column("positive"))
    positive_keys = positives.str.to_lowercase().to_list()
    negatives = [normalized(pairs.get_column(c)) for c in columns]
    hits = np.stack([text_rule_hits(neg.str.to_lowercase().to_list(), positive_keys, config.near_duplicate_threshold)
                     for neg in negatives], axis=1)  # fmt: skip
    present = np.stack([neg.is_not_null().to_numpy() for neg in negatives], axis=1)

    # The model scores the positives and the negatives that passed the text rules.
    row, slot = np.nonzero(present & (hits == 0))
    negative_lists = [neg.to_list() for neg in negatives]
    texts = [negative_lists[s][r] for r, s in zip(row.tolist(), slot.tolist())]
    every = score([*anchors, *[anchors[r] for r in row.tolist()]], [*positives.to_list(), *texts])
    positive_scores, scores = every[:n], every[n:]
    hits[row, slot] = model_rule_hits(scores, positive_scores[row], config)
    negative_scores = np.full((n, k), np.nan, dtype=np.float32)
    negative_scores[row, slot] = scores

    failing = present & (hits > 0)
    first = np.where(failing.any(axis=1), np.argmax(failing, axis=1), -1)
    rule = np.where(first >= 0, hits[np.arange(n), np.maximum(first, 0)], 0)
    reasons = [REASONS[RULES[r - 1]] if r else None for r in rule]
    details = pl.DataFrame(
        {
            "negative_column": [columns[f] if f >= 0 else None for f in first],
            "rule": [RULES[r - 1] if r else None for r in rule],
            "negative_score": [
                None if f < 0 or np.isnan(negative_scores[i, f]) else round(float(negative_scores[i, f]), 6)
                for i, f in enumerate(first)
            ],
            "positive_score": [round(float(s), 6) if f >= 0 else None for s, f in zip(positive_scores, first)],
        },
        schema={"negative_column": pl.String, "rule": pl.String, "negative_score": pl.Float64, "positive_score": pl.Float64},
    )
    scored = ~np.isnan(negative_scores)
    section = {
        "model_type": model_type,
        "negatives": int(present.sum()),
        "negatives_dropped": {name: int(((hits == code + 1) & present).sum()) for code, name in enumerate(RULES)},
        "positive_scores": score_histogram(positive_scores),
        "negative_scores": score_histogram(negative_scores[scored]),
        "margins": score_histogram((positive_scores[:, None] - negative_scores)[scored]),
    }
    panels = {
        "positive scores": section["positive_scores"],
        "negative scores": section["negative_scores"],
        "margins (positive - negative)": section["margins"],
    }
    plot = score_histograms_plot(panels, f"rescored by the {model_type}")
    return Verdict(reasons=pl.Series("reason", reasons, dtype=pl.String), details=details, section=section, plot=plot)


def rescore_negatives(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: RescoreConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    encoder: str = "auto",
    force: bool = False,
    echo: Echo | None = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Score each negative with a second model and drop the rows holding likely false negatives.

    The arguments, what it returns and raises: as every model step's
    (:mod:`pipeline.curate.step`; ``encoder`` is a bi-encoder's backend); ``config``
    names the rescoring model and the rules. Also raises ValueError for no model
    named, a folder that is no model, or a dataset without negatives.

    Example::

        from pipeline.curate import RescoreConfig, rescore_negatives

        config = RescoreConfig(model="models/ms-marco-MiniLM-L6-v2", relative_margin=0.05)
        manifest = rescore_negatives("corpus/nli-pairs-mined", "corpus/nli-pairs-mined-rescored", config)
        print(manifest["rescoring"]["negatives_dropped"])
    """
    from pipeline.embed.cache import default_cache_dir
    from pipeline.embed.models import cached_model_fingerprint, resolve_model_path

    if not config.model:
        raise ValueError("rescoring needs the rescoring model's folder (--model): a CrossEncoder or a bi-encoder")
    model = resolve_model_path(config.model)
    model_type = rescoring_model_type(model) if config.model_type == "auto" else config.model_type
    cache_root = Path(cache_dir).resolve() if cache_dir else default_cache_dir()
    embedder = None
    if model_type == "bi-encoder":
        from pipeline.embed.embedder import Embedder

        embedder = Embedder(model, device, encoder, cache_root, config.batch_size)
    fingerprint = cached_model_fingerprint(model, cache_root / "fingerprints")
    extra = {"model_fingerprint": fingerprint, "model_type": model_type}

    def judge(pairs: pl.DataFrame, work_dir: Path) -> Verdict:
        if embedder is not None:
            return judge_negatives(pairs, config, model_type, lambda a, t: bi_encoder_scores(embedder, a, t, work_dir, progress))
        return judge_negatives(
            pairs, config, model_type, lambda a, t: cross_encoder_scores(model, device, a, t, config.batch_size, progress)
        )

    return run_step(STAGE, SECTION, dataset_dir, out_dir, config, judge, extra, force=force, echo=echo, plot_name=SCORE_PLOT_NAME)
