"""S2ORC: the metadata JSON lines of the Semantic Scholar Open Research Corpus.

In: S2ORC metadata files (``metadata_*.jsonl``, plain, ``.gz`` or ``.zst``), one paper a
line with ``paper_id`` (a string), ``title``, ``abstract`` (often null) and
``outbound_citations`` (a list of paper id strings); other fields are ignored. Out:
two datasets.

* ``s2orc-title-abstract`` (unit: a paper line): (title, abstract), anchor = title as
  in the 1B-pairs project's ``S2ORC_title_abstract``. Id = ``paper_id``. A paper
  without an abstract is dropped as ``no_abstract``, without a title as ``no_title``;
  a second line with an id already seen as ``duplicate_paper_id``.
* ``s2orc-citations`` (unit: a citation edge, one entry of a paper's
  ``outbound_citations``): (citing abstract, cited abstract), kept when the cited
  paper is one of the input papers and both have an abstract (after the 1B project's
  ``S2ORC_citation_pairs_abstract``). Id = ``<citing>-><cited>``. Drop reasons, the
  first that fires: ``cited_id_missing`` (a null in the list), ``duplicate_citation``
  (an edge listed again, by the same paper or by a repeated paper line),
  ``self_citation``, ``cited_paper_not_in_input``, ``citing_abstract_missing``,
  ``cited_abstract_missing``. A line that cannot be read is not counted in this
  dataset (``counts_unreadable=False``): its edges cannot be counted when the line
  cannot be parsed; it is counted and quarantined in ``s2orc-title-abstract``.

Only citations between papers of the input count, so the citation pairs grow with
the share of the corpus given: a sample of a few papers gives almost none.
The join is done by polars on the staged rows (explode + left join on the paper id),
never in Python dictionaries, one hash partition of the ids at a time
(:func:`candidate_batches`), so memory holds a partition, not the corpus.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa

from pipeline.ingest.sources import DatasetSpec
from pipeline.io.context import ReadContext
from pipeline.io.jsonl import read_jsonl, reject_null_fields

NAME = "s2orc"
# What a row of this source holds, for the error on a file with none (pipeline.ingest.stage).
FIELDS = "paper_id/title/abstract"
TITLE_ABSTRACT = "s2orc-title-abstract"
CITATIONS = "s2orc-citations"
_JSON_SCHEMA = pa.schema(
    [
        ("paper_id", pa.string()),
        ("title", pa.string()),
        ("abstract", pa.string()),
        ("outbound_citations", pa.list_(pa.string())),
    ]
)
_NULL_REASON = pl.lit(None, dtype=pl.String)


@dataclass(frozen=True)
class Options:
    """S2ORC has no options of its own yet."""


def dataset_specs(inputs: list[Path], options: Options) -> list[DatasetSpec]:
    return [
        DatasetSpec(TITLE_ABSTRACT, unit="line", partition_key="paper_id"),
        DatasetSpec(CITATIONS, unit="citation edge", counts_unreadable=False, streamed=True),
    ]


def stage_file(path: Path, ctx: ReadContext, options: Options) -> Iterator[pl.DataFrame]:
    """Yield (paper_id, title, abstract, outbound_citations, _line) rows of one metadata file.

    A line without a ``paper_id`` is quarantined (``missing_field:paper_id``); a null
    title or abstract is kept (it is a drop reason later, not an unreadable line).
    """
    for batch in read_jsonl(path, _JSON_SCHEMA, ctx):
        batch = reject_null_fields(batch, ["paper_id"], ctx)
        yield batch.select(
            "paper_id",
            "title",
            "abstract",
            pl.col("outbound_citations").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            "_line",
        )


def _is_blank(column: str) -> pl.Expr:
    return pl.col(column).is_null() | (pl.col(column).str.strip_chars() == "")


def _in_input_order(frame: pl.LazyFrame, *extra: str) -> pl.LazyFrame:
    return frame.sort(["_file_index", "_line", *extra], maintain_order=True)


def _candidate_columns(frame: pl.LazyFrame, anchor: str, positive: str, id_: str) -> pl.LazyFrame:
    """The candidate columns; texts of dropped rows are left null, as no later step reads them.

    Most units are dropped (most citations leave the input, half the papers have no
    abstract), so not carrying their abstracts keeps the candidate spill small.
    """
    kept = pl.col("drop_reason").is_null()
    return frame.select(
        pl.when(kept).then(pl.col(anchor)).alias("anchor"),
        pl.when(kept).then(pl.col(positive)).alias("positive"),
        pl.col(id_).alias("id"),
        "source_file",
        pl.col("_line").alias("source_line"),
        "_file_index",
        "drop_reason",
    )


def title_abstract_pairs(staged: pl.LazyFrame) -> pl.LazyFrame:
    """One row per paper line: (title, abstract) or the reason it gives no pair."""
    papers = _in_input_order(staged).with_columns(pl.col("paper_id").is_first_distinct().alias("_first"))
    reason = (
        pl.when(~pl.col("_first"))
        .then(pl.lit("duplicate_paper_id"))
        .when(_is_blank("title"))
        .then(pl.lit("no_title"))
        .when(_is_blank("abstract"))
        .then(pl.lit("no_abstract"))
        .otherwise(_NULL_REASON)
    )
    return _candidate_columns(
        papers.with_columns(reason.alias("drop_reason")), anchor="title", positive="abstract", id_="paper_id"
    )


def citation_pairs(staged: pl.LazyFrame) -> pl.LazyFrame:
    """One row per citation edge: (citing abstract, cited abstract) or the reason it gives no pair.

    Over all staged rows at once; :func:`candidate_batches` gives the same rows one
    hash partition at a time, and is what ingest uses. The edges are exploded and
    joined carrying ids and flags only; the abstracts are joined last, by their line,
    and only onto the kept edges (a null join key matches nothing), so a paper's
    abstract is not copied onto each of its many citations. The cited paper is looked
    up on the first line of its id, so a repeated paper line cannot multiply edges.
    """
    edges = _edges(staged).with_columns(pl.col("id").is_first_distinct().alias("_first"))
    kept = pl.col("drop_reason").is_null()
    edges = (
        edges.join(_cited_table(staged), on="cited_id", how="left", maintain_order="left")
        .with_columns(_citation_reason().alias("drop_reason"))
        .with_columns(
            pl.when(kept).then(pl.col("_line")).alias("_citing_key"),
            pl.when(kept).then(pl.col("_cited_line")).alias("_cited_key"),
        )
    )
    abstracts = staged.filter(~_is_blank("abstract")).select("_file_index", "_line", "abstract")
    edges = edges.join(
        abstracts.rename({"_line": "_citing_key", "abstract": "citing_abstract"}),
        on=["_file_index", "_citing_key"],
        how="left",
        maintain_order="left",
    ).join(
        abstracts.rename({"_file_index": "_cited_file_index", "_line": "_cited_key", "abstract": "cited_abstract"}),
        on=["_cited_file_index", "_cited_key"],
        how="left",
        maintain_order="left",
    )
    return _candidate_columns(edges, anchor="citing_abstract", positive="cited_abstract", id_="id")


def candidate_batches(dataset: str, staged_files: list[Path], work_dir: Path, options: Options) -> Iterator[pl.DataFrame]:
    """The rows of :func:`citation_pairs`, a hash partition at a time (bounded memory).

    Two partitionings by the same hash (:mod:`pipeline.io.spill`), as Reddit's parent
    lookup does: by ``paper_id``, where each paper's first line becomes the cited
    table of that partition (with its abstract) and its edges are exploded, their
    first copies found (every copy of an edge has the same citing paper) and written
    out with the citing abstract; then the edges by cited id, each partition's edges
    meeting the cited table of the same partition. With a single partition (a small
    input) this is :func:`citation_pairs` itself; otherwise rows come partition after
    partition.
    """
    from pipeline.io import spill

    if dataset != CITATIONS:
        raise ValueError(f"s2orc streams only {CITATIONS}, not {dataset!r}")
    n_parts = spill.partition_count(staged_files)
    if n_parts == 1:
        staged = spill.read_all(staged_files)
        if staged is not None:
            yield citation_pairs(staged.lazy()).collect()
        return
    scratch = work_dir / ".s2orc-citations"
    cited_tables = [spill.FrameFiles(scratch / "cited" / f"part-{index:05d}", fresh=True) for index in range(n_parts)]
    edge_files = spill.FrameFiles(scratch / "edges", fresh=True)
    try:
        for index, papers in spill.key_partitions(staged_files, pl.col("paper_id"), n_parts, work_dir):
            papers_lazy = papers.lazy()
            cited = _cited_table(papers_lazy).join(
                papers_lazy.select(
                    pl.col("_file_index").alias("_cited_file_index"),
                    pl.col("_line").alias("_cited_line"),
                    pl.col("abstract").alias("cited_abstract"),
                ),
                on=["_cited_file_index", "_cited_line"],
                how="left",
                maintain_order="left",
            )
            cited_tables[index].write(cited.collect())
            edges = _edges(papers_lazy, with_abstract=True).with_columns(pl.col("id").is_first_distinct().alias("_first"))
            edge_files.write(edges.collect())
        by_cited = pl.coalesce(pl.col("cited_id"), pl.col("citing_id"))
        for index, edges in spill.key_partitions(edge_files.files(), by_cited, n_parts, work_dir):
            cited = cited_tables[index].read()
            if cited is None:  # no paper's id hashes here: every cited paper is missing
                cited = pl.DataFrame(schema=_CITED_SCHEMA)
            joined = (
                edges.lazy()
                .join(cited.lazy(), on="cited_id", how="left", maintain_order="left")
                .with_columns(_citation_reason().alias("drop_reason"))
            )
            yield _candidate_columns(joined, anchor="citing_abstract", positive="cited_abstract", id_="id").collect()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_CITED_SCHEMA = {
    "cited_id": pl.String,
    "_cited_has_abstract": pl.Boolean,
    "_cited_file_index": pl.Int64,
    "_cited_line": pl.Int64,
    "cited_abstract": pl.String,
}


def _cited_table(staged: pl.LazyFrame) -> pl.LazyFrame:
    """Each paper's first line, by id: what a citation of it is looked up in."""
    return (
        _in_input_order(staged.select("paper_id", "abstract", "_file_index", "_line"))
        .unique(subset="paper_id", keep="first", maintain_order=True)
        .select(
            pl.col("paper_id").alias("cited_id"),
            (~_is_blank("abstract")).alias("_cited_has_abstract"),
            pl.col("_file_index").alias("_cited_file_index"),
            pl.col("_line").alias("_cited_line"),
        )
    )


