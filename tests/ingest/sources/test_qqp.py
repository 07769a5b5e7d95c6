"""The qqp source: GLUE TSV and Kaggle CSV layouts, duplicate pairs and triplets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from pipeline.corpus.manifest import check_accounting
from pipeline.ingest.plan import ingest_source
from pipeline.ingest.sources import get_source, qqp
from pipeline.io.context import ReadContext
from pipeline.io.errors import InputFileError
from tests.helpers import EXAMPLES, TEST_DATA

FIXTURES = TEST_DATA / "qqp"
EXAMPLES = EXAMPLES / "qqp"


def candidates(paths: list[Path], options: qqp.Options = qqp.Options()) -> tuple[dict[str, pl.DataFrame], list[ReadContext]]:
    """Stage files and build candidates as pipeline.ingest does, without cleaning or dedup."""
    frames, contexts = [], []
    for index, path in enumerate(paths):
        ctx = ReadContext(path=path, display_name=str(path), file_index=index)
        contexts.append(ctx)
        for batch in qqp.stage_file(path, ctx, options):
            frames.append(
                batch.with_columns(pl.lit(index, dtype=pl.Int64).alias("_file_index"), pl.lit(str(path)).alias("source_file"))
            )
    built = qqp.build_candidates(pl.concat(frames).lazy(), options)
    return {name: frame.collect().sort(["_file_index", "source_line"]) for name, frame in built.items()}, contexts


def reasons(frame: pl.DataFrame) -> dict[str | None, int]:
    counts = frame.get_column("drop_reason").value_counts()
    return dict(zip(counts.get_column("drop_reason").to_list(), counts.get_column("count").to_list()))


def read_quora_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a Quora file with Python's csv module: GLUE unquoted tabs, Kaggle default CSV."""
    with open(path, newline="", encoding="utf-8") as handle:
        if path.suffix == ".tsv":
            return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        return list(csv.DictReader(handle))


def expected_triplets(files: list[Path]) -> dict[str, str]:
    """id -> negative, computed with plain dicts: the first non-duplicate partner of q1, else of q2."""
    rows = [(path.name, row) for path in files for row in read_quora_rows(path) if "is_duplicate" in row]
    first_negative: dict[str, str] = {}
    for _, row in rows:
        if row["is_duplicate"] == "0":
            first_negative.setdefault(row["qid1"], row["question2"])
            first_negative.setdefault(row["qid2"], row["question1"])
    out = {}
    for name, row in rows:
        if row["is_duplicate"] == "1":
            negative = first_negative.get(row["qid1"], first_negative.get(row["qid2"]))
            if negative is not None:
                out[f"{name}:{row['id']}"] = negative
    return out


@pytest.fixture(scope="module")
def quora_files(shared_data: Path) -> list[Path]:
    glue = shared_data / "quora" / "glue_qqp"
    return [glue / "train.tsv", glue / "dev.tsv", glue / "test.tsv", shared_data / "quora" / "kaggle_first10k" / "preprocess2500.csv"]


def test_real_quora_files_give_every_labelled_duplicate(quora_files: list[Path]) -> None:
    built, contexts = candidates(quora_files)
    rows = {path.name: read_quora_rows(path) for path in quora_files}
    # The Kaggle export has one question holding a newline: csv reads 10000 records, not 10001 lines.
    assert len(rows["preprocess2500.csv"]) == 10000
    labels = [row.get("is_duplicate") for file_rows in rows.values() for row in file_rows]
    duplicates = built["qqp-duplicates"]
    assert duplicates.height == len(labels) == 10027
    assert reasons(duplicates) == {None: labels.count("1"), "not_duplicate": labels.count("0"), "unlabeled": labels.count(None)}
    assert labels.count("1") == 3 + 4 + 3711 and labels.count(None) == 9
    assert all(not ctx.quarantine for ctx in contexts)
    kept = duplicates.filter(pl.col("drop_reason").is_null())
    expected_pairs = [
        (f"{name}:{row['id']}", row["question1"], row["question2"])
        for name, file_rows in rows.items()
        for row in file_rows
        if row.get("is_duplicate") == "1"
    ]
    assert list(zip(kept["id"], kept["anchor"], kept["positive"])) == expected_pairs
    assert kept["id"].n_unique() == kept.height
    # the multi-line question survives whole
    assert kept.filter(pl.col("id") == "preprocess2500.csv:2332").height == 0  # id 2332 is not a duplicate
    multi_line = duplicates.filter(pl.col("id") == "preprocess2500.csv:2332")
    assert multi_line["anchor"].item() == "Which is the best RO water purifier in Ahmedabad?\n"


