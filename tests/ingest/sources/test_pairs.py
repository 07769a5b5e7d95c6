"""The pairs source: the 1B-pairs JSON-lines layouts, one dataset per file, naming."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from pipeline.corpus.folders import name_problem
from pipeline.corpus.manifest import check_accounting
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.plan import ingest_source
from pipeline.ingest.sources import pairs
from pipeline.io.context import ReadContext
from tests.helpers import EXAMPLES, TEST_DATA

FIXTURES = TEST_DATA / "pairs"
EXAMPLES = EXAMPLES / "pairs"


def staged_and_candidates(path: Path, options: pairs.Options = pairs.Options()) -> tuple[pl.DataFrame, ReadContext]:
    """The one dataset of ``path``, built as pipeline.ingest builds it (before cleaning)."""
    ctx = ReadContext(path=path, display_name=str(path))
    frames = [
        batch.with_columns(pl.lit(0, dtype=pl.Int64).alias("_file_index"), pl.lit(str(path)).alias("source_file"))
        for batch in pairs.stage_file(path, ctx, options)
    ]
    built = pairs.build_candidates(pl.concat(frames).lazy(), options)
    assert list(built) == [pairs.input_dataset_name(path, options)]
    return next(iter(built.values())).collect().sort("source_line"), ctx


def rows_of(frame: pl.DataFrame) -> list[tuple]:
    texts = [c for c in ("anchor", "positive", "negative") if c in frame.columns]
    return frame.select(*texts, "drop_reason").rows()


def write_lines(path: Path, lines: list[bytes]) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


# --- naming -------------------------------------------------------------------


def test_every_1b_config_name_maps_to_a_valid_unique_dataset_name(shared_data: Path) -> None:
    config = json.loads((shared_data / "1b_project" / "train_data_configs" / "all_datasets_v4.json").read_text())
    files = [entry["name"] for entry in config if entry["name"].endswith((".jsonl.gz", ".json.gz"))]
    assert len(files) == len(config) == 290
    names = [pairs.dataset_name(name) for name in files]
    for original, name in zip(files, names):
        assert name_problem(name) is None, name
        assert "/" not in name and name.startswith("pairs-")
        assert pairs.one_b_name(name) == original  # no information lost
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("gooaq_pairs.jsonl.gz", "pairs-gooaq_pairs"),
        ("stackexchange_duplicate_questions_title_title.json.gz", "pairs-stackexchange_duplicate_questions_title_title"),
        ("stackexchange_title_body/skeptics.stackexchange.com.jsonl.gz", "pairs-stackexchange_title_body--skeptics.stackexchange.com"),
        ("weird name (1).jsonl", "pairs-weird_name__1_"),
        ("plain.json", "pairs-plain"),
    ],
)
def test_dataset_name(relative: str, expected: str) -> None:
    assert pairs.dataset_name(relative) == expected


@pytest.mark.parametrize("bad", ["../escape.jsonl.gz", "/abs/file.jsonl", "a/./b.jsonl", ".jsonl.gz", ""])
def test_dataset_name_refuses_paths_that_escape_or_leave_nothing(bad: str) -> None:
    with pytest.raises(ValueError):
        pairs.dataset_name(bad)


def test_same_file_name_in_two_folders_needs_name_root(tmp_path: Path) -> None:
    for folder in ("stackexchange_title_body", "stackexchange_Title_Answer"):
        (tmp_path / folder).mkdir()
    first = write_lines(tmp_path / "stackexchange_title_body" / "ai.stackexchange.com.jsonl", [b'["a b", "c d"]'])
    second = write_lines(tmp_path / "stackexchange_Title_Answer" / "ai.stackexchange.com.jsonl", [b'["a b", "c d"]'])
    with pytest.raises(ValueError, match="name_root"):
        pairs.dataset_specs([first, second], pairs.Options())
    specs = pairs.dataset_specs([first, second], pairs.Options(name_root=str(tmp_path)))
    assert [s.name for s in specs] == [
        "pairs-stackexchange_title_body--ai.stackexchange.com",
        "pairs-stackexchange_Title_Answer--ai.stackexchange.com",
    ]
    assert [s.inputs for s in specs] == [(0,), (1,)]
    with pytest.raises(ValueError, match="not inside name_root"):
        pairs.dataset_specs([first], pairs.Options(name_root=str(tmp_path / "stackexchange_Title_Answer")))


# --- layouts ------------------------------------------------------------------


def test_list_pairs_file() -> None:
    frame, ctx = staged_and_candidates(FIXTURES / "list_pairs.jsonl")
    assert "negative" not in frame.columns  # the first line is a pair: a pairs dataset
    assert rows_of(frame) == [
        ("How do I reset my router?", "Steps to restart a home router", None),
        ("What is a black hole?", "A region of space where gravity prevents light from escaping.", None),
        (None, None, "too_few_texts"),
        ("Where is Lima?", "Lima is the capital of Peru.", None),  # its third text is not used
    ]
    assert frame["id"].to_list() == [f"list_pairs.jsonl:{n}" for n in (1, 2, 3, 4)]
    assert ctx.quarantine == []


def test_list_triplets_gz_file() -> None:
    path = FIXTURES / "list_triplets.jsonl.gz"
    assert pairs.file_has_negative(path)
    frame, _ = staged_and_candidates(path)
    assert rows_of(frame) == [
        ("A man is playing a guitar.", "A person plays an instrument.", "A man is sleeping.", None),
        ("Two kids run in a park.", "Children are outside.", "The kids are asleep indoors.", None),  # 4 texts: first negative
        ("A woman is cooking.", "Someone is preparing food.", None, "missing_negative"),
        ("A dog swims in a lake.", "An animal is in the water.", "The dog is at home on the sofa.", None),
    ]


def test_texts_objects_file() -> None:
    frame, _ = staged_and_candidates(FIXTURES / "texts_objects.jsonl")
    assert frame.select("anchor", "positive").rows() == [
        ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ]


def test_sets_file_pairs_the_first_two_texts() -> None:
    assert not pairs.file_has_negative(FIXTURES / "sets.jsonl")
    frame, _ = staged_and_candidates(FIXTURES / "sets.jsonl")
    assert rows_of(frame) == [
        ("A cat sits on a windowsill.", "A cat is sitting by the window.", None),
        (None, None, "too_few_texts"),
        ("People walk on a busy street.", "A crowded city sidewalk.", None),
    ]


def test_query_pos_neg_file() -> None:
    frame, _ = staged_and_candidates(FIXTURES / "query_pos_neg.jsonl")
    assert rows_of(frame) == [
        ("how tall is mount everest", "Mount Everest is 8,849 metres tall.", "K2 is the second highest mountain.", None),
        ("what do pandas eat", "Giant pandas eat almost only bamboo.", None, "missing_negative"),
        ("when did the titanic sink", "The Titanic sank on 15 April 1912.", "The Titanic was built in Belfast.", None),
        ("who invented the telephone", None, None, "too_few_texts"),
    ]


# --- bad input ----------------------------------------------------------------


def test_bad_lines_are_quarantined_with_their_reason(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            b'\xef\xbb\xbf["With a BOM first", "and a CRLF ending"]\r',
            b'["truncated json", "no close',
            b"",
            b'["caf\xe9", "not utf-8"]',
            b'["a number", 42]',
            b'["a null", null]',
            b'{"texts": "not a list"}',
            b'{"set": null}',
            b'{"query": 7, "pos": ["x"]}',
            b'{"query": "q", "pos": [1]}',
            b'{"query": "q", "pos": ["p"], "neg": {"x": 1}}',
            b'{"anchor": "a", "positive": "b"}',
            b'"just a string"',
            b"12",
            b'["fine again", "still fine"]',
        ],
    )
    frame, ctx = staged_and_candidates(path)
    assert rows_of(frame) == [
        ("With a BOM first", "and a CRLF ending", None),
        ("fine again", "still fine", None),
    ]
    by_line = {record["line"]: record["reason"] for record in ctx.quarantine}
    assert by_line == {
        2: "malformed_json",
        3: "empty_line",
        4: "invalid_utf8",
        5: "wrong_type:texts",
        6: "wrong_type:texts",
        7: "wrong_type:texts",
        8: "missing_field:set",
        9: "wrong_type:query",
        10: "wrong_type:pos",
        11: "wrong_type:neg",
        12: "unknown_json_layout",
        13: "not_a_list_or_object",
        14: "not_a_list_or_object",
    }


def test_truncated_gz_is_a_recorded_failure_and_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Big enough (about 3 MB) that the first lines decompress before the cut.
    lines = [json.dumps([f"question {i * 7919 % 100003}", f"answer {i * 104729 % 1000003}", f"other {i}"]).encode() for i in range(80000)]
    whole = write_lines(tmp_path / "long_triplets.jsonl.gz", lines)
    cut = tmp_path / "cut_triplets.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    good = FIXTURES / "texts_objects.jsonl"
    out = tmp_path / "out"
    code = main(["ingest", "pairs", str(good), str(cut), "--out", str(out), "--quiet", "--heldout-fraction", "0"])
    assert code == 1
    assert "truncated or corrupt gzip archive" in capsys.readouterr().err
    broken = json.loads((out / "pairs-cut_triplets" / "manifest.json").read_text())
    assert [f["path"] for f in broken["failures"]] == [str(cut)]
    assert broken["columns"][:3] == ["anchor", "positive", "negative"]
    check_accounting(broken)
    clean = json.loads((out / "pairs-texts_objects" / "manifest.json").read_text())
    assert clean["failures"] == [] and clean["rows_kept"] == 2


def test_each_dataset_counts_only_its_own_bad_lines(tmp_path: Path) -> None:
    noisy = write_lines(tmp_path / "noisy.jsonl", [b'["one text", "two texts"]', b"{broken", b"[3]"])
    result = ingest_source("pairs", [noisy, FIXTURES / "sets.jsonl"], tmp_path / "out", progress=False)
    manifests = {m["dataset"]: m for m in result.manifests}
    assert manifests["pairs-noisy"]["rows_read"] == 3
    assert manifests["pairs-noisy"]["dropped"] == {"malformed_json": 1, "wrong_type:texts": 1}
    assert manifests["pairs-noisy"]["quarantine"]["rows"] == 2
    assert manifests["pairs-sets"]["rows_read"] == 3
    assert manifests["pairs-sets"]["dropped"] == {"too_few_texts": 1}
    assert manifests["pairs-sets"]["quarantine"]["rows"] == 0
    for manifest in manifests.values():
        check_accounting(manifest)


def test_empty_file_gives_an_empty_pairs_dataset(tmp_path: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl.gz", [])
    assert not pairs.file_has_negative(empty)
    (manifest,) = ingest_source("pairs", [empty], tmp_path / "out", progress=False).manifests
    assert manifest["dataset"] == "pairs-empty"
    assert manifest["rows_read"] == manifest["rows_kept"] == 0


def test_examples_ingest_and_are_deterministic(tmp_path: Path) -> None:
    examples = sorted(EXAMPLES.iterdir())
    config = IngestConfig()
    first = ingest_source("pairs", examples, tmp_path / "a", config, progress=False)
    second = ingest_source("pairs", examples, tmp_path / "b", config, progress=False)
    assert len(first.manifests) == len(examples) == 4
    for a, b in zip(first.manifests, second.manifests):
        check_accounting(a)
        assert a["rows_kept"] >= 10
        assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    with_negative = {m["dataset"]: "negative" in m["columns"] for m in first.manifests}
    assert with_negative == {
        "pairs-flickr30k_captions": False,
        "pairs-nq_query_pos_neg": True,
        "pairs-specter_train_triples": True,
        "pairs-stackexchange_duplicate_questions_title_title": False,
    }
