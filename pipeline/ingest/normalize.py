"""Text cleaning and row filters; every drop is a named reason.

In: polars DataFrames of candidate rows (``anchor``, ``positive``, optional
``negative``, and a nullable ``drop_reason``). Out: the same rows with cleaned text
and ``drop_reason`` set on rows a filter rejects (the first rule that fires wins).

Cleaning, in this order (the order makes it idempotent):
1. zero-width and bidirectional format characters removed, other control
   characters turned into spaces;
2. HTML entities decoded, repeatedly until none is left (Reddit bodies are often
   escaped twice: ``&amp;gt;``), then step 1 again on what they decoded to;
3. Unicode NFC;
4. runs of white space folded to one space, ends stripped.

:func:`normalize_text` is the reference for one string; :func:`normalize_column` is
the vectorized version used on batches (only strings holding ``&`` take the Python
path). The tests check both agree.
"""

from __future__ import annotations

import html
import html.entities
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TypeVar

import polars as pl

# (first, last) code points removed outright: zero-width, joiners, bidi marks and
# embeddings, word joiner and invisible operators, BOM / zero-width no-break space.
_INVISIBLE_RANGES = [
    (0x00AD, 0x00AD),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
]
# Control characters (C0 less nothing, DEL, C1) and line/paragraph separators: become spaces.
_CONTROL_RANGES = [(0x00, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029)]


def _python_class(ranges: list[tuple[int, int]]) -> str:
    return "[" + "".join(f"\\u{a:04x}-\\u{b:04x}" if a != b else f"\\u{a:04x}" for a, b in ranges) + "]"


def _rust_class(ranges: list[tuple[int, int]]) -> str:
    return "[" + "".join(f"\\x{{{a:04X}}}-\\x{{{b:04X}}}" if a != b else f"\\x{{{a:04X}}}" for a, b in ranges) + "]"


_INVISIBLE_RE = re.compile(_python_class(_INVISIBLE_RANGES))
_CONTROL_RE = re.compile(_python_class(_CONTROL_RANGES))
# Python's \s and Rust's \s differ; name the white space set explicitly for both.
_SPACE_RANGES = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                 (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0x1C, 0x1F)]
_SPACE_RE = re.compile(_python_class(_SPACE_RANGES) + "+")
_INVISIBLE_RUST = _rust_class(_INVISIBLE_RANGES)
_CONTROL_RUST = _rust_class(_CONTROL_RANGES)


def _strip_controls(text: str) -> str:
    return _CONTROL_RE.sub(" ", _INVISIBLE_RE.sub("", text))


def _unescape_fully(text: str) -> str:
    while "&" in text:
        decoded = _strip_controls(html.unescape(text))
        if decoded == text:
            break
        text = decoded
    return text


def normalize_text(text: str) -> str:
    """Clean one string: controls, HTML entities, NFC, white space (see the module doc).

    Idempotent: ``normalize_text(normalize_text(s)) == normalize_text(s)``.
    """
    text = _unescape_fully(_strip_controls(text))
    text = unicodedata.normalize("NFC", text)
    text = _SPACE_RE.sub(" ", text).strip()
    # NFC or folding can, rarely, form a new entity-like or composable sequence; settle it.
    again = _SPACE_RE.sub(" ", unicodedata.normalize("NFC", _unescape_fully(text))).strip()
    return text if again == text else normalize_text(again)


# A run of white space that is not already a single plain space: what folding changes.
_FOLDABLE_RUST = (
    _rust_class(_SPACE_RANGES) + "*" + _rust_class([r for r in _SPACE_RANGES if r != (0x20, 0x20)])
    + _rust_class(_SPACE_RANGES) + "*|[ ]{2,}"
)


def _where(series: pl.Series, needs: pl.Series, step) -> pl.Series:
    """Apply ``step`` only to the strings that need it (most strings need no step at all)."""
    needs = needs.fill_null(False)
    if not needs.any():
        return series
    positions = needs.arg_true()
    return series.scatter(positions, step(series.gather(positions)))


# What a string must hold for cleaning to change it: a character outside printable
# ASCII (controls, invisible and non-ASCII characters, odd white space), an ``&``
# (an entity), two spaces in a row, or a space at either end. Printable ASCII
# without any of those is already clean, and most text is: one scan settles it.
_MAY_CHANGE_RUST = r"[^\x20-\x25\x27-\x7E]|  |^ | $"


