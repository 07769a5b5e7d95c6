"""JSON lines: the fields of a schema in, polars batches out, by the reader that suits the file.

In: a JSON-lines path (plain, ``.gz`` or ``.zst``), an Arrow schema of the fields to
read, a :class:`~pipeline.io.context.ReadContext`. Out: DataFrames of those fields
plus ``_line`` (1-based line number), bad lines rejected into the context.

:func:`read_jsonl` picks the reader (``ctx.jsonl_reader``): with ``auto``, a clean
plain file of string fields whose consumer can drop what it took goes through the
one-pass reader (:mod:`.one_pass`), and if that meets a line it leaves to the chunked
reader (:mod:`.chunked`), the file starts over there; so a file gives the same rows,
rejects and line numbers whichever reader ends up reading it.
:func:`~pipeline.io.jsonl.values.read_json_values` reads lines of any JSON values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import orjson
import polars as pl
import pyarrow as pa

from pipeline.io.context import ReadContext
from pipeline.io.jsonl.chunked import read_jsonl_chunked
from pipeline.io.jsonl.one_pass import WholeFileReadFailed, read_jsonl_one_pass
from pipeline.io.jsonl.values import JsonValues, read_json_values

__all__ = ["JsonValues", "read_json_values", "read_jsonl", "reject_null_fields"]


def read_jsonl(path: Path, schema: pa.Schema, ctx: ReadContext) -> Iterator[pl.DataFrame]:
    """Read the fields of ``schema`` from a JSON-lines file, a batch at a time.

    Fields missing from a line come back null; lines that are not JSON objects whose
    values fit the schema are rejected into ``ctx`` (empty_line, invalid_utf8,
    malformed_json, not_a_json_object, wrong_type:FIELD, line_too_long).

    With ``ctx.jsonl_reader == "auto"`` and a consumer that can drop rows
    (``ctx.on_restart``), the one-pass reader goes first; when it gives up, possibly
    after some batches came out, ``ctx.restart()`` is called (the consumer drops them,
    the context forgets its tallies) and the chunked reader reads the file from the
    start. A source that wraps this generator must not keep state across batches.

    Raises:
        InputFileError: the archive is truncated or corrupt (rows before the break
            were already yielded).
    """
    if ctx.jsonl_reader == "auto" and ctx.can_restart:
        rows = read_jsonl_one_pass(Path(path), schema, ctx)
        if rows is not None:
            ctx.readers.append("one-pass")
            try:
                yield from rows
                return
            except WholeFileReadFailed:
                ctx.restart()
    ctx.readers.append("chunked")
    yield from read_jsonl_chunked(Path(path), schema, ctx)


def reject_null_fields(frame: pl.DataFrame, required: list[str], ctx: ReadContext) -> pl.DataFrame:
    """Reject rows where a required field is missing or null (``missing_field:NAME``).

    The quarantine ``head`` of such a row is the JSON of the fields that were read.
    """
    for name in required:
        missing = frame.get_column(name).is_null()
        if missing.any():
            for row in frame.filter(missing).iter_rows(named=True):
                fields = {k: v for k, v in row.items() if k != "_line"}
                ctx.reject(row["_line"], f"missing_field:{name}", orjson.dumps(fields, default=str))
            frame = frame.filter(~missing)
    return frame
