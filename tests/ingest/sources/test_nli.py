"""NLI source: SNLI JSON lines and the SentEval layout, on the real samples and fixtures."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl

from pipeline.corpus.manifest import check_accounting
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.plan import ingest_source
from tests.helpers import EXAMPLES

EXAMPLES = EXAMPLES / "nli"


def test_snli_dev_sample_counts_match_an_independent_count(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "snli" / "jsonl" / "snli_1.0_dev.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    labels = Counter(r["gold_label"] for r in rows)
    assert len(rows) == 1289 and labels["-"] == 16
    config = IngestConfig(heldout_fraction=0, dedup=False, filters=IngestConfig().filters)
    manifests = {m["dataset"]: m for m in ingest_source("nli", [path], tmp_path, config, progress=False).manifests}
    pairs = manifests["nli-pairs"]
    assert pairs["rows_read"] == 1289
    assert pairs["dropped"]["no_gold_label"] == 16
    assert pairs["dropped"]["not_entailment"] == labels["neutral"] + labels["contradiction"]
    assert pairs["rows_kept"] + pairs["dropped"].get("anchor_equals_positive", 0) == labels["entailment"]
    first_contradiction = {}
    for r in rows:
        if r["gold_label"] == "contradiction":
            first_contradiction.setdefault(r["sentence1"], r["sentence2"])
    triplets = manifests["nli-triplets"]
    with_negative = sum(1 for r in rows if r["gold_label"] == "entailment" and r["sentence1"] in first_contradiction)
    assert triplets["dropped"]["no_contradiction_for_premise"] == labels["entailment"] - with_negative
    for manifest in manifests.values():
        check_accounting(manifest)


def test_senteval_layout_reads_all_9842_pairs(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "snli" / "senteval"
    labels = Counter(line.strip() for line in (folder / "labels.dev").read_text().splitlines())
    assert sum(labels.values()) == 9842
    manifests = {m["dataset"]: m for m in ingest_source("nli", [folder / "s1.dev"], tmp_path, progress=False).manifests}
    pairs = manifests["nli-pairs"]
    assert pairs["rows_read"] == 9842
    assert pairs["dropped"]["not_entailment"] == labels["neutral"] + labels["contradiction"]
    assert len(pairs["inputs"][0]["files"]) == 3
    frame = pl.read_parquet(folder.parent / "x" if False else tmp_path / "nli-pairs" / "part-00000.parquet")
    assert not frame["anchor"].str.ends_with(" ").any()  # SentEval's trailing spaces are cleaned


def test_bundled_example_builds_pairs_and_triplets(tmp_path: Path) -> None:
    manifests = {m["dataset"]: m for m in ingest_source("nli", [EXAMPLES / "snli_sample.jsonl"], tmp_path, progress=False).manifests}
    assert manifests["nli-pairs"]["rows_read"] == 62
    assert manifests["nli-pairs"]["dropped"] == {"duplicate": 1, "no_gold_label": 2, "not_entailment": 38}
    triplets = pl.read_parquet(tmp_path / "nli-triplets" / "part-00000.parquet")
    row = triplets.filter(pl.col("anchor").str.starts_with("A man & his son")).to_dicts()
    assert row == [] or row[0]["negative"]  # the &amp; line has no contradiction: dropped, counted
    assert manifests["nli-triplets"]["dropped"]["no_contradiction_for_premise"] == 1
