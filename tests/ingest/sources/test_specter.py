"""Tests of the SPECTER source: fixture, bad input, bundled example, real sample."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from pipeline.ingest.config import IngestConfig
from pipeline.ingest.plan import ingest_source
from pipeline.ingest.sources import specter
from pipeline.ingest.stage import input_entry
from pipeline.io.context import ReadContext
from pipeline.io.errors import InputFileError
from tests.helpers import EXAMPLES, TEST_DATA

TINY = TEST_DATA / "specter" / "tiny"
EXAMPLE = EXAMPLES / "specter"
ALL_KEPT = IngestConfig(heldout_fraction=0.0)


def candidates(*paths: Path) -> tuple[pl.DataFrame, ReadContext]:
    """The source's candidate triplets for ``paths``, without the framework's filters."""
    frames = []
    ctx = None
    for index, path in enumerate(paths):
        ctx = ReadContext(path=path, display_name=str(path), file_index=index)
        for batch in specter.stage_file(path, ctx, specter.Options()):
            provenance = [pl.lit(index, dtype=pl.Int64).alias("_file_index"), pl.lit(str(path)).alias("source_file")]
            frames.append(batch.with_columns(provenance))
    built = specter.build_candidates(pl.concat(frames).lazy(), specter.Options())
    return built["specter-triplets"].collect(), ctx


def copy_layout(folder: Path, data: object, metadata: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.json").write_text(json.dumps(data))
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder / "data.json"


def test_tiny_triplets_and_reasons() -> None:
    frame, ctx = candidates(TINY / "data.json")
    assert ctx.bad_rows.as_dict() == {}
    assert frame["id"].to_list() == [
        "q1->c1", "q1->c2", "q1->c3", "q2->c1", "q2->c4", "q3->c2", "q4->c1", "q5->c1"
    ]
    assert frame["drop_reason"].to_list() == [
        None,
        None,
        "cited_title_missing",  # title null
        None,
        "cited_metadata_missing",
        "no_cited_by_cited_negative",  # its only count-1 paper has no metadata
        "query_metadata_missing",
        "query_title_missing",  # empty title
    ]
    # source_line: the entry's position among all entries of data.json.
    assert frame["source_line"].to_list() == [1, 2, 3, 7, 8, 10, 12, 14]
    kept = frame.filter(pl.col("drop_reason").is_null())
    q1, q2 = "Citation-informed document embeddings", "Recommending papers to cite with graph networks"
    c1, c2 = "A large corpus of paper metadata", "Pretrained transformers for science"
    n1, n2 = "Soil microbes under crop rotation", "Sleep and working memory in adolescents"
    # The second direct citation of q1 takes the second negative (n3 has a blank title).
    assert kept.select("anchor", "positive", "negative").rows() == [(q1, c1, n1), (q1, c2, n2), (q2, c1, n1)]


def test_folder_input_and_both_files_hashed(tmp_path: Path) -> None:
    assert specter.companion_files(TINY) == [TINY / "data.json", TINY / "metadata.json"]
    folder = tmp_path / "copy"
    shutil.copytree(TINY, folder)
    before = input_entry("specter", folder / "data.json")
    assert before["files"] == [str(folder / "data.json"), str(folder / "metadata.json")]
    (folder / "metadata.json").write_text((folder / "metadata.json").read_text().replace("Soil", "Sand"))
    assert input_entry("specter", folder / "data.json")["sha256"] != before["sha256"]
    result = ingest_source("specter", [folder], tmp_path / "out", ALL_KEPT, progress=False)
    (manifest,) = result.manifests
    assert (manifest["unit"], manifest["rows_read"], manifest["rows_kept"]) == ("citation edge", 8, 3)
    rows = pl.read_parquet(tmp_path / "out" / "specter-triplets" / "part-00000.parquet")
    assert rows.columns == ["anchor", "positive", "negative", "id", "source_file", "source_line"]
    assert "Sand microbes under crop rotation" in rows["negative"].to_list()


def test_missing_metadata_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(InputFileError, match="metadata.json"):
        ingest_source("specter", [tmp_path / "data.json"], tmp_path / "out", ALL_KEPT, progress=False)


@pytest.mark.parametrize(
    "data, reason",
    [
        ({"q1": ["c1"]}, "malformed_query"),
        ({"q1": {"c1": {"count": 3}}}, "unknown_count"),
        ({"q1": {"c1": {"count": "5"}}}, "unknown_count"),
        ({"q1": {"c1": {"count": True}}}, "unknown_count"),
        ({"q1": {"c1": 5}}, "unknown_count"),
    ],
)
def test_unreadable_entries_are_quarantined_and_counted(tmp_path: Path, data: dict, reason: str) -> None:
    metadata = {"q2": {"title": "Query paper"}, "c1": {"title": "Cited paper"}, "n1": {"title": "Negative paper"}}
    graph = {**data, "q2": {"c1": {"count": 5}, "n1": {"count": 1}}}
    path = copy_layout(tmp_path / "in", graph, metadata)
    result = ingest_source("specter", [path], tmp_path / "out", ALL_KEPT, progress=False)
    (manifest,) = result.manifests
    assert manifest["dropped"] == {reason: 1}
    assert (manifest["rows_read"], manifest["rows_kept"], manifest["quarantine"]["rows"]) == (2, 1, 1)
    quarantined = json.loads((tmp_path / "out" / "specter-triplets" / "quarantine.jsonl").read_text())
    assert (quarantined["reason"], quarantined["line"]) == (reason, 1)


@pytest.mark.parametrize("content", [b'{"q1": {"c1": {"count": 5}', b"\xff\xfe{}", b"[1, 2]"])
def test_broken_data_json_is_a_failure_naming_the_file(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "in"
    copy_layout(folder, {}, {})
    (folder / "data.json").write_bytes(content)
    result = ingest_source("specter", [folder / "data.json"], tmp_path / "out", ALL_KEPT, progress=False)
    assert len(result.failures) == 1 and "data.json" in result.failures[0]["error"]
    (manifest,) = result.manifests
    assert (manifest["rows_read"], manifest["rows_kept"]) == (0, 0)


def test_empty_data_json_is_refused_before_reading(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    copy_layout(folder, {}, {})
    (folder / "data.json").write_bytes(b"")
    with pytest.raises(ValueError, match=r"input is empty: .*data.json"):
        ingest_source("specter", [folder / "data.json"], tmp_path / "out", ALL_KEPT, progress=False)


def test_bom_and_crlf_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(TINY, folder)
    for name in ("data.json", "metadata.json"):
        text = (folder / name).read_text().replace("\n", "\r\n")
        (folder / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    frame, _ = candidates(folder / "data.json")
    assert frame.filter(pl.col("drop_reason").is_null()).height == 3


def test_same_edge_in_two_inputs_is_kept_once(tmp_path: Path) -> None:
    second = tmp_path / "second"
    shutil.copytree(TINY, second)
    frame, _ = candidates(TINY / "data.json", second / "data.json")
    assert Counter(frame["drop_reason"].to_list())["duplicate_edge"] == 8
    kept_ids = frame.filter(pl.col("drop_reason").is_null())["id"]
    assert kept_ids.to_list() == ["q1->c1", "q1->c2", "q2->c1"]


def expected_triplets(data_path: Path) -> tuple[Counter, dict[str, tuple[str, str, str]]]:
    """Drop reasons and triplets by id, computed with plain json (no polars)."""
    graph = json.loads(data_path.read_text(encoding="utf-8-sig"))
    metadata = json.loads(data_path.with_name("metadata.json").read_text(encoding="utf-8-sig"))

    def title(paper: str) -> str | None:
        value = metadata.get(paper, {}).get("title")
        return value if isinstance(value, str) and value.strip() else None

    reasons: Counter = Counter()
    triplets = {}
    for query, entries in graph.items():
        direct = sorted(p for p, e in entries.items() if e["count"] == 5)
        pool = sorted(p for p, e in entries.items() if e["count"] == 1 and title(p) and p != query)
        for rank, cited in enumerate(direct):
            if query not in metadata:
                reasons["query_metadata_missing"] += 1
            elif not title(query):
                reasons["query_title_missing"] += 1
            elif cited not in metadata:
                reasons["cited_metadata_missing"] += 1
            elif not title(cited):
                reasons["cited_title_missing"] += 1
            elif not pool:
                reasons["no_cited_by_cited_negative"] += 1
            else:
                reasons["kept"] += 1
                triplets[f"{query}->{cited}"] = (title(query), title(cited), title(pool[rank % len(pool)]))
    return reasons, triplets


def _check_against_plain_json(data_path: Path) -> tuple[Counter, pl.DataFrame]:
    expected_reasons, expected = expected_triplets(data_path)
    frame, ctx = candidates(data_path)
    assert ctx.bad_rows.as_dict() == {}
    assert Counter(frame["drop_reason"].fill_null("kept").to_list()) == expected_reasons
    kept = frame.filter(pl.col("drop_reason").is_null())
    got = {row[0]: row[1:] for row in kept.select("id", "anchor", "positive", "negative").rows()}
    assert got == expected
    return expected_reasons, frame


def test_bundled_example_matches_plain_json(tmp_path: Path) -> None:
    reasons, _ = _check_against_plain_json(EXAMPLE / "data.json")
    assert reasons["kept"] >= 20
    (manifest,) = ingest_source("specter", [EXAMPLE], tmp_path, ALL_KEPT, progress=False).manifests
    assert manifest["rows_read"] == sum(reasons.values())
    assert manifest["rows_kept"] + manifest["dropped"].get("duplicate", 0) == reasons["kept"]


def test_real_sample_exact_counts(shared_data: Path, tmp_path: Path) -> None:
    data_path = shared_data / "specter" / "training" / "data.json"
    reasons, frame = _check_against_plain_json(data_path)
    # From the README and a read of the files: 85 count-5 edges among 422; only 17 of
    # the 20 query papers and none of the cited papers have metadata.
    assert reasons == Counter({"cited_metadata_missing": 68, "query_metadata_missing": 17})
    assert frame.height == 85
    (manifest,) = ingest_source("specter", [data_path], tmp_path, ALL_KEPT, progress=False).manifests
    assert (manifest["rows_read"], manifest["rows_kept"]) == (85, 0)
    assert manifest["dropped"] == {"cited_metadata_missing": 68, "query_metadata_missing": 17}
    assert manifest["inputs"][0]["files"][1].endswith("metadata.json")


def test_output_is_deterministic(tmp_path: Path) -> None:
    (first,) = ingest_source("specter", [EXAMPLE], tmp_path / "a", ALL_KEPT, progress=False).manifests
    (second,) = ingest_source("specter", [EXAMPLE], tmp_path / "b", ALL_KEPT, progress=False).manifests
    assert first["shards"] == second["shards"] and first["rows_kept"] > 0
