"""Reddit source: Pushshift comment dumps (old and 2024 schema) to (parent, reply) pairs.

The expected counts on the real samples are computed here a second time, in plain
Python with zstandard + json and a dict of comments (fine for a 1075-comment month),
by :func:`reference_reasons`, written independently of the polars join it checks.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import zstandard

from flows.cli import main as cli_main
from pipeline.corpus.manifest import check_accounting, read_manifest
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.normalize import normalize_text
from pipeline.ingest.plan import ingest_source
from pipeline.ingest.sources import reddit
from tests.helpers import EXAMPLES, TEST_DATA

EXAMPLES = EXAMPLES / "reddit"
TEST_DATA = TEST_DATA / "reddit"
DATASET = "reddit-replies"
# No held-out split and no dedup: every kept pair lands in one shard, easy to compare.
PLAIN = IngestConfig(heldout_fraction=0, dedup=False)


def read_comments(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of a Pushshift file, decompressed with the 2 GiB window if .zst."""
    data = path.read_bytes()
    if path.suffix == ".zst":
        reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(data)
        data = reader.read()
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def reference_reasons(
    files: list[list[dict[str, Any]]], min_chars: int = 9, max_chars: int | None = None, min_score: int | None = None
) -> tuple[Counter[str], dict[str, tuple[str, str]]]:
    """Drop reasons by count, and the kept pairs by reply id, the plain-Python way."""
    first: dict[str, dict[str, Any]] = {}
    for rows in files:
        for row in rows:
            first.setdefault(row["id"], row)

    def body_problem(row: dict[str, Any]) -> str | None:
        body = row["body"].strip()
        if body in ("[deleted]", "[removed]"):
            return "deleted_or_removed"
        if not body:
            return "empty_body"
        if len(body) < min_chars:
            return "body_too_short"
        if max_chars is not None and len(body) > max_chars:
            return "body_too_long"
        if min_score is not None and (row["score"] is None or row["score"] < min_score):
            return "below_min_score"
        return None

    reasons: Counter[str] = Counter()
    kept: dict[str, tuple[str, str]] = {}
    for rows in files:
        for row in rows:
            parent_id = row["parent_id"]
            parent = first.get(parent_id[3:]) if parent_id.startswith("t1_") else None
            if first[row["id"]] is not row:
                reasons["duplicate_comment"] += 1
            elif parent_id.startswith("t3_"):
                reasons["top_level_comment"] += 1
            elif not parent_id.startswith("t1_"):
                reasons["bad_parent_id"] += 1
            elif parent is None:
                reasons["parent_not_in_input"] += 1
            elif problem := body_problem(row):
                reasons[problem] += 1
            elif problem := body_problem(parent):
                reasons["parent_" + problem] += 1
            else:
                kept[row["id"]] = (parent["body"], row["body"])
    return reasons, kept


def run_ingest(inputs: list[Path], out: Path, config: IngestConfig = PLAIN, **options: Any) -> dict[str, Any]:
    if options:
        config = IngestConfig(heldout_fraction=config.heldout_fraction, dedup=config.dedup, source_options=options)
    manifests = ingest_source("reddit", inputs, out, config, progress=False).manifests
    assert [m["dataset"] for m in manifests] == [DATASET]
    check_accounting(manifests[0])
    return manifests[0]


def read_pairs(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / DATASET).glob("**/part-*.parquet")))


def read_quarantine(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / DATASET / "quarantine.jsonl").read_text().splitlines()]


def write_lines(path: Path, rows: list[dict[str, Any] | str | bytes], end: bytes = b"\n") -> Path:
    raw = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows]
    path.write_bytes(end.join(raw) + end)
    return path


def comment(cid: Any, parent: str, body: str | None, score: Any = 1, **extra: Any) -> dict[str, Any]:
    row = {"id": cid, "parent_id": parent, "link_id": "t3_thread", "body": body, "score": score, "author": "a"}
    return {**row, **extra}


# --- the real samples -------------------------------------------------------------------


