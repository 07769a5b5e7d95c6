"""The chunked JSON-lines reader: 16 MiB chunks of whole lines, parsed several at once.

In: a JSON-lines path (plain, ``.gz`` or ``.zst``), an Arrow schema of the fields to
read, a :class:`~pipeline.io.context.ReadContext`. Out: polars DataFrames of those
fields plus ``_line``, a batch per chunk; bad lines rejected into the context.

A chunk goes through polars' JSON reader (the fast path, several chunks at once on a
thread pool, with a strict schema), falls back to pyarrow's reader, then to a
line-by-line parse, only when it holds a bad line: clean files pay nothing for the
checks that bad files need.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Iterator

import orjson
import polars as pl
import pyarrow as pa

from pipeline.io.context import ReadContext
from pipeline.io.lines import LineChunk, line_chunks
from pipeline.io.parallel import ordered_map

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int64": (int,),
    "double": (int, float),
    "bool": (bool,),
}


def _value_fits(value: Any, arrow_type: pa.DataType) -> bool:
    """Whether a parsed JSON value fits the declared Arrow type (None always fits)."""
    if value is None:
        return True
    if pa.types.is_list(arrow_type):
        return isinstance(value, list) and all(_value_fits(v, arrow_type.value_type) for v in value)
    expected = _PY_TYPES[str(arrow_type)]
    if isinstance(value, bool) and bool not in expected:
        return False
    return isinstance(value, expected)


def _parse_lines_strictly(chunk: LineChunk, schema: pa.Schema, ctx: ReadContext) -> pl.DataFrame:
    """Parse a chunk line by line, rejecting each line that is not a JSON object of the schema."""
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    lines: list[int] = []
    for offset, raw in enumerate(chunk.data.split(b"\n")[: chunk.n_lines]):
        number = chunk.first_line + offset
        line = raw.rstrip(b"\r")
        if not line.strip():
            ctx.reject(number, "empty_line", raw)
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            ctx.reject(number, "invalid_utf8", raw)
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            ctx.reject(number, "malformed_json", raw)
            continue
        if not isinstance(value, dict):
            ctx.reject(number, "not_a_json_object", raw)
            continue
        wrong = next((f.name for f in schema if not _value_fits(value.get(f.name), f.type)), None)
        if wrong is not None:
            ctx.reject(number, f"wrong_type:{wrong}", raw)
            continue
        for name in schema.names:
            columns[name].append(value.get(name))
        lines.append(number)
    table = pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names})
    return pl.from_arrow(table).with_columns(pl.Series("_line", lines, dtype=pl.Int64))  # type: ignore[union-attr]


class PolarsFastPath:
    """polars' JSON reader (the fastest here) for schemas of plain strings and numbers.

    polars turns a number, a boolean, a list or an object found where a string is
    declared into its JSON text; a bad row must not pass for a good one. Such text
    looks like a JSON scalar or container, so the (rare) string values that do are
    parsed as JSON, and if one is not a JSON string the chunk is left to the strict
    readers. Any other problem (bad JSON, bad UTF-8, blank lines, a float in an int
    field) makes polars raise or miscount, which also hands the chunk over.
    """

    _FLAT = {"string": pl.String, "int64": pl.Int64, "double": pl.Float64, "bool": pl.Boolean}
    # What polars' text of a non-string JSON value starts and ends like.
    _LOOKS_CONVERTED = r"^(?:-?[0-9][0-9.eE+-]*|true|false|\[.*\]|\{.*\})$"

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = {f.name: self._FLAT[str(f.type)] for f in schema}
        self._strings = [f.name for f in schema if str(f.type) == "string"]

    @classmethod
    def for_schema(cls, schema: pa.Schema) -> "PolarsFastPath | None":
        return cls(schema) if all(str(f.type) in cls._FLAT for f in schema) else None

    def read(self, chunk: LineChunk) -> pl.DataFrame | None:
        try:
            # polars validates the UTF-8 of every line (also of fields it does not
            # keep) and raises on a bad byte: no separate decode pass is needed.
            frame = pl.read_ndjson(io.BytesIO(chunk.data), schema=self.schema)
        except (pl.exceptions.PolarsError, UnicodeDecodeError, ValueError):
            return None
        if frame.height != chunk.n_lines or self.holds_converted_values(frame):
            return None
        lines = pl.int_range(chunk.first_line, chunk.first_line + chunk.n_lines, eager=True, dtype=pl.Int64)
        return frame.with_columns(lines.alias("_line"))

    def holds_converted_values(self, frame: pl.DataFrame) -> bool:
        """Whether a string column of ``frame`` holds a value that was not a JSON string."""
        if not self._strings:
            return False
        # One pass over every string column at once; almost always nothing matches.
        suspect_rows = frame.select(
            pl.any_horizontal(pl.col(name).str.contains(self._LOOKS_CONVERTED) for name in self._strings)
        ).to_series()
        if not suspect_rows.any():
            return False
        frame = frame.filter(suspect_rows)
        for name in self._strings:
            suspects = frame.get_column(name).filter(frame.get_column(name).str.contains(self._LOOKS_CONVERTED))
            for value in suspects.to_list():
                try:
                    orjson.loads(value)
                except orjson.JSONDecodeError:
                    continue  # text that merely looks like JSON ("[deleted]")
                return True
        return False


def read_jsonl_chunked(path: Path, schema: pa.Schema, ctx: ReadContext) -> Iterator[pl.DataFrame]:
    """The fields of ``schema`` from a JSON-lines file, a batch per chunk (see the module doc).

    Raises:
        InputFileError: the archive is truncated or corrupt (rows before the break
            were already yielded).
    """
    import pyarrow.json as pa_json

    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    fast = PolarsFastPath.for_schema(schema)
    with contextlib.closing(line_chunks(path, ctx)) as chunks:
        # polars parses a chunk releasing the GIL: several chunks are parsed at once
        # while this thread cuts the next ones and its caller cleans the rows. One
        # worker more than polars has threads keeps a chunk always being parsed while
        # this thread is busy. Results come back in order; chunks the fast path
        # refuses are read strictly, here, in order.
        workers = pl.thread_pool_size() + 1
        parsed = ordered_map(fast.read, chunks, workers) if fast is not None else ((c, None) for c in chunks)
        for chunk, frame in parsed:
            if frame is not None:
                yield frame
                continue
            try:
                # pyarrow's JSON reader does not check UTF-8; a bad byte must not reach a shard.
                chunk.data.decode("utf-8")
                table = pa_json.read_json(
                    io.BytesIO(chunk.data),
                    read_options=pa_json.ReadOptions(block_size=max(len(chunk.data), 1 << 20)),
                    parse_options=options,
                )
                if table.num_rows != chunk.n_lines:
                    raise ValueError("blank lines in chunk")
            except (pa.ArrowInvalid, ValueError, UnicodeDecodeError):
                yield _parse_lines_strictly(chunk, schema, ctx)
                continue
            lines = pl.int_range(chunk.first_line, chunk.first_line + chunk.n_lines, eager=True, dtype=pl.Int64)
            yield pl.from_arrow(table.select(schema.names)).with_columns(lines.alias("_line"))  # type: ignore[union-attr]
