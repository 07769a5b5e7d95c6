"""Reddit: Pushshift comment dumps in, (parent comment, reply) pairs out.

In: Pushshift comment files, one JSON object per line: the monthly dumps
``RC_YYYY-MM.zst`` (zstd with a 2 GiB window; :func:`pipeline.io.read_jsonl`
handles it), or plain / ``.gz`` ``.jsonl`` / ``.json``. Both the old schema (integer
``created_utc``, ~20 fields) and the 2024 one (float or string ``created_utc``,
``_meta``, ~70 fields) work: only ``id``, ``parent_id``, ``body`` (required) and
``score`` are read. Out: one dataset, ``reddit-replies``, whose unit is a comment:

* every comment whose ``parent_id`` is ``t1_<id>`` of a comment anywhere in the input
  (across all input files) gives the pair (anchor = parent body, positive = reply
  body), with id = the reply's comment id, as the 1B-pairs project took its Reddit
  data (PolyAI's conversational-datasets: context = parent comment, response = reply);
* every other comment is counted under the first reason that applies, in this order:

  ``duplicate_comment``
      a comment id seen before (dumps repeat comments now and then); the first
      occurrence in input order (file order, then line) is the one kept and the one
      replies are paired with.
  ``top_level_comment``
      the parent is the submission (``t3_``), not a comment.
  ``bad_parent_id``
      the parent id is neither ``t1_`` nor ``t3_``.
  ``parent_not_in_input``
      the parent comment is not in the input (another month, or never archived).
  ``deleted_or_removed`` / ``empty_body`` / ``body_too_short`` / ``body_too_long`` /
  ``below_min_score``
      the reply's own body or score is unusable.
  ``parent_deleted_or_removed`` / ``parent_empty_body`` / ``parent_body_too_short`` /
  ``parent_body_too_long`` / ``parent_below_min_score``
      the same checks on the parent.

Bodies are checked as they are in the dump (HTML entities still escaped, white space
at the ends stripped); the cleaning in :mod:`pipeline.ingest` comes after. The length
bounds follow PolyAI's Reddit recipe (``reddit/create_data.py`` in
PolyAI-LDN/conversational-datasets: ``--min_length`` 9, ``--max_length`` 127, and
``[deleted]`` / ``[removed]`` skipped), whose Reddit pairs the 1B-pairs project used;
the upper bound is off by default because the ingest filters already bound length.

The parent lookup is a polars join, never a Python dict, run one hash partition at a
time (:func:`candidate_batches`): a real month holds tens of GB of comments, and
memory holds one partition of them.

A Pushshift *submissions* file (``RS_*``: ``title``/``selftext``, no ``body`` or
``parent_id``) passed by mistake fails as a whole with an :class:`InputFileError`
saying so (recorded in the manifest's ``failures``; ``pairforge ingest`` exits 1);
a stray submission line inside a comments file is quarantined as
``submission_not_comment``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson
import polars as pl
import pyarrow as pa

from pipeline.ingest.sources import DatasetSpec
from pipeline.io.context import ReadContext
from pipeline.io.errors import InputFileError
from pipeline.io.jsonl import read_jsonl, reject_null_fields

NAME = "reddit"
# What a row of this source holds, for the error on a file with none (pipeline.ingest.stage).
FIELDS = "id/parent_id/body"
DATASET = "reddit-replies"
DELETED_BODIES = ("[deleted]", "[removed]")
# ``title`` is read only to recognise a submission passed as a comment.
_JSON_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("parent_id", pa.string()),
        ("body", pa.string()),
        ("score", pa.int64()),
        ("title", pa.string()),
    ]
)
_REQUIRED = ["id", "parent_id", "body"]
_STAGED = ["id", "parent_id", "body", "score", "_line"]
# Global input order of a row: file index in the high bits, line number in the low 40.
_LINE_BITS = 40


@dataclass(frozen=True)
class Options:
    """Options of the reddit source.

    Attributes:
        min_body_chars: bodies (reply and parent) with fewer characters are dropped
            (``body_too_short``); 9 is PolyAI's ``--min_length``.
        max_body_chars: bodies with more characters are dropped (``body_too_long``);
            None for no bound (PolyAI used 127).
        min_score: replies and parents scored below this are dropped
            (``below_min_score``); None keeps every score.
    """

    min_body_chars: int = 9
    max_body_chars: int | None = None
    min_score: int | None = None

    def __post_init__(self) -> None:
        if self.min_body_chars < 0:
            raise ValueError(f"min_body_chars must be >= 0, got {self.min_body_chars}")
        if self.max_body_chars is not None and self.max_body_chars < self.min_body_chars:
            raise ValueError(f"max_body_chars ({self.max_body_chars}) is below min_body_chars ({self.min_body_chars})")


def dataset_specs(inputs: list[Path], options: Options) -> list[DatasetSpec]:
    return [DatasetSpec(DATASET, unit="comment", streamed=True)]


def stage_file(path: Path, ctx: ReadContext, options: Options) -> Iterator[pl.DataFrame]:
    """Yield (id, parent_id, body, score, _line) rows of one comments file.

    Raises:
        InputFileError: the archive is truncated or corrupt, or the file holds
            submissions rather than comments.
    """
    for batch in read_jsonl(path, _JSON_SCHEMA, ctx):
        batch = _reject_submissions(batch, path, ctx)
        batch = reject_null_fields(batch, _REQUIRED, ctx)
        yield batch.select(_STAGED)


def _reject_submissions(batch: pl.DataFrame, path: Path, ctx: ReadContext) -> pl.DataFrame:
    """Fail on a batch of submissions only; quarantine a stray submission among comments."""
    is_submission = (
        pl.col("title").is_not_null() & pl.col("body").is_null() & pl.col("parent_id").is_null()
    )
    flags = batch.select(is_submission.alias("s")).get_column("s")
    if not flags.any():
        return batch
    if flags.all():
        first = int(batch.get_column("_line")[0])
        raise InputFileError(
            f"{path}: looks like a Pushshift submissions file (RS_*): from line {first:,} the rows have"
            " 'title' but no 'body' or 'parent_id'; the reddit source reads comment files (RC_*)"
        )
    for row in batch.filter(flags).select("id", "title", "_line").iter_rows(named=True):
        ctx.reject(row["_line"], "submission_not_comment", orjson.dumps({"id": row["id"], "title": row["title"]}))
    return batch.filter(~flags)


def _body_reason(body: pl.Expr, score: pl.Expr, options: Options, prefix: str) -> pl.Expr:
    """The first reason a body (or score) is unusable, else null; reasons get ``prefix``."""
    stripped = body.str.strip_chars()
    length = stripped.str.len_chars()
    checks: list[tuple[pl.Expr, str]] = [
        (stripped.is_in(list(DELETED_BODIES)), "deleted_or_removed"),
        (stripped == "", "empty_body"),
        (length < options.min_body_chars, "body_too_short"),
    ]
    if options.max_body_chars is not None:
        checks.append((length > options.max_body_chars, "body_too_long"))
    if options.min_score is not None:
        checks.append((score.is_null() | (score < options.min_score), "below_min_score"))
    return _first_reason(checks, prefix)


def _first_reason(checks: list[tuple[pl.Expr, str]], prefix: str = "") -> pl.Expr:
    condition, reason = checks[0]
    chain = pl.when(condition).then(pl.lit(prefix + reason))
    for condition, reason in checks[1:]:
        chain = chain.when(condition).then(pl.lit(prefix + reason))
    return chain.otherwise(pl.lit(None, dtype=pl.String))


def build_candidates(staged: pl.LazyFrame, options: Options) -> dict[str, pl.LazyFrame]:
    """One row per comment: the (parent body, reply body) pair, or why there is none.

    Over all staged rows at once; :func:`candidate_batches` gives the same rows with
    memory bounded by a partition, and is what ingest uses.
    """
    rows = _with_order(staged)
    # Repeated ids are rare: joining every row to just those keeps that hash table small.
    repeated_ids = (
        rows.group_by("id")
        .agg(pl.col("_order").min().alias("_first_order"), pl.len().alias("_copies"))
        .filter(pl.col("_copies") > 1)
        .select("id", "_first_order")
    )
    rows = rows.join(repeated_ids, on="id", how="left", maintain_order="left").with_columns(
        (pl.col("_first_order").is_not_null() & (pl.col("_order") != pl.col("_first_order"))).alias("_repeat")
    )
    return {DATASET: _pairs(rows, _parents(rows), options)}


def candidate_batches(dataset: str, staged_files: list[Path], work_dir: Path, options: Options) -> Iterator[pl.DataFrame]:
    """The rows of :func:`build_candidates`, a key partition at a time.

    The parent lookup joins on two keys (a reply's ``parent_id``, a parent's ``id``),
    so it takes two partitionings of the staged rows by the same hash
    (:mod:`pipeline.io.spill`):

    1. by ``id``: every copy of an id is in one partition, where the repeated copies
       are found (their input positions are kept: few) and the first copies become
       the parent table of that partition, written to disk; the comments that are
       not replies (top-level, a bad parent id) have no parent to meet, so their
       candidate rows (a drop reason each) come out here;
    2. by parent key, the replies only: each partition's replies meet the parent
       table of the same partition, since a parent's id hashes where its replies'
       parent keys do.

    Memory holds one partition and the positions of repeated comments, whatever the
    size of the month. With a single partition (a small input) this is
    :func:`build_candidates` itself; otherwise rows come partition after partition,
    input order within one: first the comments that are not replies (step 1), then the
    replies (step 2), so the kept pairs come in the order of step 2.
    """
    from pipeline.io import spill

    n_parts = spill.partition_count(staged_files)
    if n_parts == 1:
        staged = spill.read_all(staged_files)
        if staged is not None:
            yield build_candidates(staged.lazy(), options)[DATASET].collect()
        return
    scratch = work_dir / ".reddit-parents"
    parent_tables = [spill.FrameFiles(scratch / f"part-{index:05d}", fresh=True) for index in range(n_parts)]
    repeated: list[pl.Series] = []
    is_reply = pl.col("parent_id").str.starts_with("t1_")
    try:
        for index, rows in spill.key_partitions(staged_files, pl.col("id"), n_parts, work_dir):
            rows = _with_order(rows.lazy())
            first = pl.col("_order") == pl.col("_order").min().over("id")
            rows = rows.with_columns((~first).alias("_repeat")).collect()
            repeated.append(rows.filter(pl.col("_repeat")).get_column("_order"))
            parent_tables[index].write(_parents(rows.lazy()).collect())
            not_replies = rows.lazy().filter(~is_reply)
            yield _pairs(not_replies, _parents(not_replies.head(0)), options).collect()
        repeat_orders = pl.concat(repeated) if repeated else pl.Series("_order", [], dtype=pl.Int64)
        for index, rows in spill.key_partitions(staged_files, _parent_key(), n_parts, work_dir, where=is_reply):
            parents = parent_tables[index].read()
            rows = _with_order(rows.lazy()).with_columns(pl.col("_order").is_in(repeat_orders.implode()).alias("_repeat"))
            if parents is None:
                parents = _parents(rows.head(0)).collect()
            yield _pairs(rows, parents.lazy(), options).collect()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _with_order(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``_order``: a row's global input position (file index, then line)."""
    return rows.with_columns((pl.col("_file_index").cast(pl.Int64) * (1 << _LINE_BITS) + pl.col("_line")).alias("_order"))


