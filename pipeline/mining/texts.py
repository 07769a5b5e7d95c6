"""Mining, step 1: a pair dataset's training shards in; the table of distinct texts out.

In: a dataset folder (its ``part-*.parquet`` shards; never ``heldout/``) and optional
extra corpus shards. Out: a :class:`TextTable`: every text normalized, each distinct
normalized text numbered once (anchors and corpus share one table, so a text is
encoded once), the pairs pointing at their anchor's and positive's text ids, the
candidate corpus's text ids, and the rows dropped while reading, by reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.corpus.manifest import DropTally
from pipeline.corpus.schema import PAIR_COLUMNS, negative_columns
from pipeline.corpus.shards import shard_paths


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


def read_pairs(dataset_dir: Path) -> tuple[pl.DataFrame, list[Path]]:
    """The training rows of a dataset folder (never ``heldout/``) and the shards read.

    Raises:
        ValueError: a shard lacks a required column or cannot be read.
    """
    paths = shard_paths(dataset_dir, "train")
    frames = []
    for path in paths:
        frame = _read_shard(path)
        missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (see docs/corpus-format.md)")
        keep = list(PAIR_COLUMNS) + negative_columns(frame.columns)
        frames.append(frame.select(keep))
    if not frames:
        return pl.DataFrame(schema={c: (pl.Int64 if c == "source_line" else pl.String) for c in PAIR_COLUMNS}), paths
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
            text_columns = [c for c in frame.columns if c in ("positive", "text") or c in negative_columns(frame.columns)]
            if not text_columns:
                raise ValueError(f"{path}: no positive, negative or text column to use as corpus")
            series += [frame.get_column(c).cast(pl.String).drop_nulls() for c in text_columns]
            files.append(path)
    return (pl.concat(series) if series else pl.Series("text", [], dtype=pl.String)), files


def _normalized(series: pl.Series) -> pl.Series:
    from pipeline.ingest.normalize import normalize_column

    frame = pl.DataFrame({"t": series.cast(pl.String)})
    return normalize_column(frame, "t").get_column("t")


def build_text_table(pairs: pl.DataFrame, extra: pl.Series) -> TextTable:
    """Normalize every text, number the distinct ones, map pairs and corpus onto them."""
    dropped = DropTally()
    negatives = negative_columns(pairs.columns)
    pairs = pairs.with_columns(
        _normalized(pairs.get_column("anchor")).alias("_anchor_norm"),
        _normalized(pairs.get_column("positive")).alias("_positive_norm"),
    )
    empty = (pairs.get_column("_anchor_norm").fill_null("") == "") | (pairs.get_column("_positive_norm").fill_null("") == "")
    dropped.add("empty_anchor_or_positive", int(empty.sum()))
    pairs = pairs.filter(~empty)

    originals = [pairs.get_column("anchor"), pairs.get_column("positive")]
    normals = [pairs.get_column("_anchor_norm"), pairs.get_column("_positive_norm")]
    for name in negatives:
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
