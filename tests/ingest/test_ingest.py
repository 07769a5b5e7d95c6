"""The ingest contract: bad input, accounting, determinism, resume, skip, loadability."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import zstandard

from flows.cli import main as cli_main
from pipeline.corpus.manifest import check_accounting, read_manifest
from pipeline.ingest.build import heldout_mask
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.finalize import finalize_source
from pipeline.ingest.plan import ingest_source
from pipeline.ingest.stage import stage_file
from tests.helpers import EXAMPLES, ROOT

GOOD = {"sentence1": "A man plays a guitar on stage.", "sentence2": "A person makes music.", "gold_label": "entailment", "pairID": "p"}


def snli_line(i: int, **overrides) -> bytes:
    row = dict(GOOD, sentence2=f"A person makes music number {i}.", pairID=f"p{i}")
    row.update(overrides)
    return json.dumps(row).encode()


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


BAD_LINES = {
    "malformed_json": b'{"sentence1": "broken',
    "invalid_utf8": b'{"sentence1": "caf\xe9", "sentence2": "x y", "gold_label": "entailment"}',
    "missing_field:sentence2": json.dumps({"sentence1": "Only one side.", "gold_label": "entailment"}).encode(),
    "wrong_type:sentence1": json.dumps({"sentence1": 42, "sentence2": "A number.", "gold_label": "entailment"}).encode(),
    "not_a_json_object": b'["a", "list"]',
    "line_too_long": json.dumps({"sentence1": "x" * (10 * 1024 * 1024), "sentence2": "big", "gold_label": "entailment"}).encode(),
    "empty_line": b"",
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_a_bad_line_is_quarantined_and_the_run_goes_on(tmp_path: Path, reason: str) -> None:
    path = tmp_path / "snli.jsonl"
    path.write_bytes(b"\n".join([snli_line(1), BAD_LINES[reason], snli_line(2)]) + b"\n")
    code = cli_main(["ingest", "nli", str(path), "--out", str(tmp_path / "out"), "--quiet", "--heldout-fraction", "0"])
    assert code == 0
    manifest = read_manifest(tmp_path / "out" / "nli-pairs")
    assert manifest["rows_read"] == 3
    assert manifest["rows_kept"] == 2
    assert manifest["dropped"] == {reason: 1}
    quarantine = [json.loads(l) for l in (tmp_path / "out" / "nli-pairs" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["file"], q["line"], q["reason"]) for q in quarantine] == [(str(path), 2, reason)]
    assert len(quarantine[0]["head"]) <= 200


def test_crlf_endings_and_a_bom_are_read_as_ordinary_lines(tmp_path: Path) -> None:
    path = tmp_path / "snli.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(snli_line(i) for i in range(3)) + b"\r\n")
    result = ingest_source("nli", [path], tmp_path / "out", IngestConfig(heldout_fraction=0), progress=False)
    pairs = result.manifests[0]
    assert (pairs["rows_read"], pairs["rows_kept"], pairs["dropped"]) == (3, 3, {})
    frame = pl.read_parquet(tmp_path / "out" / "nli-pairs" / "part-00000.parquet")
    assert frame["source_line"].to_list() == [1, 2, 3]
    assert not any("\r" in t for t in frame["positive"])


def test_an_empty_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # An empty input is a failed download or copy far more often than a source with no rows.
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"input is empty: .*empty.jsonl \(0 bytes\)"):
        ingest_source("nli", [path], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_file_without_one_row_of_the_source_fails_that_file(tmp_path: Path, capsys) -> None:
    """A Reddit dump given to s2orc: every row quarantined, the file a failure (exit 1), the other input built."""
    reddit = EXAMPLES / "reddit" / "RC_2024-01-sample.zst"
    papers = EXAMPLES / "s2orc" / "metadata_sample.jsonl"
    out = tmp_path / "out"
    code = cli_main(["ingest", "s2orc", str(reddit), str(papers), "--out", str(out), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"{reddit}: has no row with the s2orc fields paper_id/title/abstract: is it a s2orc file?"
    assert len(err) == 1 and err[0].startswith(f"FAILED: {expected}"), err
    manifest = read_manifest(out / "s2orc-title-abstract")
    assert [f["path"] for f in manifest["failures"]] == [str(reddit)]
    assert manifest["dropped"]["missing_field:paper_id"] == 20  # its rows stay counted, quarantined
    assert manifest["rows_kept"] > 0  # the s2orc file was built
    check_accounting(manifest)


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_a_truncated_archive_fails_clearly_and_other_inputs_complete(tmp_path: Path, suffix: str, capsys) -> None:
    body = b"\n".join(snli_line(i) for i in range(5000)) + b"\n"
    compressed = zstandard.ZstdCompressor().compress(body) if suffix.endswith("zst") else gzip.compress(body)
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(compressed[: len(compressed) // 2])
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"\n".join(snli_line(i) for i in range(10_000, 10_010)))
    code = cli_main(["ingest", "nli", str(broken), str(good), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert str(broken) in err and "truncated" in err
    manifest = read_manifest(tmp_path / "out" / "nli-pairs")
    assert [f["path"] for f in manifest["failures"]] == [str(broken)]
    assert str(broken) in manifest["failures"][0]["error"]
    kept = pl.concat([pl.read_parquet(p) for p in sorted((tmp_path / "out" / "nli-pairs").rglob("part-*.parquet"))])
    assert set(kept.filter(pl.col("source_file") == str(good))["id"]) == {f"p{i}" for i in range(10_000, 10_010)}
    check_accounting(manifest)


def test_zstd_archive_with_a_2gib_window_reads_whole(tmp_path: Path) -> None:
    body = b"\n".join(snli_line(i) for i in range(300)) + b"\n"
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31)
    path = tmp_path / "long.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(compression_params=params).compress(body))
    manifest = ingest_source("nli", [path], tmp_path / "out", progress=False).manifests[0]
    assert manifest["rows_read"] == 300 and manifest["failures"] == []


def test_exact_duplicates_are_removed_across_files_after_cleaning(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_bytes(snli_line(1) + b"\n" + snli_line(2))
    # Same pair as a's first line once cleaned: extra spaces and an entity.
    b.write_bytes(snli_line(1, sentence1="A man plays a guitar  on stage.", pairID="other") + b"\n" + snli_line(3))
    manifest = ingest_source("nli", [a, b], tmp_path / "out", IngestConfig(heldout_fraction=0), progress=False).manifests[0]
    assert manifest["dropped"] == {"duplicate": 1}
    frame = pl.read_parquet(tmp_path / "out" / "nli-pairs" / "part-00000.parquet")
    assert frame["id"].to_list() == ["p1", "p2", "p3"]


def test_rebuilds_are_byte_identical_and_a_second_run_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join(snli_line(i) for i in range(200)))
    config = IngestConfig(rows_per_shard=50)
    first = ingest_source("nli", [path], tmp_path / "one", config, progress=False)
    second = ingest_source("nli", [path], tmp_path / "two", config, progress=False)
    assert not first.skipped and not second.skipped
    assert tree_hashes(tmp_path / "one") == tree_hashes(tmp_path / "two")
    assert len(list((tmp_path / "one" / "nli-pairs").glob("part-*.parquet"))) >= 3
    assert ingest_source("nli", [path], tmp_path / "one", config, progress=False).skipped


def test_a_run_killed_before_its_manifest_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join(snli_line(i) for i in range(100)))
    ingest_source("nli", [path], tmp_path / "clean", progress=False)
    ingest_source("nli", [path], tmp_path / "killed", progress=False)
    # What a kill after the shards but before the manifest leaves behind.
    (tmp_path / "killed" / "nli-triplets" / "manifest.json").unlink()
    (tmp_path / "killed" / "nli-triplets" / ".part-00009.parquet.tmp-1").write_bytes(b"partial")
    assert not ingest_source("nli", [path], tmp_path / "killed", progress=False).skipped
    assert tree_hashes(tmp_path / "killed") == tree_hashes(tmp_path / "clean")


def test_a_changed_input_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join(snli_line(i) for i in range(10)))
    ingest_source("nli", [path], tmp_path / "out", progress=False)
    path.write_bytes(b"\n".join(snli_line(i) for i in range(12)))
    result = ingest_source("nli", [path], tmp_path / "out", progress=False)
    assert not result.skipped and result.manifests[0]["rows_read"] == 12


def test_a_changed_heldout_fraction_resplits_rows_cleaned_while_staging(tmp_path: Path) -> None:
    # The split is decided when rows are cleaned (while the file is staged): a staged
    # file must not be reused under another fraction.
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join(snli_line(i) for i in range(400)))
    work = tmp_path / "work"
    first = stage_file("nli", path, work, IngestConfig(heldout_fraction=0.05), 0, inputs=[path])
    first_hash = json.loads((first / "stage.json").read_text())["stage_hash"]
    config = IngestConfig(heldout_fraction=0.5)
    again = stage_file("nli", path, work, config, 0, inputs=[path])
    assert json.loads((again / "stage.json").read_text())["stage_hash"] != first_hash
    rebuilt = finalize_source("nli", [again], [path], tmp_path / "out", config, progress=False)[0]
    fresh = ingest_source("nli", [path], tmp_path / "fresh", config, progress=False).manifests[0]
    assert rebuilt["rows_heldout"] == fresh["rows_heldout"] > 100
    assert tree_hashes(tmp_path / "out" / "nli-pairs") == tree_hashes(tmp_path / "fresh" / "nli-pairs")


def test_heldout_split_is_a_pure_function_of_the_id() -> None:
    ids = [f"id-{i}" for i in range(20_000)]
    mask = heldout_mask(ids, 0.05)
    assert 0.04 < mask.mean() < 0.06
    assert (heldout_mask(ids[::-1], 0.05)[::-1] == mask).all()
    assert not heldout_mask(ids, 0.0).any()


def test_shards_load_with_datasets_and_polars(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    contradiction = snli_line(99, sentence2="Nobody is on stage.", gold_label="contradiction")
    path.write_bytes(b"\n".join([*(snli_line(i) for i in range(30)), contradiction]))
    ingest_source("nli", [path], tmp_path / "out", IngestConfig(heldout_fraction=0), progress=False)
    from datasets import load_dataset

    files = str(tmp_path / "out" / "nli-triplets" / "part-*.parquet")
    loaded = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.column_names[:2] == ["anchor", "positive"]
    assert pl.scan_parquet(files).collect().columns[:3] == ["anchor", "positive", "negative"]


def test_unknown_source_and_missing_input_are_usage_errors(tmp_path: Path, capsys) -> None:
    assert cli_main(["ingest", "nli", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert cli_main(["ingest", "nli", str(tmp_path), "--out", str(tmp_path / "o"), "-o", "bogus=1"]) == 2
    assert "no option bogus" in capsys.readouterr().err


def test_the_library_never_imports_prefect() -> None:
    code = (
        "import sys; sys.modules['prefect'] = None\n"
        "import pkgutil, importlib, pipeline\n"
        "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("value", "reason"),
    [(5, "wrong_type:sentence1"), (1.5, "wrong_type:sentence1"), (True, "wrong_type:sentence1"),
     (["a", "b"], "wrong_type:sentence1"), ({"a": 1}, "wrong_type:sentence1"), ("[deleted]", None), ("5", None)],
)
def test_non_string_values_never_pass_as_text(tmp_path: Path, value, reason) -> None:
    """polars' fast reader turns numbers and objects into text; they must still be caught."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join([snli_line(1), snli_line(2, sentence1=value), snli_line(3)]))
    manifest = ingest_source("nli", [path], tmp_path / "out", IngestConfig(heldout_fraction=0, filters=IngestConfig().filters), progress=False).manifests[0]
    if reason is None:
        assert manifest["dropped"].get("too_short", 0) + manifest["rows_kept"] == 3
    else:
        assert manifest["dropped"] == {reason: 1} and manifest["rows_kept"] == 2