def _parent_key() -> pl.Expr:
    """The id of a reply's parent comment (``t1_`` stripped); null when not a reply."""
    return pl.when(pl.col("parent_id").str.starts_with("t1_")).then(pl.col("parent_id").str.strip_prefix("t1_"))


def _parents(rows: pl.LazyFrame) -> pl.LazyFrame:
    """The parent table: each comment's first copy, by id."""
    return rows.filter(~pl.col("_repeat")).select(
        pl.col("id").alias("_parent_key"),
        pl.col("body").alias("parent_body"),
        pl.col("score").alias("parent_score"),
        pl.lit(True).alias("_parent_found"),
    )


def _pairs(rows: pl.LazyFrame, parents: pl.LazyFrame, options: Options) -> pl.LazyFrame:
    """Rows (with ``_repeat``) joined to their parent: the candidate columns."""
    is_reply = pl.col("parent_id").str.starts_with("t1_")
    rows = rows.with_columns(_parent_key().alias("_parent_key")).join(
        parents, on="_parent_key", how="left", maintain_order="left"
    )
    structure = _first_reason(
        [
            (pl.col("_repeat"), "duplicate_comment"),
            (pl.col("parent_id").str.starts_with("t3_"), "top_level_comment"),
            (~is_reply, "bad_parent_id"),
            (pl.col("_parent_found").is_null(), "parent_not_in_input"),
        ]
    )
    drop_reason = pl.coalesce(
        structure,
        _body_reason(pl.col("body"), pl.col("score"), options, prefix=""),
        _body_reason(pl.col("parent_body"), pl.col("parent_score"), options, prefix="parent_"),
    )
    return rows.select(
        pl.col("parent_body").alias("anchor"),
        pl.col("body").alias("positive"),
        "id",
        "source_file",
        pl.col("_line").alias("source_line"),
        "_file_index",
        drop_reason.alias("drop_reason"),
    )