def _normalize_series(series: pl.Series) -> pl.Series:
    """Vectorized cleaning: only the strings that may change are looked at further."""
    may_change = series.str.contains(_MAY_CHANGE_RUST).fill_null(False)
    if not may_change.any():
        return series
    if may_change.all():
        return _normalize_some(series)
    positions = may_change.arg_true()
    return series.scatter(positions, _normalize_some(series.gather(positions)))


# Entities decoded without Python, and what they decode to: printable ASCII and the
# no-break space, which no later step of cleaning removes (so the strip of controls
# that follows each decoding in normalize_text has nothing to do for them).
_COMMON_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'", "&#x27;": "'", "&nbsp;": "\xa0"}
_COMMON_ENTITY_RUST = "&(?:" + "|".join(name[1:-1] for name in _COMMON_ENTITIES) + ");"
# An ``&`` that html.unescape may decode: a numeric reference, a name that ends in ``;``
# (any of html5's), or one of the legacy names it takes without ``;`` (``&copy``, also
# as the start of a word: ``&notice`` is ``¬ice``). Any other ``&`` (``AT&T``, a URL's
# ``&q=``) is left as it is. Each match holds one ``&``, at its start.
_MAYBE_ENTITY_RUST = (
    r"&(?:#[0-9xX]|[^\t\n\f <&#;]{1,32};|"
    + "|".join(sorted((name for name in html.entities.html5 if not name.endswith(";")), key=len, reverse=True))
    + ")"
)


def _decode_common_entities(series: pl.Series) -> tuple[pl.Series, pl.Series]:
    """html.unescape until nothing changes, vectorized, for strings whose every ``&``
    that html.unescape may decode (``_MAYBE_ENTITY_RUST``) starts one of
    ``_COMMON_ENTITIES``, in every pass (Reddit's ``&gt;``, ``&amp;gt;``).

    Each such ``&`` is exactly what html.unescape's pattern matches there, and one
    pass of ``replace_many`` (leftmost, non-overlapping) decodes them all, as one pass
    of html.unescape does; ``&amp;`` leaves an ``&`` for the next pass. Returns the
    decoded strings and a mask of those with another entity, which are left to
    :func:`normalize_text`.
    """
    to_python = pl.Series(values=[False] * series.len(), dtype=pl.Boolean)
    names, characters = list(_COMMON_ENTITIES), list(_COMMON_ENTITIES.values())
    while True:
        known = series.str.count_matches(_COMMON_ENTITY_RUST).fill_null(0)
        to_python = to_python | (series.str.count_matches(_MAYBE_ENTITY_RUST).fill_null(0) != known)
        pending = (known > 0) & ~to_python
        if not pending.any():
            return series, to_python
        series = _where(series, pending, lambda s: s.str.replace_many(names, characters))


def _normalize_some(series: pl.Series) -> pl.Series:
    """Vectorized cleaning; strings with an ``&`` other than a common entity's
    (:func:`_decode_common_entities`) go through :func:`normalize_text`."""
    has_entity = series.str.contains("&", literal=True).fill_null(False)
    # The steps below scatter into ``series`` itself when an earlier one changed nothing:
    # the strings normalize_text may take are copied out first, as they came.
    entity_positions = has_entity.arg_true()
    entity_originals = series.gather(entity_positions)
    cleaned = _where(series, series.str.contains(_INVISIBLE_RUST), lambda s: s.str.replace_all(_INVISIBLE_RUST, ""))
    cleaned = _where(cleaned, cleaned.str.contains(_CONTROL_RUST), lambda s: s.str.replace_all(_CONTROL_RUST, " "))
    to_python = pl.Series(values=[], dtype=pl.Boolean)
    if entity_positions.len():
        # Decoded where normalize_text does it: after controls, before NFC and folding.
        decoded, to_python = _decode_common_entities(cleaned.gather(entity_positions))
        cleaned = cleaned.scatter(entity_positions, decoded)
    # ASCII text is already NFC; only the rest pays for normalization.
    cleaned = _where(cleaned, cleaned.str.contains(r"[^\x00-\x7F]"), lambda s: s.str.normalize("NFC"))
    # Only the runs folding changes are replaced: a pattern matching every white space
    # run replaces each single space too (a match per word), ten times the work.
    cleaned = _where(cleaned, cleaned.str.contains(_FOLDABLE_RUST), lambda s: s.str.replace_all(_FOLDABLE_RUST, " "))
    cleaned = _where(cleaned, cleaned.str.starts_with(" ") | cleaned.str.ends_with(" "), lambda s: s.str.strip_chars(" "))
    if to_python.any():
        fixed = [normalize_text(s) for s in entity_originals.filter(to_python).to_list()]
        cleaned = cleaned.scatter(entity_positions.filter(to_python), pl.Series(fixed, dtype=pl.String))
    return cleaned


