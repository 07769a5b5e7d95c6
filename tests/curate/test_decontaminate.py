"""Decontamination against evaluation sets with planted overlaps: exact, 13-gram, BEIR, held-out."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.corpus.manifest import check_accounting
from pipeline.curate.decontaminate import DecontaminationConfig, decontaminate, ngram_hashes
from tests.helpers import TEST_DATA, load_jsonl, tree_hashes, write_dataset

STSB = str(TEST_DATA / "curate" / "sts-planted.csv")
LONG = (
    "Yesterday the committee voted on the long report about river pollution in the northern valley last spring"
    " after the hearings and left."
)
TRAIN = [
    ("A man with a hard hat is dancing.", "Someone dances.", "A cat naps."),  # anchor: exact
    ("Cats sleep a lot.", "a  WOMAN is cutting an onion. ", "Birds fly."),  # positive: exact after normalization
    (LONG, "It was voted.", "Fish swim."),  # anchor: 18 words shared with an STSb sentence
    ("Dogs bark.", "Puppies yelp.", "Trees grow."),  # clean
    ("A man with a hard hat.", "A man dancing.", "Rain falls."),  # clean: a part, shorter than 13 words
    ("The sun is hot.", "It is warm.", "A woman slices an onion."),  # negative: exact
]


def rows(folder: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))])


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "corpus" / "triplets", TRAIN, heldout=[("Held out anchor.", "Puppies yelp.", "x y.")])


def test_exact_matches_drop_rows_whose_anchor_positive_or_negative_is_an_evaluation_text(dataset, tmp_path):
    out = tmp_path / "corpus" / "triplets-decontaminated"
    manifest = decontaminate(dataset, out, DecontaminationConfig(stsb=(STSB,)), echo=None)
    check_accounting(manifest)
    assert (manifest["rows_read"], manifest["rows_kept"], manifest["dropped"]) == (6, 3, {"contaminated": 3})
    assert rows(out)["id"].to_list() == ["2", "3", "4"]
    quarantine = load_jsonl(out / "quarantine.jsonl")
    assert [(q["id"], q["field"], q["match"], q["reason"]) for q in quarantine] == [
        ("0", "anchor", "exact", "contaminated"), ("1", "positive", "exact", "contaminated"),
        ("5", "negative", "exact", "contaminated"),
    ]  # fmt: skip
    assert all(q["eval_set"] == STSB for q in quarantine) and manifest["quarantine"]["rows"] == 3
    section = manifest["decontamination"]
    assert section["eval_sets"] == [{"kind": "stsb", "path": STSB, "texts": 6, "rows_matched": 3}]
    assert section["fields_matched"] == {"anchor": 1, "positive": 1, "negative": 1}
    assert manifest["stage"] == "decontaminate" and manifest["curated_from"]["path"] == "triplets"
    assert manifest["columns"] == ["anchor", "positive", "negative", "id", "source_file", "source_line"]
    assert not (out / "heldout").exists()
    assert any(entry["path"] == STSB for entry in manifest["inputs"])  # an evaluation file changes the hash


def test_ngram_overlap_also_drops_a_shared_run_of_13_words(dataset, tmp_path):
    out = tmp_path / "corpus" / "ngram"
    manifest = decontaminate(dataset, out, DecontaminationConfig(stsb=(STSB,), ngram_overlap=13), echo=None)
    assert manifest["dropped"] == {"contaminated": 4} and rows(out)["id"].to_list() == ["3", "4"]
    assert manifest["decontamination"]["rows_matched"] == {"exact": 3, "ngram": 1}
    assert [q["match"] for q in load_jsonl(out / "quarantine.jsonl")] == ["exact", "exact", "ngram", "exact"]
    # 14 words hold two 13-grams; the run shared is 19 words: a 19-word bound finds it, a 20-word one does not
    assert len(ngram_hashes("the committee voted on the long report about river pollution in the northern valley", 13)) == 2
    for words, dropped in ((19, 4), (20, 3)):
        config = DecontaminationConfig(stsb=(STSB,), ngram_overlap=words)
        assert decontaminate(dataset, tmp_path / "corpus" / f"w{words}", config, echo=None)["dropped"] == {"contaminated": dropped}


def test_beir_folders_and_the_own_heldout_split(dataset, tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "Dogs bark.", "text": "Some document."}) + "\n")
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "THE SUN IS HOT."}) + "\n")
    out = tmp_path / "corpus" / "beir-out"
    manifest = decontaminate(dataset, out, DecontaminationConfig(beir=(str(beir),), heldout=True), echo=None)
    # Dogs bark. (a BEIR title), The sun is hot. (a BEIR query), Puppies yelp. (the held-out split)
    assert manifest["dropped"] == {"contaminated": 2}, load_jsonl(out / "quarantine.jsonl")
    assert [(s["kind"], s["rows_matched"]) for s in manifest["decontamination"]["eval_sets"]] == [("beir", 2), ("heldout", 0)]
    assert rows(out)["id"].to_list() == ["0", "1", "2", "4"]
    held = decontaminate(dataset, tmp_path / "corpus" / "held", DecontaminationConfig(heldout=True), echo=None)
    assert held["dropped"] == {"contaminated": 1}  # row 3's positive is a held-out positive


def test_rerun_is_byte_identical_and_skipped(dataset, tmp_path, capsys):
    config = DecontaminationConfig(stsb=(STSB,), ngram_overlap=13)
    first = decontaminate(dataset, tmp_path / "corpus" / "a", config, echo=None)
    before = tree_hashes(tmp_path / "corpus" / "a")
    again = decontaminate(dataset, tmp_path / "corpus" / "a", config)
    assert again["skipped"] is True and "skipped" in capsys.readouterr().out
    forced = decontaminate(dataset, tmp_path / "corpus" / "a", config, force=True, echo=None)
    assert tree_hashes(tmp_path / "corpus" / "a") == before and forced["shards"] == first["shards"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (DecontaminationConfig(), "needs an evaluation set"),
        (DecontaminationConfig(stsb=("missing.csv",)), "STSb file not found: missing.csv"),
        (DecontaminationConfig(beir=("/nonexistent",)), "holds neither corpus.jsonl nor queries.jsonl"),
    ],
)
def test_errors_name_what_is_missing(dataset, tmp_path, config, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        decontaminate(dataset, tmp_path / "corpus" / "o", config, echo=None)


def test_a_malformed_beir_line_is_named(dataset, tmp_path):
    beir = tmp_path / "bad"
    beir.mkdir()
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "ok"}\n{"_id": "q2"}\n')
    with pytest.raises(ValueError, match=r"queries.jsonl:2: expected a JSON object with a string 'text'"):
        decontaminate(dataset, tmp_path / "corpus" / "o", DecontaminationConfig(beir=(str(beir),)), echo=None)
