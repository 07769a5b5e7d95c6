"""Mining, step 5: the selection in; triplet shards, score histograms and the mined manifest out.

In: the :class:`~pipeline.mining.texts.TextTable`, the
:class:`~pipeline.mining.select.Selection` and the config. Out: shards of
``anchor, positive, negative`` (one row per pair and negative, ``triplet``) or
``anchor, positive, negative_1 .. negative_k`` (one row per pair, ``n-tuple``), the
scores and margins (positive score - negative score) of the negatives written, and
their histograms (:func:`score_histogram`) for the manifest's ``mining`` section and
the plot beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.corpus.manifest import DropTally
from pipeline.corpus.schema import arrow_schema
from pipeline.corpus.shards import ShardWriter
from pipeline.mining.config import MiningConfig, OutputFormat
from pipeline.mining.select import Selection
from pipeline.mining.texts import TextTable

HISTOGRAM_BINS = np.linspace(-1.0, 1.0, 41)


def output_schema(num_negatives: int, output_format: OutputFormat) -> pa.Schema:
    """The Arrow schema of mined shards: ``negative``, or ``negative_1..k`` for n-tuples."""
    return arrow_schema(1 if output_format == "triplet" else num_negatives)


def score_histogram(values: np.ndarray) -> dict[str, Any]:
    """40 bins over -1..1 (or, for scores beyond it, over whole numbers around them), counts and quantiles."""
    values = values[np.isfinite(values)]
    bins = HISTOGRAM_BINS
    if len(values) and (values.min() < -1.0 or values.max() > 1.0):  # a cross-encoder's logits
        bins = np.linspace(np.floor(min(values.min(), -1.0)), np.ceil(max(values.max(), 1.0)), 41)
    counts, _ = np.histogram(np.clip(values, bins[0], bins[-1]), bins=bins)
    summary: dict[str, Any] = {"count": len(values), "bins": [round(float(b), 2) for b in bins]}
    summary["counts"] = [int(c) for c in counts]
    if len(values):
        quantiles = np.quantile(values.astype(np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
        summary.update(
            mean=round(float(values.astype(np.float64).mean()), 6),
            min=round(float(quantiles[0]), 6), p25=round(float(quantiles[1]), 6), median=round(float(quantiles[2]), 6),
            p75=round(float(quantiles[3]), 6), max=round(float(quantiles[4]), 6),
        )
    return summary


def score_plot(stats: dict[str, Any], title: str) -> bytes:
    """PNG bytes of a ``mining`` section's histograms: positive scores, chosen-negative scores, margins."""
    from pipeline.plots import score_histograms_plot

    panels = {"positive scores": stats["positive_scores"], "chosen negative scores": stats["negative_scores"]}
    return score_histograms_plot(panels | {"margins (positive - negative)": stats["margins"]}, title)


def write_output(
    out_dir: Path,
    table: TextTable,
    selection: Selection,
    config: MiningConfig,
    dropped: DropTally,
    positive_scores: np.ndarray,
) -> tuple[list[dict[str, Any]], int, np.ndarray, np.ndarray]:
    """Write the mined rows; returns shard entries, rows written, and the written negatives' scores and margins."""
    pairs = table.pairs
    k = config.num_negatives
    schema = output_schema(k, config.output_format)
    pair_anchor = pairs.get_column("_anchor_index").to_numpy()
    counts = selection.counts[pair_anchor]
    display = table.display
    written_scores: list[np.ndarray] = []
    written_margins: list[np.ndarray] = []
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
                written_margins.append(positive_scores[start : start + len(block)][row_idx] - neg_scores[row_idx, slot])
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
                written_margins.append((positive_scores[start : start + len(block)][rows, None] - selection.scores[anchors]).ravel())
    shards = [s.as_dict() for s in writer.shards]
    none = np.empty(0, dtype=np.float32)
    scores = np.concatenate(written_scores) if written_scores else none
    margins = np.concatenate(written_margins) if written_margins else none
    return shards, writer.rows, scores, margins
