"""Tests of the S2ORC source: fixture, bad input, bundled example, real sample."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from pipeline.ingest.config import IngestConfig
from pipeline.ingest.plan import ingest_source
from pipeline.ingest.sources import s2orc
from pipeline.io.context import ReadContext
from tests.helpers import EXAMPLES, TEST_DATA

TINY = TEST_DATA / "s2orc" / "tiny.jsonl"
EXAMPLE = EXAMPLES / "s2orc" / "metadata_sample.jsonl"
ALL_KEPT = IngestConfig(heldout_fraction=0.0)


def candidates(*paths: Path) -> tuple[dict[str, pl.DataFrame], ReadContext]:
    """The source's candidate rows for ``paths``, without the framework's filters."""
    frames = []
    ctx = None
    for index, path in enumerate(paths):
        ctx = ReadContext(path=path, display_name=str(path), file_index=index)
        for batch in s2orc.stage_file(path, ctx, s2orc.Options()):
            provenance = [pl.lit(index, dtype=pl.Int64).alias("_file_index"), pl.lit(str(path)).alias("source_file")]
            frames.append(batch.with_columns(provenance))
    built = s2orc.build_candidates(pl.concat(frames).lazy(), s2orc.Options())
    return {name: frame.collect() for name, frame in built.items()}, ctx


def reasons(frame: pl.DataFrame) -> dict[str, str | None]:
    """The drop reason of each id's first row (later rows with the same id are duplicates)."""
    first: dict[str, str | None] = {}
    for id_, reason in zip(frame["id"].to_list(), frame["drop_reason"].to_list()):
        first.setdefault(id_, reason)
    return first


def shard_rows(folder: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(folder.rglob("part-*.parquet"))])


def test_tiny_title_abstract_reasons() -> None:
    built, _ = candidates(TINY)
    frame = built["s2orc-title-abstract"]
    assert frame.height == 7
    assert frame["drop_reason"].to_list() == [
        None, None, "no_abstract", "no_title", "no_abstract", "duplicate_paper_id", None
    ]
    kept = frame.filter(pl.col("drop_reason").is_null())
    assert kept["id"].to_list() == ["101", "102", "106"]
    assert kept.row(0, named=True)["anchor"] == "Sentence embeddings from entailment pairs"
    assert kept.row(0, named=True)["positive"] == "We train a siamese encoder on entailment pairs."


def test_tiny_citation_reasons() -> None:
    built, _ = candidates(TINY)
    frame = built["s2orc-citations"]
    # 5 + 2 + 1 + 0 (null list) + 0 (empty list) + 1 + 1 outbound entries.
    assert frame.height == 10
    assert frame["drop_reason"].to_list() == [
        None,  # 101->102
        "cited_abstract_missing",  # 101->103
        "cited_paper_not_in_input",  # 101->999
        "duplicate_citation",  # 101->102 again
        "self_citation",  # 101->101
        None,  # 102->101
        "cited_id_missing",  # null in the list
        "citing_abstract_missing",  # 103->101
        "duplicate_citation",  # 102->101 from the repeated line of paper 102
        None,  # 106->102
    ]
    kept = frame.filter(pl.col("drop_reason").is_null())
    assert kept["id"].to_list() == ["101->102", "102->101", "106->102"]
    # The cited abstract comes from the first line of paper 102, not its repeat.
    assert kept.row(2, named=True)["positive"] == "We collect sentence pairs scored for similarity."
    assert kept["source_line"].to_list() == [1, 2, 7]


def test_tiny_ingest_manifests(tmp_path: Path) -> None:
    result = ingest_source("s2orc", [TINY], tmp_path, ALL_KEPT, progress=False)
    manifests = {m["dataset"]: m for m in result.manifests}
    titles = manifests["s2orc-title-abstract"]
    assert (titles["unit"], titles["rows_read"], titles["rows_kept"]) == ("line", 7, 3)
    assert titles["dropped"] == {"no_abstract": 2, "no_title": 1, "duplicate_paper_id": 1}
    cites = manifests["s2orc-citations"]
    assert (cites["unit"], cites["rows_read"], cites["rows_kept"]) == ("citation edge", 10, 3)
    assert sum(cites["dropped"].values()) == 7
    rows = shard_rows(tmp_path / "s2orc-citations")
    assert rows.columns == ["anchor", "positive", "id", "source_file", "source_line"]
    assert rows["id"].n_unique() == rows.height