def test_real_month_2005_12_counts_match_plain_python(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "reddit" / "RC_2005-12.zst"
    rows = read_comments(path)
    ids = {r["id"] for r in rows}
    assert len(rows) == 1075
    # The sample's README: 314 comments reply to a parent comment in the same file.
    assert sum(r["parent_id"].startswith("t1_") and r["parent_id"][3:] in ids for r in rows) == 314
    reasons, kept = reference_reasons([rows])
    manifest = run_ingest([path], tmp_path)
    assert manifest["rows_read"] == 1075 and manifest["unit"] == "comment"
    assert manifest["dropped"] == dict(reasons)
    assert manifest["dropped"] == {
        "top_level_comment": 746,
        "parent_not_in_input": 15,
        "deleted_or_removed": 27,
        "parent_deleted_or_removed": 27,
        "body_too_short": 3,
    }
    assert manifest["rows_kept"] == len(kept) == 257 == 314 - 27 - 27 - 3
    pairs = read_pairs(tmp_path)
    assert pairs.columns[:2] == ["anchor", "positive"]
    assert pairs["id"].n_unique() == pairs.height
    for row in pairs.iter_rows(named=True):
        parent_body, reply_body = kept[row["id"]]
        assert (row["anchor"], row["positive"]) == (normalize_text(parent_body), normalize_text(reply_body))
        assert row["source_file"] == str(path)


def test_real_2024_schema_comments(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "reddit" / "pushshift_2024" / "test_comments.json"
    rows = read_comments(path)
    assert len(rows) == 27 and not path.read_bytes().endswith(b"\n")
    # Mixed shapes in one file: created_utc is a float, an int or a string; _meta is an object.
    assert {type(r["created_utc"]) for r in rows} == {int, float, str}
    reasons, kept = reference_reasons([rows])
    manifest = run_ingest([path], tmp_path)
    assert manifest["rows_read"] == 27
    assert manifest["dropped"] == dict(reasons) == {"top_level_comment": 18, "parent_not_in_input": 9}
    assert manifest["rows_kept"] == len(kept) == 0
    assert manifest["quarantine"]["rows"] == 0


def test_real_samples_together_count_repeated_comments(shared_data: Path, tmp_path: Path) -> None:
    month = shared_data / "reddit" / "RC_2005-12.zst"
    recent = shared_data / "reddit" / "pushshift_2024" / "test_comments.json"
    files = [read_comments(month), read_comments(recent)]
    # The 2024 test file repeats five comments of December 2005 (c13 .. c17).
    assert len({r["id"] for r in files[0]} & {r["id"] for r in files[1]}) == 5
    reasons, kept = reference_reasons(files)
    manifest = run_ingest([month, recent], tmp_path)
    assert manifest["rows_read"] == 1075 + 27
    assert manifest["dropped"] == dict(reasons)
    assert manifest["dropped"]["duplicate_comment"] == 5
    assert manifest["dropped"]["top_level_comment"] == 746 + 18 - 5
    assert manifest["rows_kept"] == len(kept) == 257
    assert len(manifest["inputs"]) == 2 and manifest["failures"] == []


@pytest.mark.parametrize(
    ("options", "expected_extra"),
    [
        ({"min_score": 2}, {"below_min_score", "parent_below_min_score"}),
        ({"min_body_chars": 1, "max_body_chars": 127}, {"body_too_long", "parent_body_too_long"}),
    ],
)
def test_options_on_the_real_month(
    shared_data: Path, tmp_path: Path, options: dict[str, int], expected_extra: set[str]
) -> None:
    path = shared_data / "reddit" / "RC_2005-12.zst"
    reasons, kept = reference_reasons(
        [read_comments(path)],
        min_chars=options.get("min_body_chars", 9),
        max_chars=options.get("max_body_chars"),
        min_score=options.get("min_score"),
    )
    manifest = run_ingest([path], tmp_path, **options)
    assert manifest["dropped"] == dict(reasons)
    assert expected_extra <= set(manifest["dropped"])
    assert manifest["rows_kept"] == len(kept) < 257
    assert manifest["config"]["source_options"]["min_body_chars"] == options.get("min_body_chars", 9)


def test_cli_option_strings_are_converted(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "reddit" / "RC_2005-12.zst"
    options = ["-o", "min_score=3", "-o", "max_body_chars=none"]
    code = cli_main(["ingest", "reddit", str(path), "--out", str(tmp_path), "--quiet", *options])
    assert code == 0
    manifest = read_manifest(tmp_path / DATASET)
    assert manifest["config"]["source_options"] == {
        "min_body_chars": 9,
        "max_body_chars": None,
        "min_score": 3,
    }
    assert manifest["dropped"]["below_min_score"] > 0


# --- failures: a truncated archive, a submissions file ---------------------------------


def test_truncated_month_fails_by_name_while_the_other_input_completes(shared_data: Path, tmp_path: Path) -> None:
    month = shared_data / "reddit" / "RC_2005-12.zst"
    truncated = tmp_path / "RC_2005-12.zst"
    truncated.write_bytes(month.read_bytes()[:70_000])
    good = EXAMPLES / "RC_2015-06-sample.jsonl"
    out = tmp_path / "corpus"
    code = cli_main(["ingest", "reddit", str(truncated), str(good), "--out", str(out), "--quiet"])
    assert code == 1
    manifest = read_manifest(out / DATASET)
    check_accounting(manifest)
    assert [f["path"] for f in manifest["failures"]] == [str(truncated)]
    assert str(truncated) in manifest["failures"][0]["error"] and "truncated" in manifest["failures"][0]["error"]
    good_alone = run_ingest([good], tmp_path / "good-alone")
    # Every whole line decoded before the break is kept; the partial last line is not.
    import zstandard

    decoded = zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj().decompress(truncated.read_bytes())
    whole_lines = decoded.count(b"\n")
    assert whole_lines == 438
    assert manifest["rows_read"] == good_alone["rows_read"] + whole_lines
    from_good = read_pairs(out).filter(pl.col("source_file") == str(good))
    assert sorted(from_good["id"].to_list()) == sorted(read_pairs(tmp_path / "good-alone")["id"].to_list())
    assert from_good.height == good_alone["rows_kept"] > 0


def test_submissions_file_is_refused_by_name(shared_data: Path, tmp_path: Path) -> None:
    submissions = shared_data / "reddit" / "pushshift_2024" / "test_submissions.json"
    comments = shared_data / "reddit" / "pushshift_2024" / "test_comments.json"
    code = cli_main(["ingest", "reddit", str(submissions), str(comments), "--out", str(tmp_path), "--quiet"])
    assert code == 1
    manifest = read_manifest(tmp_path / DATASET)
    assert manifest["rows_read"] == 27  # the comments file still counts; no submission row does
    assert [f["path"] for f in manifest["failures"]] == [str(submissions)]
    assert "submissions file" in manifest["failures"][0]["error"]


def test_a_stray_submission_line_is_quarantined(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "RC_mixed.jsonl",
        [
            comment("p1", "t3_s", "The parent comment with enough text."),
            {"id": "s9", "title": "A submission", "selftext": "", "score": 4},
            comment("r1", "t1_p1", "The reply, which is long enough too."),
        ],
    )
    manifest = run_ingest([path], tmp_path / "out")
    assert manifest["rows_read"] == 3 and manifest["rows_kept"] == 1
    assert manifest["dropped"] == {"top_level_comment": 1, "submission_not_comment": 1}
    quarantine = read_quarantine(tmp_path / "out")
    assert [(q["line"], q["reason"], json.loads(q["head"])) for q in quarantine] == [
        (2, "submission_not_comment", {"id": "s9", "title": "A submission"})
    ]


# --- pairing rules on small fixtures ----------------------------------------------------


def test_parent_found_in_another_input_file(tmp_path: Path) -> None:
    january = write_lines(tmp_path / "RC_a.jsonl", [comment("p1", "t3_s", "What is the best way to learn Rust?")])
    reply = comment("r1", "t1_p1", "Read the book, then write a small CLI tool.")
    february = write_lines(tmp_path / "RC_b.jsonl", [reply])
    run_ingest([january, february], tmp_path / "both")
    pairs = read_pairs(tmp_path / "both")
    assert pairs.select("anchor", "positive", "id", "source_file", "source_line").rows() == [
        ("What is the best way to learn Rust?", "Read the book, then write a small CLI tool.", "r1", str(february), 1)
    ]
    alone = run_ingest([february], tmp_path / "alone")
    assert alone["dropped"] == {"parent_not_in_input": 1}


@pytest.mark.parametrize("order", ["first_file_first", "second_file_first"])
def test_repeated_comment_id_keeps_the_first_in_input_order(tmp_path: Path, order: str) -> None:
    a = write_lines(tmp_path / "RC_a.jsonl", [comment("p1", "t3_s", "Version A of the parent comment.")])
    b = write_lines(
        tmp_path / "RC_b.jsonl",
        [
            comment("p1", "t3_s", "Version B of the parent comment."),
            comment("r1", "t1_p1", "A reply to the parent comment."),
        ],
    )
    inputs = [a, b] if order == "first_file_first" else [b, a]
    manifest = run_ingest(inputs, tmp_path / "out")
    assert manifest["dropped"] == {"duplicate_comment": 1, "top_level_comment": 1}
    expected = "Version A of the parent comment." if order == "first_file_first" else "Version B of the parent comment."
    assert read_pairs(tmp_path / "out")["anchor"].to_list() == [expected]


def test_repeated_line_in_one_file_keeps_the_first_line(tmp_path: Path) -> None:
    reply = comment("r1", "t1_p1", "A reply that appears twice in the dump.")
    path = write_lines(tmp_path / "RC_a.jsonl", [comment("p1", "t3_s", "The parent comment text."), reply, reply])
    manifest = run_ingest([path], tmp_path / "out")
    assert manifest["dropped"] == {"duplicate_comment": 1, "top_level_comment": 1}
    assert read_pairs(tmp_path / "out")["source_line"].to_list() == [2]


def test_every_reason_in_order(tmp_path: Path) -> None:
    rows = [
        comment("p_ok", "t3_s", "A parent comment that is fine.", score=5),
        comment("p_del", "t3_s", "[deleted]"),
        comment("p_rem", "t3_s", " [removed] "),
        comment("p_short", "t3_s", "Nope."),
        comment("p_low", "t3_s", "A parent that was downvoted.", score=-2),
        comment("r_ok", "t1_p_ok", "A reply that makes a pair.", score=3),
        comment("r_del", "t1_p_ok", "[removed]"),
        comment("r_empty", "t1_p_ok", "   "),
        comment("r_short", "t1_p_ok", "lol ok", score=50),
        comment("r_low", "t1_p_ok", "A fine reply with a low score.", score=0),
        comment("r_pdel", "t1_p_del", "A reply to a deleted parent."),
        comment("r_prem", "t1_p_rem", "A reply to a removed parent."),
        comment("r_pshort", "t1_p_short", "A reply to a short parent."),
        comment("r_plow", "t1_p_low", "A reply to a low-scored parent.", score=4),
        comment("r_orphan", "t1_gone", "A reply whose parent is elsewhere."),
        comment("r_bad", "t2_user", "A parent id of the wrong kind."),
        comment("r_deleted_orphan", "t1_gone", "[deleted]"),
    ]
    path = write_lines(tmp_path / "RC_x.jsonl", rows)
    manifest = run_ingest([path], tmp_path / "out", min_score=1)
    assert manifest["dropped"] == {
        "top_level_comment": 5,
        "deleted_or_removed": 1,
        "empty_body": 1,
        "body_too_short": 1,
        "below_min_score": 1,
        "parent_deleted_or_removed": 2,
        "parent_body_too_short": 1,
        "parent_below_min_score": 1,
        "parent_not_in_input": 2,
        "bad_parent_id": 1,
    }
    assert read_pairs(tmp_path / "out")["id"].to_list() == ["r_ok"]
    reasons, _ = reference_reasons([rows], min_score=1)
    assert manifest["dropped"] == dict(reasons)


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_body_chars"):
        reddit.Options(min_body_chars=9, max_body_chars=5)
    with pytest.raises(ValueError, match="no option min_upvotes"):
        config = IngestConfig(source_options={"min_upvotes": 1})
        ingest_source("reddit", [EXAMPLES / "RC_2015-06-sample.jsonl"], tmp_path, config)


# --- bad input ------------------------------------------------------------------------

GOOD_PARENT = json.dumps(comment("p1", "t3_s", "A parent comment with enough text."))
GOOD_REPLY = json.dumps(comment("r1", "t1_p1", "A reply comment with enough text."))


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (b'{"id": "x1", "parent_id": "t1_p1", "body": "cut off', "malformed_json"),
        (b'{"id": "x1", "parent_id": "t1_p1", "body": "caf\xe9 au lait is great", "score": 1}', "invalid_utf8"),
        (json.dumps(comment("x1", "t1_p1", None)).encode(), "missing_field:body"),
        (json.dumps({"id": "x1", "body": "No parent id on this line at all."}).encode(), "missing_field:parent_id"),
        (json.dumps(comment("x1", "t1_p1", "A score given as a string.", score="7")).encode(), "wrong_type:score"),
        (json.dumps(comment(17, "t1_p1", "An id given as a number.")).encode(), "wrong_type:id"),
        (b"[1, 2, 3]", "not_a_json_object"),
        (b"", "empty_line"),
    ],
)
def test_bad_line_is_quarantined_and_counted(tmp_path: Path, bad_line: bytes, reason: str) -> None:
    path = write_lines(tmp_path / "RC_bad.jsonl", [GOOD_PARENT.encode(), bad_line, GOOD_REPLY.encode()])
    manifest = run_ingest([path], tmp_path / "out")
    assert manifest["rows_read"] == 3 and manifest["rows_kept"] == 1
    assert manifest["dropped"] == {"top_level_comment": 1, reason: 1}
    quarantine = read_quarantine(tmp_path / "out")
    assert [(q["file"], q["line"], q["reason"]) for q in quarantine] == [(str(path), 2, reason)]


@pytest.mark.parametrize("variant", ["crlf", "bom", "no_final_newline", "gzip"])
def test_line_ending_bom_and_compression_variants_read_the_same(tmp_path: Path, variant: str) -> None:
    lines = [GOOD_PARENT.encode(), GOOD_REPLY.encode()]
    data = (b"\r\n".join(lines) + b"\r\n") if variant == "crlf" else b"\n".join(lines) + b"\n"
    if variant == "bom":
        data = b"\xef\xbb\xbf" + data
    if variant == "no_final_newline":
        data = data.rstrip(b"\n")
    name = "RC_v.jsonl"
    if variant == "gzip":
        import gzip

        data, name = gzip.compress(data, mtime=0), "RC_v.jsonl.gz"
    path = tmp_path / name
    path.write_bytes(data)
    manifest = run_ingest([path], tmp_path / "out")
    assert (manifest["rows_read"], manifest["rows_kept"], manifest["quarantine"]["rows"]) == (2, 1, 0)
    assert read_pairs(tmp_path / "out").select("anchor", "positive").rows() == [
        ("A parent comment with enough text.", "A reply comment with enough text.")
    ]


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "RC_empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="input is empty"):
        run_ingest([path], tmp_path / "out")


def test_a_file_of_another_source_fails_that_file(tmp_path: Path) -> None:
    nli = EXAMPLES.parent / "nli" / "snli_sample.jsonl"
    manifest = run_ingest([nli, EXAMPLES / "RC_2015-06-sample.jsonl"], tmp_path / "out")
    assert [f["path"] for f in manifest["failures"]] == [str(nli)]
    assert "has no row with the reddit fields id/parent_id/body: is it a reddit file?" in manifest["failures"][0]["error"]
    assert manifest["rows_kept"] > 0


# --- the bundled examples ---------------------------------------------------------------


def test_example_zst_is_its_committed_jsonl_source() -> None:
    source = TEST_DATA / "RC_2024-01-sample.jsonl"
    assert read_comments(EXAMPLES / "RC_2024-01-sample.zst") == read_comments(source)
    compressed = (EXAMPLES / "RC_2024-01-sample.zst").read_bytes()
    assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed) == source.read_bytes()


def test_bundled_examples(tmp_path: Path) -> None:
    old = EXAMPLES / "RC_2015-06-sample.jsonl"
    recent = EXAMPLES / "RC_2024-01-sample.zst"
    files = [read_comments(old), read_comments(recent)]
    assert isinstance(files[0][0]["created_utc"], str) and "_meta" in files[1][0]
    reasons, kept = reference_reasons(files)
    manifest = run_ingest([old, recent], tmp_path)
    assert manifest["rows_read"] == 36 + 20
    assert manifest["dropped"] == dict(reasons)
    assert manifest["dropped"] == {
        "top_level_comment": 12,
        "parent_deleted_or_removed": 4,
        "body_too_short": 3,
        "deleted_or_removed": 3,
        "parent_not_in_input": 3,
        "duplicate_comment": 1,
    }
    assert manifest["rows_kept"] == len(kept) == 30
    pairs = read_pairs(tmp_path)
    # The examples escape HTML as the dumps do; cleaning decodes it.
    assert pairs.filter(pl.col("positive").str.starts_with("> it can flake")).height == 1
