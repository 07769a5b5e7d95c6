"""Rescoring of negatives: the rules on given scores, n-tuples, then the whole step with a tiny CrossEncoder and bi-encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.corpus.manifest import check_accounting
from pipeline.curate.rescore import RescoreConfig, judge_negatives, rescore_negatives, rescoring_model_type, text_rule_hits
from pipeline.curate.step import prepare_step, read_step_pairs
from tests.helpers import build_tiny_cross_encoder, load_jsonl, tree_hashes, write_dataset

# (anchor, positive, negative), and the score a model gives each (anchor, text)
ROWS = [
    ("q0", "A dog runs in a park.", "a  DOG runs in a park."),  # equals the positive after normalization
    ("q1", "The quick brown fox jumps over the lazy dog.", "The quick brown fox jumps over the lazy dog!"),  # 5-gram Jaccard 0.951
    ("q2", "p2", "n2"),  # scores above max_score
    ("q3", "p3", "n3"),  # within the absolute margin
    ("q4", "p4", "n4"),  # within the relative margin only
    ("q5", "p5", "n5"),  # a real negative
]
SCORES = {"p2": 0.9, "n2": 0.97, "p3": 0.8, "n3": 0.78, "p4": 0.8, "n4": 0.765, "p5": 0.9, "n5": 0.2}


def fixed_scores(anchors, texts):
    return np.array([SCORES.get(t, 0.5) for t in texts], dtype=np.float32)


def judged(tmp_path: Path, rows, config: RescoreConfig, score=fixed_scores):
    folder = write_dataset(tmp_path / "corpus" / "d", rows)
    run = prepare_step("rescore", folder, tmp_path / "corpus" / "o", config, echo=None)
    return judge_negatives(read_step_pairs(run), config, "cross-encoder", score)


def test_text_rules():
    positives = ["a dog runs.", "the quick brown fox jumps over the lazy dog.", "cats"]
    negatives = ["a dog runs.", "the quick brown fox jumps over the lazy dog!", "dogs"]
    assert text_rule_hits(negatives, positives, 0.8).tolist() == [1, 2, 0]
    assert text_rule_hits(negatives, positives, None).tolist() == [1, 0, 0]
    assert text_rule_hits(negatives, positives, 0.96).tolist() == [1, 0, 0]  # 39 of 41 5-grams shared: 0.951


def test_each_rule_drops_its_row_under_its_reason(tmp_path):
    # n3 0.78 > 0.8 - 0.03; n4 0.765 <= 0.77 but > 0.8 - 0.8 * 0.05
    config = RescoreConfig(max_score=0.95, absolute_margin=0.03, relative_margin=0.05)
    verdict = judged(tmp_path, ROWS, config)
    assert verdict.reasons.to_list() == [
        "near_duplicate_of_positive", "near_duplicate_of_positive", "likely_false_negative", "likely_false_negative",
        "likely_false_negative", None,
    ]  # fmt: skip
    assert verdict.details["rule"].to_list() == [
        "equals_positive", "near_duplicate", "max_score", "absolute_margin", "relative_margin", None,
    ]  # fmt: skip
    section = verdict.section
    assert section["negatives"] == 6 and section["negatives_dropped"] == {
        "equals_positive": 1, "near_duplicate": 1, "max_score": 1, "absolute_margin": 1, "relative_margin": 1,
    }  # fmt: skip
    # the model scored the positives and the four negatives the text rules let through
    assert section["positive_scores"]["count"] == 6 and section["negative_scores"]["count"] == section["margins"]["count"] == 4
    assert verdict.details["negative_score"].to_list()[2:5] == [0.97, 0.78, 0.765]
    assert verdict.plot[:4] == b"\x89PNG"


def test_without_thresholds_only_the_text_rules_fire(tmp_path):
    verdict = judged(tmp_path, ROWS, RescoreConfig(relative_margin=None, near_duplicate_threshold=None))
    assert verdict.reasons.to_list() == ["near_duplicate_of_positive", None, None, None, None, None]


def test_an_n_tuple_row_goes_with_its_first_failing_negative(tmp_path):
    folder = write_dataset(tmp_path / "corpus" / "t", [("q", "p5", "n5")])
    frame = pl.DataFrame({
        "anchor": ["q5", "q2"], "positive": ["p5", "p2"], "negative_1": ["n5", "n2"], "negative_2": ["p5", "n5"],
        "id": ["a", "b"], "source_file": ["f", "f"], "source_line": [1, 2],
    })  # fmt: skip
    run = prepare_step("rescore", folder, tmp_path / "corpus" / "o", RescoreConfig(), echo=None)
    verdict = judge_negatives(frame, RescoreConfig(max_score=0.95), "cross-encoder", fixed_scores)
    assert verdict.reasons.to_list() == ["near_duplicate_of_positive", "likely_false_negative"]
    assert verdict.details["negative_column"].to_list() == ["negative_2", "negative_1"]
    assert verdict.section["negatives"] == 4 and run.stage == "rescore"


def test_model_folders_are_told_apart(tmp_path, tiny_model_dir):
    assert rescoring_model_type(tiny_model_dir) == "bi-encoder"
    assert rescoring_model_type(build_tiny_cross_encoder(tmp_path)) == "cross-encoder"
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="neither a sentence-transformers CrossEncoder"):
        rescoring_model_type(tmp_path / "plain")


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


MINED = [(p["anchor"], p["positive"], n) for p, n in zip(load_jsonl(Path(__file__).parents[1] / "data" / "mining" / "pairs.jsonl"),
         ["Someone plays an instrument in front of a crowd."] + ["A cat sleeps on a sunny windowsill."] * 19)]  # fmt: skip


def test_whole_step_with_a_tiny_cross_encoder(tmp_path, tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    dataset = write_dataset(tmp_path / "corpus" / "mined", MINED)
    model = CrossEncoder(str(tiny_cross_encoder), device="cpu", local_files_only=True)
    scores = model.predict([(a, t) for a, p, n in MINED for t in (p, n)], convert_to_numpy=True).reshape(-1, 2)
    cut = float(np.median(scores[:, 1]))  # half the negatives score above it
    config = RescoreConfig(model=str(tiny_cross_encoder), max_score=cut, relative_margin=None)
    out = tmp_path / "corpus" / "mined-rescored"
    manifest = rescore_negatives(dataset, out, config, cache_dir=tmp_path / "cache", device="cpu", echo=None)
    check_accounting(manifest)
    # row 0's negative is row 1's positive, not row 0's: the text rules let it through
    expected = int((scores[:, 1] > np.float32(cut)).sum())
    assert 0 < expected < len(MINED) and manifest["dropped"] == {"likely_false_negative": expected}
    assert manifest["rescoring"]["model_type"] == "cross-encoder" and manifest["config"]["model_type"] == "cross-encoder"
    assert manifest["rescoring"]["plot"] == "scores.png" and (out / "scores.png").is_file()
    quarantine = load_jsonl(out / "quarantine.jsonl")
    assert [q["negative_score"] for q in quarantine] == pytest.approx([float(s) for s in scores[:, 1] if s > np.float32(cut)], abs=1e-5)
    before = tree_hashes(out)
    shutil.rmtree(out)
    rescore_negatives(dataset, out, config, cache_dir=tmp_path / "cache", device="cpu", echo=None)
    assert tree_hashes(out) == before
    assert rescore_negatives(dataset, out, config, cache_dir=tmp_path / "cache", echo=None)["skipped"] is True


def test_whole_step_with_a_bi_encoder(tmp_path, tiny_model_dir):
    from pipeline.embed.embedder import Embedder

    dataset = write_dataset(tmp_path / "corpus" / "mined", MINED)
    config = RescoreConfig(model=str(tiny_model_dir), relative_margin=0.0, near_duplicate_threshold=None)
    manifest = rescore_negatives(dataset, tmp_path / "corpus" / "o", config, cache_dir=tmp_path / "cache", echo=None)
    embedder = Embedder(tiny_model_dir, "cpu", "auto", tmp_path / "cache")
    a, p, n = (embedder.embed([row[i] for row in MINED]) for i in range(3))
    above = int((np.einsum("ij,ij->i", a, n) > np.einsum("ij,ij->i", a, p)).sum())  # margin 0: negatives above the positive
    assert manifest["rescoring"]["model_type"] == "bi-encoder"
    assert manifest["dropped"] == ({"likely_false_negative": above} if above else {}) and manifest["rows_kept"] == len(MINED) - above


def test_errors(tmp_path):
    pairs = write_dataset(tmp_path / "corpus" / "pairs", [("a", "b")])
    with pytest.raises(ValueError, match="needs the rescoring model's folder"):
        rescore_negatives(pairs, tmp_path / "corpus" / "o", RescoreConfig(), echo=None)
    with pytest.raises(ValueError, match="no negative column"):
        judge_negatives(pl.DataFrame({"anchor": ["a"], "positive": ["b"], "id": ["0"]}), RescoreConfig(), "bi-encoder", fixed_scores)


def test_the_relative_margin_is_sign_safe(tmp_path):
    # positive -0.4, relative margin 0.05: keep only scores <= -0.4 - 0.02 (not <= -0.4 + 0.02)
    scores = {"p": -0.4, "n1": -0.41, "n2": -0.43}
    verdict = judged(tmp_path, [("q", "p", "n1"), ("q", "p", "n2")], RescoreConfig(),
                     lambda anchors, texts: np.array([scores[t] for t in texts], dtype=np.float32))  # fmt: skip
    assert verdict.reasons.to_list() == ["likely_false_negative", None]
