"""SPECTER: the citation-graph training format (``data.json`` + ``metadata.json``).

In: a SPECTER ``data.json`` (or a folder holding one), with ``metadata.json`` beside
it. ``data.json`` is ``{query_id: {paper_id: {"count": 5 | 1}}}``: count 5 = the query
cites the paper (a direct citation), count 1 = a paper cited by one of those
citations but not by the query (SPECTER's hard negatives). ``metadata.json`` maps a
paper id to ``{"title", "abstract", ...}``. Both are single JSON documents and are
read whole (they are small next to the papers' full text: the released training set
is a few hundred MB).

Out: one dataset, ``specter-triplets`` (unit: a direct-citation edge, one count-5
entry of ``data.json``): (query title, cited title, cited-by-cited title). Titles,
as the 1B-pairs project's ``specter_train_triples`` ("Title, related_title,
hard_negative") used them. Id = ``<query>-><cited>``; ``source_line`` = the entry's
1-based position among all entries of ``data.json`` in document order.

The negative is chosen deterministically among the query's count-1 papers that have
a title, in paper id order: the k-th direct citation of a query (in paper id order)
takes the (k mod n)-th of its n negatives, so the negatives rotate instead of one
paper serving every triplet of a query.

Drop reasons, the first that fires: ``duplicate_edge`` (the same edge in an earlier
input file), ``query_metadata_missing``, ``query_title_missing``,
``cited_metadata_missing``, ``cited_title_missing``, ``no_cited_by_cited_negative``.
Entries that cannot be read (a query whose value is not an object, an entry without
a count of 1 or 5) are quarantined and counted as lost units, since a bad entry may
have been a direct citation. Ids are matched per input: a paper's metadata is looked
up in the ``metadata.json`` beside its own ``data.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import polars as pl

from pipeline.ingest.sources import DatasetSpec
from pipeline.io.context import ReadContext
from pipeline.io.documents import read_json_document
from pipeline.io.errors import InputFileError, InputLayoutError

NAME = "specter"
# What a row of this source holds, for the error on a file with none (pipeline.ingest.stage).
FIELDS = "query id/cited paper id/count"
# A folder is an input of this source (check_input says what it must hold).
FOLDER_INPUTS = True
TRIPLETS = "specter-triplets"
DATA_NAME = "data.json"
METADATA_NAME = "metadata.json"
DIRECT_CITATION = 5
CITED_BY_CITED = 1
_STAGED_SCHEMA = {
    "query_id": pl.String,
    "paper_id": pl.String,
    "count": pl.Int64,
    "query_found": pl.Boolean,
    "query_title": pl.String,
    "paper_found": pl.Boolean,
    "paper_title": pl.String,
    "_line": pl.Int64,
}


@dataclass(frozen=True)
class Options:
    """SPECTER has no options of its own yet."""


def dataset_specs(inputs: list[Path], options: Options) -> list[DatasetSpec]:
    return [DatasetSpec(TRIPLETS, unit="citation edge", with_negative=True)]


def _data_file(path: Path) -> Path:
    return path / DATA_NAME if path.is_dir() else path


def companion_files(path: Path) -> list[Path]:
    """The files one input consists of: ``data.json`` and the ``metadata.json`` beside it.

    Raises:
        InputLayoutError: either file is missing.
    """
    data = _data_file(path)
    files = [data, data.with_name(METADATA_NAME)]
    for file in files:
        if not file.is_file():
            raise InputLayoutError(
                f"{path}: the SPECTER layout needs {file.name} (looked for {file}): expected data.json with metadata.json"
                " beside it, or their folder"
            )
    return files


def check_input(path: Path) -> None:
    """Raise :class:`InputLayoutError` unless ``path`` is a SPECTER input (see :func:`companion_files`)."""
    companion_files(path)


def _title(metadata: dict[str, Any], paper_id: str) -> tuple[bool, str | None]:
    """Whether ``paper_id`` has metadata, and its title when it is a string."""
    entry = metadata.get(paper_id)
    if not isinstance(entry, dict):
        return False, None
    title = entry.get("title")
    return True, title if isinstance(title, str) else None


def stage_file(path: Path, ctx: ReadContext, options: Options) -> Iterator[pl.DataFrame]:
    """Yield one row per readable entry of ``data.json``, with both papers' titles looked up.

    Raises:
        InputFileError: a file is missing, is not JSON, or is not a JSON object at the top.
    """
    data_path, metadata_path = companion_files(path)
    graph = read_json_document(data_path)
    metadata = read_json_document(metadata_path)
    for file, document in ((data_path, graph), (metadata_path, metadata)):
        if not isinstance(document, dict):
            raise InputFileError(f"{file}: expected a JSON object at the top, found {type(document).__name__}")
    columns: dict[str, list[Any]] = {name: [] for name in _STAGED_SCHEMA}
    record = 0
    for query_id, entries in graph.items():
        if not isinstance(entries, dict):
            record += 1
            ctx.reject(record, "malformed_query", orjson.dumps({query_id: entries}))
            continue
        query_found, query_title = _title(metadata, query_id)
        for paper_id, entry in entries.items():
            record += 1
            count = entry.get("count") if isinstance(entry, dict) else None
            if isinstance(count, bool) or count not in (DIRECT_CITATION, CITED_BY_CITED):
                ctx.reject(record, "unknown_count", orjson.dumps({query_id: {paper_id: entry}}))
                continue
            paper_found, paper_title = _title(metadata, paper_id)
            for name, value in zip(
                _STAGED_SCHEMA,
                (query_id, paper_id, count, query_found, query_title, paper_found, paper_title, record),
            ):
                columns[name].append(value)
    ctx.lines_seen = record
    yield pl.DataFrame(columns, schema=_STAGED_SCHEMA)


def _ranked(frame: pl.LazyFrame, rank: str) -> pl.LazyFrame:
    """``frame`` with the 0-based rank of each paper among its query's papers (by paper id)."""
    return frame.sort(["_file_index", "query_id", "paper_id"]).with_columns(
        pl.int_range(pl.len()).over(["_file_index", "query_id"]).alias(rank)
    )


