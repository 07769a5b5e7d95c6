"""Delimited text files: TSV/CSV in, string columns out.

In: a path (plain or compressed), its :class:`~pipeline.io.context.ReadContext`, the
delimiter and the quoting rule. Out: polars DataFrames of string columns with a
``_line`` column (the line a record starts on); records of the wrong field count or
invalid UTF-8 rejected into the context.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterator, Mapping

import polars as pl

from pipeline.io.context import ReadContext
from pipeline.io.errors import InputFileError


def read_delimited(
    path: Path,
    ctx: ReadContext,
    *,
    delimiter: str,
    quoted: bool,
    columns: list[str],
    header: bool = True,
    batch_rows: int = 200_000,
) -> Iterator[pl.DataFrame]:
    """Read a TSV/CSV file into string columns named ``columns`` (by position or header).

    With ``quoted=False`` quote characters are ordinary text (GLUE's TSV, STSb); with
    ``quoted=True`` fields may be quoted and span lines (pandas' CSV export), and
    ``_line`` is the line where the record starts. Records whose field count differs
    from the header are rejected as ``wrong_field_count``; undecodable ones as
    ``invalid_utf8``.
    """
    import csv

    csv.field_size_limit(ctx.max_line_bytes)
    with ctx.open(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
        first = text.read(1)
        if first and first != "\ufeff":
            text_iter = _prepend(first, text)
        else:
            text_iter = text
        if quoted:
            reader = csv.reader(text_iter, delimiter=delimiter)
        else:
            reader = csv.reader(text_iter, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        names: list[str] = []
        batch: dict[str, list[Any]] = {name: [] for name in columns}
        lines: list[int] = []
        start_line = 1
        try:
            for record in reader:
                line = start_line
                start_line = reader.line_num + 1
                if not names:
                    if header:
                        names = [n.strip() for n in record]
                        missing = [c for c in columns if c not in names]
                        if missing:
                            raise InputFileError(f"{path}: header has no column {missing} (header: {names})")
                        continue
                    names = list(columns)
                if not record or record == [""]:
                    ctx.reject(line, "empty_line", "")
                    continue
                if len(record) != len(names):
                    ctx.reject(line, "wrong_field_count", delimiter.join(record))
                    continue
                if any("\udc80" <= ch <= "\udcff" for field in record for ch in field):
                    ctx.reject(line, "invalid_utf8", delimiter.join(record).encode("utf-8", "surrogateescape"))
                    continue
                row = dict(zip(names, record))
                for name in columns:
                    batch[name].append(row[name])
                lines.append(line)
                if len(lines) >= batch_rows:
                    yield _frame(batch, lines)
                    batch = {name: [] for name in columns}
                    lines = []
        except csv.Error as exc:
            raise InputFileError(f"{path}: unreadable CSV near line {start_line}: {exc}") from exc
        ctx.lines_seen = start_line - 1
        if lines:
            yield _frame(batch, lines)


def _prepend(first: str, text: io.TextIOBase) -> Iterator[str]:
    rest = text.readline()
    yield first + rest
    yield from text


def _frame(batch: Mapping[str, list[Any]], lines: list[int]) -> pl.DataFrame:
    frame = pl.DataFrame({name: pl.Series(name, values, dtype=pl.String) for name, values in batch.items()})
    return frame.with_columns(pl.Series("_line", lines, dtype=pl.Int64))