@pytest.mark.parametrize(("source", "relative", "dataset"), [
    ("nli", "snli/jsonl/snli_1.0_dev.jsonl", "nli-triplets"),
    ("qqp", "quora/kaggle_first10k/preprocess2500.csv", "qqp-duplicates"),
    ("s2orc", "s2orc/sample.jsonl", "s2orc-title-abstract"),
    ("reddit", "reddit/RC_2005-12.zst", "reddit-replies"),
    ("s2orc", "s2orc/sample.jsonl", "s2orc-citations"),
    # The real sample cites no paper it holds; the bundled example does (kept pairs).
    ("s2orc", "examples/s2orc/metadata_sample.jsonl", "s2orc-citations"),
])
def test_key_partitions_give_the_same_rows_as_one_pass(
    tmp_path: Path, shared_data: Path, monkeypatch, source: str, relative: str, dataset: str
) -> None:
    """A dataset built per hash partition of its key (bounded memory) keeps and drops
    exactly the rows the one-pass build does, and rebuilds byte for byte."""
    from pipeline.io import spill

    path = (ROOT if relative.startswith("examples/") else shared_data) / relative
    config = IngestConfig(heldout_fraction=0.1)
    whole = ingest_source(source, [path], tmp_path / "whole", config, progress=False)
    # Many small partitions (about 20 of the input's size each, at least 4 KiB).
    monkeypatch.setattr(spill, "PARTITION_BYTES", max(4 << 10, path.stat().st_size // 20))
    parts = ingest_source(source, [path], tmp_path / "parts", config, progress=False)
    ingest_source(source, [path], tmp_path / "again", config, progress=False)

    def rows(root: Path) -> pl.DataFrame:
        return pl.read_parquet(root / dataset / "**" / "*.parquet").sort("source_line", "id")

    by_name = {m["dataset"]: m for m in whole.manifests}
    by_name_parts = {m["dataset"]: m for m in parts.manifests}
    for key in ("rows_read", "rows_kept", "rows_train", "rows_heldout", "dropped"):
        assert by_name_parts[dataset][key] == by_name[dataset][key], key
    assert tree_hashes(tmp_path / "parts" / dataset) == tree_hashes(tmp_path / "again" / dataset)
    if by_name[dataset]["rows_kept"] == 0:
        return  # the real S2ORC sample: every citation leaves it; the counts above are the check
    assert rows(tmp_path / "parts").equals(rows(tmp_path / "whole"))
    in_order = pl.read_parquet(tmp_path / "whole" / dataset / "part-00000.parquet")["source_line"]
    partitioned = pl.read_parquet(tmp_path / "parts" / dataset / "part-00000.parquet")["source_line"]
    assert in_order.is_sorted() and not partitioned.is_sorted(), "the partitioned build must really partition"




@pytest.mark.parametrize("source", ["nli", "pairs"])
def test_row_local_datasets_cleaned_while_staging_match_a_pass_over_staged_rows(
    tmp_path: Path, shared_data: Path, source: str
) -> None:
    """Row-local datasets (nli-pairs; each pairs-* dataset) are cleaned, filtered and
    hashed as each file is read, their parts merged at the end; staging the rows and
    building them afterwards gives the same bytes."""
    from pipeline.ingest.finalize import finalize_source
    from pipeline.ingest.stage import read_stage, stage_file

    if source == "nli":
        inputs = [shared_data / "snli/jsonl/snli_1.0_dev.jsonl", shared_data / "snli/senteval"]
    else:
        inputs = sorted((EXAMPLES / "pairs").iterdir())
    config = IngestConfig(heldout_fraction=0.1, rows_per_shard=300)
    built = {}
    for mode in ("parts", "rows"):
        out = tmp_path / mode
        staged = [
            stage_file(source, path, out / ".staging", config, index, inputs=inputs if mode == "parts" else None)
            for index, path in enumerate(inputs)
        ]
        stages = [read_stage(folder) for folder in staged]
        if mode == "rows":
            assert all(s.parts == () and s.rows_written for s in stages)
        elif source == "nli":
            assert all(s.parts == ("nli-pairs",) and s.rows_written for s in stages)  # triplets still join rows
        else:  # each file's own dataset only, and no rows spilled
            assert [len(s.parts) for s in stages] == [1] * len(inputs) and not any(s.rows_written for s in stages)
        built[mode] = {m["dataset"]: m for m in finalize_source(source, staged, inputs, out, config, progress=False)}
    assert built["parts"].keys() == built["rows"].keys()
    for dataset in built["parts"]:
        assert tree_hashes(tmp_path / "parts" / dataset) == tree_hashes(tmp_path / "rows" / dataset), dataset
    if source == "nli":
        assert built["parts"]["nli-pairs"]["rows_read"] == 1289 + 9842  # the SNLI dev subset, the SentEval dev split
        assert built["parts"]["nli-pairs"]["dropped"]["duplicate"] > 0  # pairs in both files
    else:
        assert len(built["parts"]) == len(inputs) and all(m["rows_kept"] > 0 for m in built["parts"].values())


def test_datasets_option_builds_only_the_named_ones(tmp_path: Path, shared_data: Path, capsys) -> None:
    from pipeline.ingest.stage import read_stage, stage_file

    path = shared_data / "snli/jsonl/snli_1.0_dev.jsonl"
    ingest_source("nli", [path], tmp_path / "all", progress=False)
    assert cli_main(["ingest", "nli", str(path), "--out", str(tmp_path / "one"), "--quiet", "--datasets", "nli-pairs"]) == 0
    # (and the writer lock file, .pairforge.lock, hidden: no content)
    assert sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.startswith(".")) == ["nli-pairs"]
    # A selection, not a transformation: the dataset is the same bytes either way.
    assert tree_hashes(tmp_path / "one" / "nli-pairs") == tree_hashes(tmp_path / "all" / "nli-pairs")
    # Only row-local datasets asked for: the rows themselves are never spilled.
    config = IngestConfig(datasets=("nli-pairs",))
    stage = read_stage(stage_file("nli", path, tmp_path / "staging", config, 0, inputs=[path]))
    assert stage.parts == ("nli-pairs",) and not stage.rows_written
    assert not (stage.folder / "rows").exists()
    with pytest.raises(ValueError, match=r"no dataset nli-pair .*nli-pairs, nli-triplets"):
        ingest_source("nli", [path], tmp_path / "bad", IngestConfig(datasets=("nli-pair",)), progress=False)
