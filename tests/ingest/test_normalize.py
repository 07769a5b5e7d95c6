"""Text cleaning: properties (hypothesis) and the named cases that motivated each step."""

from __future__ import annotations

import unicodedata

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ingest.normalize import TextFilters, clean_and_filter, normalize_column, normalize_text

# Pieces that exercise each cleaning step, mixed with arbitrary characters.
TRICKY = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["&amp;", "&lt;", "&#x200b;", "&gt;", "&", ";", "\u200b", "\u0301", "e", " ", "\t", "\r\n", "\x00", "\u2028", "\xa0", "\ufeff"]),
        # The entities decoded without Python, their pieces, and a mark NFC composes with ">".
        st.sampled_from(["&quot;", "&#39;", "&#x27;", "&nbsp;", "&amp;gt;", "gt;", "amp;", "#39;", "\u0338", "&Amp;", "&gt"]),
        # Ampersands html.unescape leaves (a URL's, AT&T) and ones it takes: legacy names
        # without ';', also as a word's start, any html5 name with ';', numeric references.
        st.sampled_from(["&q=", "AT&T", "&3", "&#", "&#x", "&#12", "&copy", "&notice", "&sub;", "&AMP", "&frac12", "x;", "&e"]),
    ),
    max_size=30,
).map("".join)


@given(TRICKY)
@settings(max_examples=400, deadline=None)
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once


@given(TRICKY)
@settings(max_examples=400, deadline=None)
def test_normalized_text_is_nfc_trimmed_and_free_of_controls(text: str) -> None:
    out = normalize_text(text)
    assert unicodedata.is_normalized("NFC", out)
    assert out == out.strip()
    assert "  " not in out
    assert not any(unicodedata.category(ch) == "Cc" for ch in out)
    assert not any(ch in out for ch in "\u200b\u200c\u200d\ufeff\u2028")


@given(st.lists(TRICKY, max_size=20))
@settings(max_examples=200, deadline=None)
def test_vectorized_cleaning_matches_the_reference(texts: list[str]) -> None:
    frame = normalize_column(pl.DataFrame({"t": pl.Series(texts, dtype=pl.String)}), "t")
    assert frame["t"].to_list() == [normalize_text(t) for t in texts]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  hello \t world\r\n", "hello world"),
        ("fish &amp; chips", "fish & chips"),
        ("&amp;gt; quoted twice", "> quoted twice"),
        ("zero\u200bwidth", "zerowidth"),
        ("cafe\u0301", "caf\u00e9"),
        ("nul\x00byte", "nul byte"),
        ("\ufeffbom at start", "bom at start"),
        ("non\xa0breaking", "non breaking"),
    ],
)
def test_named_cleaning_cases(raw: str, clean: str) -> None:
    assert normalize_text(raw) == clean


def test_filters_mark_each_rejected_row_with_its_reason() -> None:
    frame = pl.DataFrame(
        {
            "anchor": ["ok anchor", "x", "same", "fine", "  ", "long " * 10],
            "positive": ["ok positive", "fine text", "same", "fine too", "text", "ok"],
            "drop_reason": pl.Series([None, None, None, "earlier_reason", None, None], dtype=pl.String),
        }
    )
    out = clean_and_filter(frame, TextFilters(min_chars=2, max_chars=40))
    assert out["drop_reason"].to_list() == [None, "too_short", "anchor_equals_positive", "earlier_reason", "empty_text", "too_long"]


def test_a_short_negative_is_dropped_whatever_else_is_in_the_batch() -> None:
    frame = pl.DataFrame(
        {
            "anchor": ["a long enough anchor", "another anchor here"],
            "positive": ["a long enough positive", "another positive here"],
            "negative": pl.Series(["x", None], dtype=pl.String),
            "drop_reason": pl.Series([None, "not_entailment"], dtype=pl.String),
        }
    )
    out = clean_and_filter(frame, TextFilters(min_chars=2))
    assert out["drop_reason"].to_list() == ["too_short", "not_entailment"]
