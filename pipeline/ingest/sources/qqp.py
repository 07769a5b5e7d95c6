"""QQP: Quora question pairs, in the original / GLUE TSV and the Kaggle CSV.

In: a ``.tsv`` file (tab separated, quote characters are ordinary text: the original
Quora release and GLUE's ``train.tsv``/``dev.tsv``) or a ``.csv`` file (comma
separated and quoted, as Kaggle's ``train.csv`` or a pandas export of it with an
unnamed index column and extra columns), optionally ``.gz``/``.zst``. The layout is
told by the extension; the columns are found by name in the header (``id``, ``qid1``,
``qid2``, ``question1``, ``question2``, ``is_duplicate``; other columns are ignored).
A file without ``is_duplicate`` (GLUE's ``test.tsv``, Kaggle's ``test.csv`` with its
``test_id``) is read too, every row being dropped as ``unlabeled``.

Out: two datasets, both counting labelled rows (one unit = one row of a file):

* ``qqp-duplicates``: (question1, question2) for every row with ``is_duplicate == 1``;
  one pair per row, not the symmetric pair as well (the loss in training is
  near-symmetric, and one row per unit keeps the accounting plain);
* ``qqp-triplets``: (question1, question2, negative) for every duplicate row, the
  negative being a question that a row marks as NOT a duplicate of question1, else of
  question2: by qid, the first such row in input order (file, then line). Quora's
  non-duplicate pairs were chosen to look alike, so these are hard negatives. Duplicate
  rows with none are dropped as ``no_non_duplicate_for_question``.

Drop reasons: ``not_duplicate`` (``is_duplicate == 0``), ``bad_label`` (any other
value), ``unlabeled`` (no label column), ``duplicate_id`` (a row id seen before in
the same file). Row ids are ``<file name>:<id>`` (the Quora row id; the line number
where a row has none); two inputs with the same file name are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from pipeline.ingest.normalize import set_reason
from pipeline.ingest.sources import DatasetSpec
from pipeline.io.compression import open_decompressed
from pipeline.io.context import ReadContext
from pipeline.io.delimited import read_delimited
from pipeline.io.errors import InputLayoutError

NAME = "qqp"
# What a row of this source holds, for the error on a file with none (pipeline.ingest.stage).
FIELDS = "id/question1/question2/is_duplicate"
_COLUMNS = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
_COMPRESSIONS = (".gz", ".zst", ".zstd")


@dataclass(frozen=True)
class Options:
    """Options of the QQP source.

    Attributes:
        tsv_quoted: read ``.tsv`` inputs with CSV quoting (fields in double quotes may
            hold tabs and newlines). Off by default: GLUE's TSV has bare quote
            characters inside questions, which quoting would swallow.
    """

    tsv_quoted: bool = False


def dataset_specs(inputs: list[Path], options: Options) -> list[DatasetSpec]:
    """``qqp-duplicates`` and ``qqp-triplets``, both counting rows.

    Raises:
        ValueError: two inputs share a file name (their row ids would collide).
    """
    seen: dict[str, Path] = {}
    for path in inputs:
        if path.name in seen:
            raise ValueError(f"qqp: inputs {seen[path.name]} and {path} share a file name; row ids would collide")
        seen[path.name] = path
    return [
        DatasetSpec("qqp-duplicates", unit="row", partition_key="row_id"),
        DatasetSpec("qqp-triplets", unit="row", with_negative=True),
    ]


def file_layout(path: Path) -> tuple[str, bool]:
    """(delimiter, quoted) of a QQP file, from its extension (``.tsv`` or ``.csv``, maybe compressed).

    Raises:
        InputLayoutError: any other extension.
    """
    name = path.name.lower()
    for compression in _COMPRESSIONS:
        name = name.removesuffix(compression)
    if name.endswith(".tsv"):
        return "\t", False
    if name.endswith(".csv"):
        return ",", True
    raise InputLayoutError(f"{path}: not a QQP file: expected a .tsv (original/GLUE) or .csv (Kaggle) file name")


def check_input(path: Path) -> None:
    """Raise :class:`InputLayoutError` unless ``path`` is named as a QQP file (:func:`file_layout`)."""
    file_layout(path)


def _header(path: Path, delimiter: str) -> list[str]:
    with open_decompressed(path) as stream:
        first = stream.readline().decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
    return [name.strip().strip('"') for name in first.split(delimiter)]


def stage_file(path: Path, ctx: ReadContext, options: Options) -> Iterator[pl.DataFrame]:
    """Yield (row_id, qid1, qid2, question1, question2, label, _line) rows of one QQP file.

    ``label`` is null in a file without ``is_duplicate``; so are the qids.
    """
    delimiter, quoted = file_layout(path)
    quoted = quoted or options.tsv_quoted
    header = _header(path, delimiter)
    labelled = "is_duplicate" in header
    # Kaggle's test.csv names its id column test_id.
    id_column = "test_id" if not labelled and "id" not in header and "test_id" in header else "id"
    columns = _COLUMNS if labelled else [id_column, "question1", "question2"]
    for batch in read_delimited(path, ctx, delimiter=delimiter, quoted=quoted, columns=columns):
        if not labelled:
            batch = batch.rename({id_column: "id"}).with_columns(
                pl.lit(None, dtype=pl.String).alias(name) for name in ("qid1", "qid2", "is_duplicate")
            )
        yield batch.select(
            pl.col("id").str.strip_chars().alias("row_id"),
            pl.col("qid1").str.strip_chars(),
            pl.col("qid2").str.strip_chars(),
            "question1",
            "question2",
            pl.col("is_duplicate").str.strip_chars().alias("label"),
            "_line",
        )


def _row_reason() -> pl.Expr:
    label = pl.col("label")
    return (
        pl.when(label.is_null())
        .then(pl.lit("unlabeled"))
        .when(~pl.col("_first_of_id"))
        .then(pl.lit("duplicate_id"))
        .when(label == "0")
        .then(pl.lit("not_duplicate"))
        .when(label != "1")
        .then(pl.lit("bad_label"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def _question_key(qid: str, question: str) -> pl.Expr:
    """A question's identity: its qid, or its text where the row has no qid."""
    return (
        pl.when(pl.col(qid).is_null() | (pl.col(qid) == ""))
        .then(pl.format("text:{}", pl.col(question)))
        .otherwise(pl.col(qid))
    )


