"""The one record type of a pair corpus, and the columns and Arrow schemas of its shards.

In: nothing. Out: :class:`PairRecord`, the column names and order every shard uses,
:func:`arrow_schema` for a shard with or without negatives (``negative``, or
``negative_1 .. negative_k`` for mined n-tuples), and :func:`text_columns`, the
columns a loss reads.

Column order matters: sentence-transformers reads column 0 as the anchor, column 1
as the positive and any later text column as a negative, so the text columns come
first and provenance (``id``, ``source_file``, ``source_line``) last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pyarrow as pa

PROVENANCE_COLUMNS: tuple[str, ...] = ("id", "source_file", "source_line")
# What every pair shard holds, whatever its negatives.
PAIR_COLUMNS: tuple[str, ...] = ("anchor", "positive", *PROVENANCE_COLUMNS)
_NEGATIVE_COLUMN = re.compile(r"^negative(_[1-9][0-9]*)?$")


@dataclass(frozen=True, slots=True)
class PairRecord:
    """One training example: an anchor, its positive and an optional hard negative.

    Attributes:
        anchor: the query or first sentence.
        positive: the text that should embed close to the anchor.
        negative: a text that should embed farther away, or None.
        id: a stable id, unique within its dataset.
        source_file: the input file the record came from (its name as given).
        source_line: the 1-based line (or record) number in that file.
    """

    anchor: str
    positive: str
    negative: str | None
    id: str
    source_file: str = ""
    source_line: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "PairRecord":
        """A record from a shard row (a dict of its columns; ``negative_1`` counts as the negative)."""
        negative = row.get("negative", row.get("negative_1"))
        return cls(row["anchor"], row["positive"], negative, row["id"], row.get("source_file", ""), row.get("source_line", 0))


def is_negative_column(name: str) -> bool:
    """Whether ``name`` is a negative's column: ``negative`` or ``negative_1``, ``negative_2``..."""
    return _NEGATIVE_COLUMN.match(name) is not None


def negative_columns(names: Sequence[str]) -> list[str]:
    """The negative columns among ``names``, in order (``negative``, then ``negative_1..k`` by number)."""
    negatives = [name for name in names if is_negative_column(name)]
    return sorted(negatives, key=lambda name: int(name.split("_")[1]) if "_" in name else 0)


def text_columns(columns: Sequence[str]) -> list[str]:
    """The columns a loss reads, in order: anchor, positive, then the negatives.

    Raises:
        ValueError: ``anchor`` or ``positive`` is missing.
    """
    if "anchor" not in columns or "positive" not in columns:
        raise ValueError(f"a pair dataset needs anchor and positive columns, got {list(columns)}")
    return ["anchor", "positive", *negative_columns(columns)]


def shard_columns(with_negative: bool) -> list[str]:
    """The columns of a shard, in order."""
    return arrow_schema(with_negative).names


def arrow_schema(with_negative: bool | int) -> pa.Schema:
    """The Arrow schema of a shard: no negative (False), one ``negative`` column (True
    or 1), or ``negative_1 .. negative_k`` for ``k > 1`` negatives per row."""
    count = int(with_negative)
    if count <= 1:
        negatives = ["negative"] if count else []
    else:
        negatives = [f"negative_{i}" for i in range(1, count + 1)]
    fields = [pa.field(name, pa.string(), nullable=False) for name in ("anchor", "positive", *negatives)]
    fields += [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),
    ]
    return pa.schema(fields)