def normalize_column(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """``frame`` with ``column`` cleaned (nulls stay null)."""
    return frame.with_columns(_normalize_series(frame.get_column(column)).alias(column))


@dataclass(frozen=True)
class TextFilters:
    """Length bounds and pair rules, applied after cleaning.

    Attributes:
        min_chars: texts shorter than this are dropped (``too_short``).
        max_chars: texts longer than this are dropped (``too_long``).
        drop_anchor_equals_positive: drop pairs whose anchor equals the positive.
        clean_text: clean the texts (the module's four steps) before the filters; off, the
            texts are kept exactly as the source gave them (``pairforge ablate``'s
            ``naive`` variant: the pairs as a user gets them without pairforge).
    """

    min_chars: int = 2
    max_chars: int = 4000
    drop_anchor_equals_positive: bool = field(default=True, metadata={"flag": "--keep-equal-pairs"})
    clean_text: bool = True


FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


def set_reason(frame: FrameT, condition: pl.Expr, reason: str) -> FrameT:
    """Mark rows where ``condition`` holds with ``reason``, unless an earlier reason did.

    Works on DataFrames and LazyFrames alike: sources use it on their candidates too.
    """
    return frame.with_columns(
        pl.when(pl.col("drop_reason").is_null() & condition.fill_null(False))
        .then(pl.lit(reason))
        .otherwise(pl.col("drop_reason"))
        .alias("drop_reason")
    )


def clean_and_filter(frame: pl.DataFrame, filters: TextFilters) -> pl.DataFrame:
    """Clean the text columns of candidate rows and mark the rows the filters reject.

    Reasons: ``empty_text`` (nothing left after cleaning), ``too_short``, ``too_long``,
    ``anchor_equals_positive``, ``negative_equals_anchor_or_positive``.

    Rows that come in with a ``drop_reason`` keep it and pass through with their text
    as it was: no filter can change their fate, and cleaning is the costly part (in NLI,
    two rows in three are already dropped as ``not_entailment``).
    """
    texts = [c for c in ("anchor", "positive", "negative") if c in frame.columns]
    if "drop_reason" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("drop_reason"))
    pending = frame.get_column("drop_reason").is_null()
    if not filters.clean_text:
        pass  # the texts as the source gave them; the filters still apply
    elif pending.all():
        for column in texts:
            frame = normalize_column(frame, column)
    elif pending.any():
        positions = pending.arg_true()
        frame = frame.with_columns(
            frame.get_column(c).scatter(positions, _normalize_series(frame.get_column(c).gather(positions)))
            for c in texts
        )
    # A null text (a negative a row does not have) compares as null, read as "no": each
    # row is judged on the texts it has, whatever else is in the batch. One pass: the
    # lengths are counted once, and the first rule that fires names the reason.
    lengths = [f"_length_{c}" for c in texts]
    rules = [
        (pl.any_horizontal([pl.col(n) == 0 for n in lengths]), "empty_text"),
        (pl.any_horizontal([pl.col(n) < filters.min_chars for n in lengths]), "too_short"),
        (pl.any_horizontal([pl.col(n) > filters.max_chars for n in lengths]), "too_long"),
    ]
    if filters.drop_anchor_equals_positive:
        rules.append((pl.col("anchor") == pl.col("positive"), "anchor_equals_positive"))
    if "negative" in texts:
        rules.append(
            ((pl.col("negative") == pl.col("anchor")) | (pl.col("negative") == pl.col("positive")),
             "negative_equals_anchor_or_positive")
        )
    # A rule's when/then is null where it does not fire: the first non-null wins.
    fired = [pl.when(condition.fill_null(False)).then(pl.lit(reason)) for condition, reason in rules]
    return (
        frame.with_columns(pl.col(c).str.len_chars().alias(n) for c, n in zip(texts, lengths))
        .with_columns(pl.coalesce(pl.col("drop_reason"), *fired).alias("drop_reason"))
        .drop(lengths)
    )