def test_real_quora_triplets_match_a_plain_python_join(quora_files: list[Path]) -> None:
    built, _ = candidates(quora_files)
    triplets = built["qqp-triplets"]
    kept = triplets.filter(pl.col("drop_reason").is_null())
    expected = expected_triplets(quora_files)
    assert dict(zip(kept["id"], kept["negative"])) == expected
    assert len(expected) == 77  # few questions recur within the first 10k Kaggle rows
    assert reasons(triplets)["no_non_duplicate_for_question"] == 3718 - 77


def test_real_quora_ingest_manifests(quora_files: list[Path], tmp_path: Path) -> None:
    result = ingest_source("qqp", quora_files, tmp_path, progress=False)
    assert result.failures == []
    manifests = {m["dataset"]: m for m in result.manifests}
    duplicates = manifests["qqp-duplicates"]
    check_accounting(duplicates)
    # 3718 duplicates less Kaggle id 1209, whose two questions differ only by a double space.
    assert duplicates["rows_kept"] == 3717
    assert duplicates["dropped"] == {"anchor_equals_positive": 1, "not_duplicate": 6300, "unlabeled": 9}
    assert manifests["qqp-triplets"]["columns"][:3] == ["anchor", "positive", "negative"]
    check_accounting(manifests["qqp-triplets"])


def test_glue_fixture_with_crlf_bom_quotes_and_bad_rows() -> None:
    path = FIXTURES / "glue_crlf.tsv"
    built, (ctx,) = candidates([path])
    duplicates = built["qqp-duplicates"]
    assert duplicates["id"].to_list() == [f"glue_crlf.tsv:{i}" for i in (10, 11, 12, 13, 14, 13, 16, 17)]
    assert duplicates["drop_reason"].to_list() == [
        None, "not_duplicate", "not_duplicate", None, "bad_label", "duplicate_id", "not_duplicate", None
    ]
    assert duplicates["source_line"].to_list() == [2, 3, 4, 5, 6, 7, 9, 10]
    # quote characters are text, line endings are gone
    assert duplicates.filter(pl.col("id") == "glue_crlf.tsv:17")["anchor"].item() == 'What is "quoted" text?'
    assert duplicates.filter(pl.col("id") == "glue_crlf.tsv:12")["anchor"].item() == 'What does "al dente" mean?'
    assert not any(text.endswith("\r") for text in duplicates["positive"])
    assert ctx.bad_rows.as_dict() == {"wrong_field_count": 1}
    assert ctx.quarantine[0]["line"] == 8

    triplets = built["qqp-triplets"].filter(pl.col("drop_reason").is_null() | (pl.col("drop_reason") == "no_non_duplicate_for_question"))
    assert triplets.select("id", "negative", "drop_reason").rows() == [
        ("glue_crlf.tsv:10", "How do I learn to bake bread?", None),  # non-duplicate of q1 (qid 1)
        ("glue_crlf.tsv:13", "Is tea healthier than coffee?", None),  # none for q1, one for q2 (qid 6)
        ("glue_crlf.tsv:17", None, "no_non_duplicate_for_question"),
    ]