def build_candidates(staged: pl.LazyFrame, options: Options) -> dict[str, pl.LazyFrame]:
    keys = ["_file_index", "query_id"]
    negatives = _ranked(
        staged.filter(
            (pl.col("count") == CITED_BY_CITED)
            & pl.col("paper_title").is_not_null()
            & (pl.col("paper_title").str.strip_chars() != "")
            & (pl.col("paper_id") != pl.col("query_id"))
        ).select(*keys, "paper_id", pl.col("paper_title").alias("negative")),
        "_slot",
    )
    negative_counts = negatives.group_by(keys).agg(pl.len().alias("_n_negatives"))
    edges = (
        staged.filter(pl.col("count") == DIRECT_CITATION)
        .sort(["_file_index", "_line"])
        .with_columns(pl.format("{}->{}", pl.col("query_id"), pl.col("paper_id")).alias("id"))
        .with_columns(pl.col("id").is_first_distinct().alias("_first"))
    )
    edges = _ranked(edges, "_rank").join(negative_counts, on=keys, how="left")
    edges = edges.with_columns((pl.col("_rank") % pl.col("_n_negatives")).alias("_slot")).join(
        negatives.select(*keys, "_slot", "negative"), on=[*keys, "_slot"], how="left"
    )
    triplets = edges.sort(["_file_index", "_line"]).select(
        pl.col("query_title").alias("anchor"),
        pl.col("paper_title").alias("positive"),
        "negative",
        "id",
        "source_file",
        pl.col("_line").alias("source_line"),
        "_file_index",
        pl.when(~pl.col("_first"))
        .then(pl.lit("duplicate_edge"))
        .when(~pl.col("query_found"))
        .then(pl.lit("query_metadata_missing"))
        .when(pl.col("query_title").is_null() | (pl.col("query_title").str.strip_chars() == ""))
        .then(pl.lit("query_title_missing"))
        .when(~pl.col("paper_found"))
        .then(pl.lit("cited_metadata_missing"))
        .when(pl.col("paper_title").is_null() | (pl.col("paper_title").str.strip_chars() == ""))
        .then(pl.lit("cited_title_missing"))
        .when(pl.col("negative").is_null())
        .then(pl.lit("no_cited_by_cited_negative"))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("drop_reason"),
    )
    return {TRIPLETS: triplets}
