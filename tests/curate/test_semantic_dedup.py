"""Semantic dedup: near-copies on hand-made geometry, k-means clusters, the whole step with the tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.corpus.manifest import check_accounting
from pipeline.curate.semantic_dedup import SemanticDedupConfig, deduplicate_semantically, judge_semantic_duplicates
from pipeline.curate.step import normalized, prepare_step, read_step_pairs
from tests.helpers import TEST_DATA, FixedEmbedder, load_jsonl, tree_hashes, write_dataset, write_pairs

ANCHORS = {
    "a cat sits": [1, 0, 0],
    "a cat sits.": [0.999, 0.0447, 0],  # distance 0.001 from "a cat sits"
    "dogs run": [0, 1, 0],
    "cats sit": [0.98, 0.199, 0],  # distance 0.02
    "a cat sat": [0.995, 0.0998, 0],  # distance 0.005 from "a cat sits", 0.0015 from "a cat sits."
}
ROWS = [("a cat sits", "p0"), ("a cat sits.", "p1"), ("dogs run", "p2"), ("a cat sits", "p3"), ("cats sit", "p4"), ("a cat sat", "p5")]


def judge(tmp_path: Path, rows, vectors, config: SemanticDedupConfig):
    folder = write_dataset(tmp_path / "corpus" / f"d{len(list(tmp_path.glob('corpus/*')))}", rows)
    run = prepare_step("semantic_dedup", folder, folder.parent / (folder.name + "-out"), config, echo=None)
    return judge_semantic_duplicates(read_step_pairs(run), config, FixedEmbedder(vectors, tmp_path), run.fresh_work_dir(), False)


@pytest.mark.parametrize(
    ("eps", "keep", "dropped", "duplicate_of"),
    [
        (0.01, "first", [1, 3, 5], ["0", "0", "0"]),
        (0.03, "first", [1, 3, 4, 5], ["0", "0", "0", "0"]),
        (0.0005, "first", [3], ["0"]),  # only the same text
        # nearest the centroid first: "cats sit" stays and "a cat sat" is its copy; "a cat sits." is not
        # (distance 0.012), it stays and "a cat sits" (both rows) is its copy
        (0.01, "easy", [0, 3, 5], ["1", "1", "4"]),
    ],
)
def test_near_copies_of_a_kept_anchor_are_dropped(tmp_path, eps, keep, dropped, duplicate_of):
    verdict = judge(tmp_path, ROWS, ANCHORS, SemanticDedupConfig(eps=eps, which_to_keep=keep))
    assert [i for i, r in enumerate(verdict.reasons.to_list()) if r] == dropped
    assert set(verdict.reasons.drop_nulls()) == {"semantic_duplicate"}
    assert [d for d in verdict.details["duplicate_of"].to_list() if d] == duplicate_of
    assert verdict.section["n_clusters"] == 1 and verdict.section["distinct_anchors"] == 5


def test_the_same_anchor_with_another_positive_is_a_duplicate_at_similarity_one(tmp_path):
    verdict = judge(tmp_path, ROWS, ANCHORS, SemanticDedupConfig(eps=0.0, which_to_keep="first"))
    assert verdict.reasons.to_list() == [None, None, None, "semantic_duplicate", None, None]
    assert verdict.details["similarity"].to_list()[3] == 1.0 and verdict.section["rows_repeating_an_anchor"] == 1


def test_kmeans_clusters_keep_planted_copies_together(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(100, 8))
    copies = base[:10] + rng.normal(scale=1e-3, size=(10, 8))  # within 1e-5 cosine distance of their originals
    vectors = {f"t{i}": v for i, v in enumerate(np.concatenate([base, copies]))}
    rows = [(f"t{i}", f"p{i}") for i in range(110)]
    config = SemanticDedupConfig(eps=0.001, n_clusters=2, which_to_keep="first", seed=5)
    verdict = judge(tmp_path, rows, vectors, config)
    assert verdict.section["n_clusters"] == 2 and verdict.section["cluster_sizes"]["max"] < 110
    assert [i for i, r in enumerate(verdict.reasons.to_list()) if r] == list(range(100, 110))
    assert verdict.details["duplicate_of"].to_list()[100:] == [str(i) for i in range(10)]
    again = judge(tmp_path, rows, vectors, config)
    assert again.reasons.to_list() == verdict.reasons.to_list() and again.section == verdict.section
    assert SemanticDedupConfig(n_clusters=50).clusters_for(110) == 2  # at most one cluster per 39 anchors


def brute_force_first_kept(vectors: np.ndarray, eps: float) -> list[bool]:
    kept: list[int] = []
    flags = []
    for i, v in enumerate(vectors):
        keep = all(float(v @ vectors[j]) < np.float32(1 - eps) for j in kept)
        flags.append(keep)
        kept += [i] if keep else []
    return flags


def test_whole_step_with_the_tiny_model_matches_a_brute_force_pass(tmp_path, tiny_model_dir):
    from pipeline.embed.embedder import Embedder

    pairs = load_jsonl(TEST_DATA / "mining" / "pairs.jsonl")
    dataset = write_pairs(tmp_path / "corpus" / "pairs", pairs)
    eps = 0.002
    config = SemanticDedupConfig(model=str(tiny_model_dir), eps=eps, which_to_keep="first")
    out = tmp_path / "corpus" / "pairs-semdedup"
    manifest = deduplicate_semantically(dataset, out, config, cache_dir=tmp_path / "cache", echo=None)
    check_accounting(manifest)
    anchors = normalized(read_step_pairs(prepare_step("x", dataset, tmp_path / "corpus" / "y", config, echo=None)).get_column("anchor"))
    distinct = list(dict.fromkeys(anchors.to_list()))
    vectors = Embedder(tiny_model_dir, "cpu", "auto", tmp_path / "cache").embed(distinct)
    kept_anchors = {t for t, k in zip(distinct, brute_force_first_kept(vectors, eps)) if k}
    expected = [a in kept_anchors and a not in anchors.to_list()[:i] for i, a in enumerate(anchors.to_list())]
    assert manifest["rows_kept"] == sum(expected) and manifest["dropped"] == {"semantic_duplicate": len(pairs) - sum(expected)}
    assert 1 <= len(pairs) - sum(expected) < len(pairs) - 1  # some dropped (the repeated anchor at least), not all
    quarantine = load_jsonl(out / "quarantine.jsonl")
    assert [q["id"] for q in quarantine] == [f"t-{i}" for i, e in enumerate(expected) if not e]
    before = tree_hashes(out)
    shutil.rmtree(out)
    deduplicate_semantically(dataset, out, config, cache_dir=tmp_path / "cache", echo=None)
    assert tree_hashes(out) == before
    assert deduplicate_semantically(dataset, out, config, cache_dir=tmp_path / "cache", echo=None)["skipped"] is True
