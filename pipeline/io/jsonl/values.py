"""JSON lines of any values: each line parsed as whatever JSON it holds.

In: a JSON-lines path and its :class:`~pipeline.io.context.ReadContext`. Out:
:class:`JsonValues` batches (line numbers and parsed values), a batch per chunk;
lines that are not JSON rejected into the context. For files whose lines are not all
objects of one schema (the 1B-pairs training files mix lists and objects).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson

from pipeline.io.context import ReadContext
from pipeline.io.lines import line_chunks


@dataclass(frozen=True)
class JsonValues:
    """Parsed lines of a JSON-lines file: ``values[i]`` is the JSON value on line ``lines[i]``."""

    lines: list[int]
    values: list[Any]


def read_json_values(path: Path, ctx: ReadContext) -> Iterator[JsonValues]:
    """Parse every line of a JSON-lines file as any JSON value (an array, an object, a string...).

    For files whose lines are not all objects of one schema (the 1B-pairs training
    files mix ``["a", "b"]`` lists with ``{"set": [...]}`` objects), so
    :func:`read_jsonl`'s Arrow fast path does not apply. One batch per chunk of about
    ``ctx.chunk_bytes``. Lines that cannot be parsed are rejected into ``ctx``
    (empty_line, invalid_utf8, malformed_json, line_too_long); what a value means is
    the caller's business.

    Raises:
        InputFileError: the archive is truncated or corrupt (batches before the break
            were already yielded).
    """
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    with contextlib.closing(line_chunks(path, ctx)) as chunks:
        for chunk in chunks:
            lines: list[int] = []
            values: list[Any] = []
            number = chunk.first_line
            for raw in chunk.data.split(b"\n")[: chunk.n_lines]:
                try:
                    values.append(loads(raw))
                    lines.append(number)
                except decode_error:
                    ctx.reject(number, _json_line_problem(raw), raw)
                number += 1
            yield JsonValues(lines, values)


def _json_line_problem(raw: bytes) -> str:
    """Why orjson refused a line: empty, not UTF-8, or not JSON."""
    if not raw.strip():
        return "empty_line"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "malformed_json"
