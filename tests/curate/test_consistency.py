"""The consistency filter: ranks on hand-made geometry, then the whole step with the tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.corpus.manifest import check_accounting
from pipeline.curate.consistency import ConsistencyConfig, filter_consistent, judge_consistency
from pipeline.curate.step import read_step_pairs
from tests.helpers import TEST_DATA, FixedEmbedder, load_jsonl, tree_hashes, write_dataset, write_pairs

# anchor -> positive, and every text's vector (3-d, normalized by the embedder)
PAIRS = [
    ("north", "north star"),  # rank 1
    ("east", "east wind"),  # west wind and NORTH score above east wind: rank 3
    ("west", "west wind"),  # rank 1
    ("south", "south pole"),  # rank 1
    ("up", "down"),  # five positives score above: rank 6
    ("north star", "NORTH"),  # the anchor's own text is a candidate (a positive above) and no competitor: rank 1
]
VECTORS = {
    "north": [1, 0, 0], "north star": [0.95, 0.31, 0], "east": [0, 1, 0], "east wind": [0.5, 0.5, 0.707],
    "west": [0, 0.9, 0.436], "west wind": [0, 0.8, 0.6], "south": [0, 0, 1], "south pole": [0.6, 0, 0.8],
    "up": [0.6, 0.8, 0], "down": [-1, 0, 0], "NORTH": [0.8, 0.6, 0],
}  # fmt: skip


def judged(tmp_path: Path, k: int, pairs=PAIRS):
    folder = write_dataset(tmp_path / "corpus" / "d", pairs)
    from pipeline.curate.step import prepare_step

    run = prepare_step("consistency", folder, tmp_path / "corpus" / "o", ConsistencyConfig(k=k), echo=None)
    frame = read_step_pairs(run)
    embedder = FixedEmbedder(VECTORS, tmp_path / "cache")
    return judge_consistency(frame, pl.Series([], dtype=pl.String), ConsistencyConfig(k=k), embedder, run.fresh_work_dir(), False)


def brute_force_ranks(pairs, vectors) -> list[int]:
    """1 + the positives of other anchors (not equal to the anchor or its positives, case folded) scoring higher."""
    unit = {t: np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for t, v in vectors.items()}
    positives = {p for _, p in pairs}
    ranks = []
    for anchor, positive in pairs:
        own = {anchor.casefold()} | {p.casefold() for a, p in pairs if a == anchor}
        score = unit[anchor] @ unit[positive]
        ranks.append(1 + sum(unit[anchor] @ unit[c] > score + 1e-6 for c in positives if c.casefold() not in own))
    return ranks


@pytest.mark.parametrize(("k", "dropped"), [(1, [1, 4]), (2, [1, 4]), (3, [4]), (6, [])])
def test_ranks_and_drops_on_known_geometry(tmp_path, k, dropped):
    verdict = judged(tmp_path, k)
    assert verdict.details["rank"].to_list() == [1, 3, 1, 1, 6, 1] == brute_force_ranks(PAIRS, VECTORS)
    assert [i for i, r in enumerate(verdict.reasons.to_list()) if r] == dropped
    assert set(verdict.reasons.drop_nulls()) <= {"inconsistent"}
    histogram = verdict.section["rank_histogram"]
    assert list(histogram)[:3] == ["1", "2", "3"] and list(histogram)[-1] == ">10"
    assert (histogram["1"], histogram["3"], histogram["6"], sum(histogram.values())) == (4, 1, 1, 6)


def test_whole_step_with_the_tiny_model(tmp_path, tiny_model_dir):
    pairs = load_jsonl(TEST_DATA / "mining" / "pairs.jsonl")
    dataset = write_pairs(tmp_path / "corpus" / "pairs", pairs, heldout=load_jsonl(TEST_DATA / "mining" / "heldout.jsonl"))
    config = ConsistencyConfig(model=str(tiny_model_dir), k=2)
    out = tmp_path / "corpus" / "pairs-consistent"
    manifest = filter_consistent(dataset, out, config, cache_dir=tmp_path / "cache", echo=None)
    check_accounting(manifest)
    section = manifest["consistency"]
    assert sum(section["rank_histogram"].values()) == manifest["rows_read"] == len(pairs)
    kept = sum(section["rank_histogram"][str(r)] for r in (1, 2))
    assert manifest["rows_kept"] == kept and manifest["dropped"] == ({"inconsistent": len(pairs) - kept} if kept < len(pairs) else {})
    assert 0 < kept < len(pairs)  # the random model keeps some and not all
    quarantine = load_jsonl(out / "quarantine.jsonl")
    assert len(quarantine) == len(pairs) - kept and all(q["reason"] == "inconsistent" for q in quarantine)
    assert all(q["rank"] is None or q["rank"] > 2 for q in quarantine)
    assert section["corpus_size"] == len({p["positive"] for p in pairs})  # the distinct positives
    # A rerun from scratch with a warm cache: the same bytes; over a finished output: skipped.
    before = tree_hashes(out)
    shutil.rmtree(out)
    again = filter_consistent(dataset, out, config, cache_dir=tmp_path / "cache", echo=None)
    assert tree_hashes(out) == before and again["shards"] == manifest["shards"]
    assert filter_consistent(dataset, out, config, cache_dir=tmp_path / "cache", echo=None)["skipped"] is True
    # k=20 keeps every pair: a consistency filter that cannot drop drops nothing
    everything = filter_consistent(dataset, tmp_path / "corpus" / "all", ConsistencyConfig(model=str(tiny_model_dir), k=20),
                                   cache_dir=tmp_path / "cache", echo=None)  # fmt: skip
    assert everything["dropped"] == {} and everything["rows_kept"] == len(pairs)


def test_negatives_are_carried_through(tmp_path, tiny_model_dir):
    rows = [(a, p, f"negative {i}") for i, (a, p) in enumerate(PAIRS)]
    dataset = write_dataset(tmp_path / "corpus" / "t", rows)
    manifest = filter_consistent(dataset, tmp_path / "corpus" / "o", ConsistencyConfig(model=str(tiny_model_dir), k=20),
                                 cache_dir=tmp_path / "cache", echo=None)  # fmt: skip
    out = pl.read_parquet(tmp_path / "corpus" / "o" / "part-00000.parquet")
    assert manifest["columns"][:3] == ["anchor", "positive", "negative"] and out["negative"].to_list() == [r[2] for r in rows]


def test_an_extra_corpus_adds_competitors(tmp_path):
    folder = write_dataset(tmp_path / "corpus" / "d", PAIRS)
    from pipeline.curate.step import prepare_step

    config = ConsistencyConfig(k=1)
    run = prepare_step("consistency", folder, tmp_path / "corpus" / "o", config, echo=None)
    embedder = FixedEmbedder(VECTORS | {"polaris": [1, 0.01, 0]}, tmp_path / "cache")  # above "north star" for "north"
    verdict = judge_consistency(read_step_pairs(run), pl.Series(["polaris"]), config, embedder, run.fresh_work_dir(), False)
    assert verdict.details["rank"].to_list()[0] == 2 and verdict.reasons.to_list()[0] == "inconsistent"
    assert verdict.section["corpus_size"] == len(PAIRS) + 1