def _bad_lines() -> bytes:
    good = TINY.read_bytes().splitlines()
    return b"\n".join(
        [
            b"\xef\xbb\xbf" + good[0],  # BOM on the first line
            good[1] + b"\r",  # CRLF
            b'{"paper_id": "201", "title": "Truncated',  # malformed JSON
            b'{"paper_id": "202", "title": "Bad \xff bytes", "abstract": "x", "outbound_citations": []}',
            b'{"paper_id": null, "title": "No id", "abstract": "An abstract.", "outbound_citations": ["101"]}',
            b'{"paper_id": 203, "title": "Numeric id", "abstract": "An abstract.", "outbound_citations": []}',
            b'{"paper_id": "204", "title": "Citations as a string", "abstract": "x", "outbound_citations": "101"}',
            b"[1, 2, 3]",
            b"",
            good[6],
        ]
    ) + b"\n"


@pytest.mark.parametrize("compression", ["plain", "gz"])
def test_bad_lines_are_quarantined_and_counted_only_per_line(tmp_path: Path, compression: str) -> None:
    data = _bad_lines()
    path = tmp_path / "bad.jsonl"
    if compression == "gz":
        path = tmp_path / "bad.jsonl.gz"
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    result = ingest_source("s2orc", [path], tmp_path / "out", ALL_KEPT, progress=False)
    manifests = {m["dataset"]: m for m in result.manifests}
    titles = manifests["s2orc-title-abstract"]
    bad = {
        "malformed_json": 1,
        "invalid_utf8": 1,
        "missing_field:paper_id": 1,
        "wrong_type:paper_id": 1,
        "wrong_type:outbound_citations": 1,
        "not_a_json_object": 1,
        "empty_line": 1,
    }
    assert {k: titles["dropped"].get(k) for k in bad} == bad
    assert titles["rows_read"] == 10
    assert titles["rows_kept"] == 3  # 101 (BOM stripped), 102 (CR stripped), 106
    assert titles["quarantine"]["rows"] == 7
    quarantine = tmp_path / "out" / "s2orc-title-abstract" / "quarantine.jsonl"
    quarantined = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert sorted(q["line"] for q in quarantined) == [3, 4, 5, 6, 7, 8, 9]
    # Edges of unreadable lines cannot be counted: the citation dataset counts only readable lines' edges.
    cites = manifests["s2orc-citations"]
    assert cites["rows_read"] == 5 + 2 + 1
    assert cites["rows_kept"] == 3
    assert cites["quarantine"]["rows"] == 0