def _edges(staged: pl.LazyFrame, with_abstract: bool = False) -> pl.LazyFrame:
    """One row per outbound citation, in input order, with its edge id."""
    edges = (
        staged.select(
            pl.col("paper_id").alias("citing_id"),
            (~_is_blank("abstract")).alias("_citing_has_abstract"),
            *([pl.col("abstract").alias("citing_abstract")] if with_abstract else []),
            pl.col("outbound_citations").alias("cited_id"),
            pl.int_ranges(0, pl.col("outbound_citations").list.len()).alias("_position"),
            "source_file",
            "_line",
            "_file_index",
        )
        .filter(pl.col("cited_id").list.len() > 0)
        .explode(["cited_id", "_position"])
    )
    return _in_input_order(edges, "_position").with_columns(
        pl.format("{}->{}", pl.col("citing_id"), pl.coalesce(pl.col("cited_id"), pl.lit("null"))).alias("id")
    )


def _citation_reason() -> pl.Expr:
    """Why an edge (joined to its cited paper, with ``_first``) gives no pair, in rule order."""
    return (
        pl.when(pl.col("cited_id").is_null())
        .then(pl.lit("cited_id_missing"))
        .when(~pl.col("_first"))
        .then(pl.lit("duplicate_citation"))
        .when(pl.col("cited_id") == pl.col("citing_id"))
        .then(pl.lit("self_citation"))
        .when(pl.col("_cited_has_abstract").is_null())
        .then(pl.lit("cited_paper_not_in_input"))
        .when(~pl.col("_citing_has_abstract"))
        .then(pl.lit("citing_abstract_missing"))
        .when(~pl.col("_cited_has_abstract"))
        .then(pl.lit("cited_abstract_missing"))
        .otherwise(_NULL_REASON)
    )


def build_candidates(staged: pl.LazyFrame, options: Options) -> dict[str, pl.LazyFrame]:
    return {TITLE_ABSTRACT: title_abstract_pairs(staged), CITATIONS: citation_pairs(staged)}
