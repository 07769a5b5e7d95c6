"""The one record type of a pair corpus, and its Arrow schema.

In: nothing. Out: :class:`PairRecord`, the column names and order every shard uses,
and :func:`arrow_schema` for a corpus with or without negatives.

Column order matters: sentence-transformers reads column 0 as the anchor, column 1
as the positive and any later text column as a negative, so the text columns come
first and provenance (``id``, ``source_file``, ``source_line``) last.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TEXT_COLUMNS: tuple[str, ...] = ("anchor", "positive", "negative")
PROVENANCE_COLUMNS: tuple[str, ...] = ("id", "source_file", "source_line")


@dataclass(frozen=True, slots=True)
class PairRecord:
    """One training example: an anchor, its positive and an optional hard negative.

    Attributes:
        anchor: the query or first sentence.
        positive: the text that should embed close to the anchor.
        negative: a text that should embed farther away, or None.
        source: the source module that produced the record (``nli``, ``reddit``...).
        id: a stable id, unique within its dataset.
        source_file: the input file the record came from (its name as given).
        source_line: the 1-based line (or record) number in that file.
    """

    anchor: str
    positive: str
    negative: str | None
    source: str
    id: str
    source_file: str = ""
    source_line: int = 0


def shard_columns(with_negative: bool) -> list[str]:
    """The columns of a shard, in order."""
    texts = ["anchor", "positive"] + (["negative"] if with_negative else [])
    return texts + list(PROVENANCE_COLUMNS)


def arrow_schema(with_negative: bool) -> pa.Schema:
    """The Arrow schema of a shard with or without a ``negative`` column."""
    fields = [pa.field(name, pa.string(), nullable=False) for name in ("anchor", "positive")]
    if with_negative:
        fields.append(pa.field("negative", pa.string(), nullable=False))
    fields += [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),
    ]
    return pa.schema(fields)