def test_kaggle_fixture_reads_quoted_newlines_and_ignores_extra_columns() -> None:
    built, (ctx,) = candidates([FIXTURES / "kaggle_sample.csv"])
    assert ctx.quarantine == []
    duplicates = built["qqp-duplicates"]
    assert duplicates["source_line"].to_list() == [2, 4, 6, 7, 8]  # the line where each record starts
    assert duplicates["anchor"][0] == "How do I get rid of\nhiccups?"
    assert duplicates.filter(pl.col("drop_reason").is_null())["id"].to_list() == ["kaggle_sample.csv:0", "kaggle_sample.csv:2"]
    assert duplicates["positive"][4] == ""  # an empty question is left for the cleaning step
    triplets = built["qqp-triplets"].filter(pl.col("drop_reason").is_null())
    assert triplets["negative"].to_list() == ["How do I get rid of a cold?", "What is the healthiest drink?"]


def test_glue_test_file_has_no_labels_and_gives_nothing(shared_data: Path, tmp_path: Path) -> None:
    test_tsv = shared_data / "quora" / "glue_qqp" / "test.tsv"
    result = ingest_source("qqp", [test_tsv], tmp_path, progress=False)
    for manifest in result.manifests:
        assert manifest["rows_read"] == 9
        assert manifest["rows_kept"] == 0
        assert manifest["dropped"] == {"unlabeled": 9}


def test_unknown_extension_is_refused_before_reading(tmp_path: Path) -> None:
    odd = tmp_path / "questions.txt"
    odd.write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n")
    with pytest.raises(InputFileError, match="questions.txt"):
        list(qqp.stage_file(odd, ReadContext(odd, str(odd)), qqp.Options()))
    # a usage error (ValueError): nothing is read or written
    with pytest.raises(ValueError, match=r"questions.txt: not a QQP file: expected a .tsv"):
        ingest_source("qqp", [odd, FIXTURES / "glue_crlf.tsv"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_column_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.tsv"
    path.write_text("id\tquestion1\tquestion2\tis_duplicate\n1\ta?\tb?\t1\n")
    with pytest.raises(InputFileError, match=r"broken.tsv: header has no column"):
        list(qqp.stage_file(path, ReadContext(path, str(path)), qqp.Options()))


def test_invalid_utf8_row_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(
        b"id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        b"1\t1\t2\tCaf\xe9 or bar?\tBar or caf\xe9?\t1\n"
        b"2\t3\t4\tWhat is tea?\tDefine tea.\t1\n"
    )
    built, (ctx,) = candidates([path])
    assert ctx.bad_rows.as_dict() == {"invalid_utf8": 1}
    assert built["qqp-duplicates"]["id"].to_list() == ["bad.tsv:2"]


def test_same_file_name_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    copy = tmp_path / "a" / "glue_crlf.tsv"
    copy.write_bytes((FIXTURES / "glue_crlf.tsv").read_bytes())
    with pytest.raises(ValueError, match="share a file name"):
        qqp.dataset_specs([FIXTURES / "glue_crlf.tsv", copy], qqp.Options())


def test_examples_ingest_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    examples = sorted(EXAMPLES.iterdir())
    assert main(["ingest", "qqp", *map(str, examples), "--out", str(tmp_path), "--quiet"]) == 0
    for name in ("qqp-duplicates", "qqp-triplets"):
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        check_accounting(manifest)
        assert manifest["rows_kept"] > 20
        assert manifest["dropped"]["wrong_field_count"] == 1  # the row with a stray tab
    assert get_source("qqp") is qqp


def test_kaggle_test_csv_with_test_id_is_unlabeled(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    path.write_text('"test_id","question1","question2"\n"0","How does the Surface Pro compare?","Why did Microsoft choose core m3?"\n')
    built, (ctx,) = candidates([path])
    assert ctx.quarantine == []
    assert built["qqp-duplicates"].select("id", "drop_reason").rows() == [("test.csv:0", "unlabeled")]