def test_truncated_archive_keeps_rows_before_the_break(tmp_path: Path) -> None:
    data = gzip.compress(TINY.read_bytes() * 200, mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    result = ingest_source("s2orc", [path], tmp_path / "out", ALL_KEPT, progress=False)
    assert result.failures and "cut.jsonl.gz" in result.failures[0]["error"]
    for manifest in result.manifests:
        assert manifest["failures"] == result.failures
        assert manifest["rows_read"] == manifest["rows_kept"] + sum(manifest["dropped"].values())


def test_papers_cite_across_input_files(tmp_path: Path) -> None:
    lines = TINY.read_text().splitlines()
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(lines[0] + "\n")  # paper 101 cites 102, which is in the other file
    second.write_text(lines[1] + "\n")
    built, _ = candidates(first, second)
    assert reasons(built["s2orc-citations"])["101->102"] is None
    assert reasons(built["s2orc-citations"])["102->101"] is None


def test_bundled_example_gives_pairs(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    result = ingest_source("s2orc", [EXAMPLE], tmp_path, ALL_KEPT, progress=False)
    manifests = {m["dataset"]: m for m in result.manifests}
    assert manifests["s2orc-title-abstract"]["rows_read"] == len(rows)
    assert manifests["s2orc-title-abstract"]["rows_kept"] == sum(bool((r["abstract"] or "").strip()) for r in rows)
    assert manifests["s2orc-citations"]["rows_read"] == sum(len(r["outbound_citations"]) for r in rows)
    assert manifests["s2orc-citations"]["rows_kept"] > 20


def expected_from_plain_json(path: Path) -> tuple[Counter, Counter]:
    """Drop reasons of both datasets, computed line by line with plain json (no polars)."""
    papers = [json.loads(line) for line in path.read_bytes().splitlines()]
    first_abstract: dict[str, str | None] = {}
    titles: Counter = Counter()
    for paper in papers:
        if paper["paper_id"] in first_abstract:
            titles["duplicate_paper_id"] += 1
            continue
        first_abstract[paper["paper_id"]] = paper["abstract"]
        if not (paper["title"] or "").strip():
            titles["no_title"] += 1
        elif not (paper["abstract"] or "").strip():
            titles["no_abstract"] += 1
        else:
            titles["kept"] += 1
    cites: Counter = Counter()
    seen = set()
    for paper in papers:
        citing = paper["paper_id"]
        for cited in paper["outbound_citations"] or []:
            if (citing, cited) in seen:
                cites["duplicate_citation"] += 1
                continue
            seen.add((citing, cited))
            if cited == citing:
                cites["self_citation"] += 1
            elif cited not in first_abstract:
                cites["cited_paper_not_in_input"] += 1
            elif not (paper["abstract"] or "").strip():
                cites["citing_abstract_missing"] += 1
            elif not (first_abstract[cited] or "").strip():
                cites["cited_abstract_missing"] += 1
            else:
                cites["kept"] += 1
    return titles, cites


def test_real_sample_exact_counts(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "s2orc" / "sample.jsonl"
    expected_titles, expected_cites = expected_from_plain_json(path)
    # What the README and a read of the file say: 488 of 1000 papers have an abstract;
    # of the 3107 outbound citations, the only ones to papers of the sample are 4 self-citations.
    assert expected_titles == Counter({"kept": 488, "no_abstract": 512})
    assert expected_cites == Counter({"cited_paper_not_in_input": 3090, "duplicate_citation": 13, "self_citation": 4})

    built, ctx = candidates(path)
    assert ctx.bad_rows.as_dict() == {}
    for name, expected in (("s2orc-title-abstract", expected_titles), ("s2orc-citations", expected_cites)):
        got = Counter(built[name]["drop_reason"].fill_null("kept").to_list())
        assert got == expected, name
        kept_ids = built[name].filter(pl.col("drop_reason").is_null())["id"]
        assert kept_ids.n_unique() == kept_ids.len()

    result = ingest_source("s2orc", [path], tmp_path, ALL_KEPT, progress=False)
    manifests = {m["dataset"]: m for m in result.manifests}
    titles = manifests["s2orc-title-abstract"]
    assert titles["rows_read"] == 1000
    assert titles["dropped"]["no_abstract"] == 512
    # Abstracts over the default 4000 characters are dropped by the framework's filter.
    too_long = sum(len(p["abstract"] or "") > 4000 for p in map(json.loads, path.read_bytes().splitlines()))
    assert titles["rows_kept"] + titles["dropped"].get("too_long", 0) + titles["dropped"].get("duplicate", 0) == 488
    assert titles["dropped"].get("too_long", 0) == too_long
    cites = manifests["s2orc-citations"]
    assert (cites["rows_read"], cites["rows_kept"]) == (3107, 0)


def test_output_is_deterministic(tmp_path: Path) -> None:
    first = ingest_source("s2orc", [EXAMPLE], tmp_path / "a", ALL_KEPT, progress=False).manifests
    second = ingest_source("s2orc", [EXAMPLE], tmp_path / "b", ALL_KEPT, progress=False).manifests
    assert [m["shards"] for m in first] == [m["shards"] for m in second]
    assert [m["dropped"] for m in first] == [m["dropped"] for m in second]
