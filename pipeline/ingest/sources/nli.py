"""NLI: SNLI / MultiNLI JSON lines, and the SentEval layout (``s1.*``, ``s2.*``, ``labels.*``).

In: ``snli_1.0_*.jsonl`` / ``multinli_1.0_*.jsonl`` (fields ``sentence1``,
``sentence2``, ``gold_label``, ``pairID``), or a SentEval split given by its
``s1.SPLIT`` file (``s2.SPLIT`` and ``labels.SPLIT`` beside it), or a folder holding
them. Out: two datasets, both counting input lines:

* ``nli-pairs``: (premise, hypothesis) for every entailment line;
* ``nli-triplets``: (premise, entailment hypothesis, contradiction hypothesis), the
  contradiction being the first one of the same premise in input order.

Lines without a gold label (``-`` or empty: no annotator consensus) are dropped as
``no_gold_label``; neutral and contradiction lines give no pair (``not_entailment``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa

from pipeline.ingest.normalize import set_reason
from pipeline.ingest.sources import DatasetSpec
from pipeline.io.context import ReadContext
from pipeline.io.errors import InputFileError, InputLayoutError
from pipeline.io.jsonl import read_jsonl, reject_null_fields
from pipeline.io.lines import read_text_lines

NAME = "nli"
# What a row of this source holds, for the error on a file with none (pipeline.ingest.stage).
FIELDS = "sentence1/sentence2/gold_label"
# A folder is an input of this source (check_input says what it must hold).
FOLDER_INPUTS = True
_JSON_SCHEMA = pa.schema(
    [("sentence1", pa.string()), ("sentence2", pa.string()), ("gold_label", pa.string()), ("pairID", pa.string())]
)
LABELS = ("entailment", "neutral", "contradiction")
# The columns every candidate frame ends with, after its texts.
_CANDIDATE_TAIL = ("id", "source_file", "source_line", "_file_index", "drop_reason")


@dataclass(frozen=True)
class Options:
    """NLI has no options of its own yet."""


def dataset_specs(inputs: list[Path], options: Options) -> list[DatasetSpec]:
    return [
        DatasetSpec("nli-pairs", unit="line", row_local=True),
        DatasetSpec("nli-triplets", unit="line", with_negative=True, partition_key="premise"),
    ]


def _senteval_files(path: Path) -> tuple[Path, Path, Path]:
    if path.is_dir():
        s1 = sorted(path.glob("s1.*"))
        if len(s1) != 1:
            raise InputLayoutError(
                f"{path}: a folder given to the nli source must be a SentEval split: expected exactly one s1.* file"
                f" (with s2.* and labels.*) in it, found {len(s1)}"
            )
        path = s1[0]
    split = path.name[len("s1.") :]
    files = (path, path.with_name(f"s2.{split}"), path.with_name(f"labels.{split}"))
    for file in files:
        if not file.exists():
            raise InputLayoutError(f"{path}: the SentEval layout needs {file.name} beside it (looked for {file})")
    return files


def check_input(path: Path) -> None:
    """Raise :class:`InputLayoutError` when a SentEval input lacks one of its three files."""
    if is_senteval(path):
        _senteval_files(path)


def companion_files(path: Path) -> list[Path]:
    """The files one input consists of: the three SentEval files, or the file itself."""
    return list(_senteval_files(path)) if is_senteval(path) else [path]


def is_senteval(path: Path) -> bool:
    """Whether ``path`` is a SentEval split (an ``s1.*`` file or a folder of them)."""
    return path.is_dir() or path.name.startswith("s1.")


def stage_file(path: Path, ctx: ReadContext, options: Options) -> Iterator[pl.DataFrame]:
    """Yield (premise, hypothesis, label, pair_id, _line) rows of one NLI input."""
    if is_senteval(path):
        yield _stage_senteval(path, ctx)
        return
    for batch in read_jsonl(path, _JSON_SCHEMA, ctx):
        batch = reject_null_fields(batch, ["sentence1", "sentence2", "gold_label"], ctx)
        yield batch.select(
            pl.col("sentence1").alias("premise"),
            pl.col("sentence2").alias("hypothesis"),
            pl.col("gold_label").str.strip_chars().alias("label"),
            pl.col("pairID").alias("pair_id"),
            "_line",
        )


def _stage_senteval(path: Path, ctx: ReadContext) -> pl.DataFrame:
    s1_path, s2_path, labels_path = _senteval_files(path)
    columns = {}
    lengths = {}
    for name, file in (("premise", s1_path), ("hypothesis", s2_path), ("label", labels_path)):
        columns[name] = read_text_lines(file, ctx)
        lengths[file.name] = len(columns[name])
    if len(set(lengths.values())) != 1:
        raise InputFileError(f"{path}: SentEval files differ in length: {lengths}")
    frame = pl.DataFrame(
        {
            "premise": pl.Series(columns["premise"], dtype=pl.String),
            "hypothesis": pl.Series(columns["hypothesis"], dtype=pl.String),
            "label": pl.Series(columns["label"], dtype=pl.String).str.strip_chars(),
            "pair_id": pl.Series([None] * len(columns["label"]), dtype=pl.String),
            "_line": pl.int_range(1, len(columns["label"]) + 1, eager=True, dtype=pl.Int64),
        }
    )
    # Lines that were not UTF-8 were quarantined by the reader; they are None here.
    return frame.filter(pl.all_horizontal(pl.col("premise", "hypothesis", "label").is_not_null()))


def _label_reason() -> pl.Expr:
    label = pl.col("label")
    return (
        pl.when(label.is_in(["-", ""]))
        .then(pl.lit("no_gold_label"))
        .when(~label.is_in(list(LABELS)))
        .then(pl.lit("unknown_label"))
        .when(label != "entailment")
        .then(pl.lit("not_entailment"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def build_candidates(staged: pl.LazyFrame, options: Options) -> dict[str, pl.LazyFrame]:
    rows = staged.with_columns(
        # file:line only where a line has no pairID: a when/then is skipped where it never
        # fires (a coalesce would format an id for every line).
        pl.when(pl.col("pair_id").is_null())
        .then(pl.format("{}:{}", pl.col("source_file"), pl.col("_line")))
        .otherwise(pl.col("pair_id"))
        .alias("id"),
        pl.col("_line").alias("source_line"),
        _label_reason().alias("drop_reason"),
    )
    pairs = rows.select(
        pl.col("premise").alias("anchor"),
        pl.col("hypothesis").alias("positive"),
        *_CANDIDATE_TAIL,
    )
    first_contradiction = (
        rows.filter(pl.col("label") == "contradiction")
        .sort(["_file_index", "source_line"])
        .group_by("premise", maintain_order=True)
        .agg(pl.col("hypothesis").first().alias("negative"))
    )
    triplets = (
        rows.join(first_contradiction, on="premise", how="left", maintain_order="left")
        .pipe(set_reason, pl.col("negative").is_null(), "no_contradiction_for_premise")
        .select(
            pl.col("premise").alias("anchor"),
            pl.col("hypothesis").alias("positive"),
            "negative",
            *_CANDIDATE_TAIL,
        )
    )
    return {"nli-pairs": pairs, "nli-triplets": triplets}
