"""Whole JSON documents (SPECTER's ``data.json`` and ``metadata.json``).

In: a path (plain or compressed). Out: the parsed value; an invalid document raises
:class:`~pipeline.io.errors.InputFileError` naming the file and the position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pipeline.io.compression import open_decompressed
from pipeline.io.errors import InputFileError
from pipeline.io.lines import BOM


def read_json_document(path: Path) -> Any:
    """Parse a whole JSON document (SPECTER's data.json, metadata.json).

    Raises:
        InputFileError: the file is not valid JSON (names the file and the position).
    """
    with open_decompressed(path) as stream:
        data = stream.read()
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not a valid JSON document: {exc}") from exc