_OUTPUT = ["id", "source_file", "source_line", "_file_index", "drop_reason"]


def build_candidates(staged: pl.LazyFrame, options: Options) -> dict[str, pl.LazyFrame]:
    """Duplicate rows as pairs, and as triplets with a non-duplicate of their first question."""
    file_name = pl.col("source_file").str.replace(r"^.*[/\\]", "")
    row_id = pl.when(pl.col("row_id").is_null() | (pl.col("row_id") == "")).then(
        pl.format("line{}", pl.col("_line"))
    ).otherwise(pl.col("row_id"))
    rows = (
        staged.with_columns(
            pl.format("{}:{}", file_name, row_id).alias("id"),
            pl.col("_line").alias("source_line"),
            _question_key("qid1", "question1").alias("key1"),
            _question_key("qid2", "question2").alias("key2"),
        )
        .sort(["_file_index", "source_line"])
        .with_columns(pl.col("id").is_first_distinct().alias("_first_of_id"))
        .with_columns(_row_reason().alias("drop_reason"))
    )
    duplicates = rows.select(pl.col("question1").alias("anchor"), pl.col("question2").alias("positive"), *_OUTPUT)

    # Each non-duplicate row says of both its questions: the other one is not a duplicate.
    not_duplicate = rows.filter(pl.col("drop_reason") == "not_duplicate")
    edges = pl.concat(
        [
            not_duplicate.select(
                pl.col("key1").alias("key"), pl.col("question2").alias("negative"), "_file_index", "source_line",
                pl.lit(0, dtype=pl.Int8).alias("side"),
            ),
            not_duplicate.select(
                pl.col("key2").alias("key"), pl.col("question1").alias("negative"), "_file_index", "source_line",
                pl.lit(1, dtype=pl.Int8).alias("side"),
            ),
        ]
    )
    first_negative = (
        edges.sort(["_file_index", "source_line", "side"])
        .group_by("key", maintain_order=True)
        .agg(pl.col("negative").first())
    )
    negative_of_q1 = first_negative.rename({"key": "key1", "negative": "negative1"})
    negative_of_q2 = first_negative.rename({"key": "key2", "negative": "negative2"})
    triplets = (
        rows.join(negative_of_q1, on="key1", how="left", maintain_order="left")
        .join(negative_of_q2, on="key2", how="left", maintain_order="left")
        .with_columns(pl.coalesce("negative1", "negative2").alias("negative"))
        .pipe(set_reason, pl.col("negative").is_null(), "no_non_duplicate_for_question")
        .select(pl.col("question1").alias("anchor"), pl.col("question2").alias("positive"), "negative", *_OUTPUT)
    )
    return {"qqp-duplicates": duplicates, "qqp-triplets": triplets}
