"""The pooled held-out benchmark on a tiny corpus with hand-made geometry: exact documents, ranks and triplets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate import heldout as heldout_module
from pipeline.evaluate.benchmarks import corpus_datasets
from pipeline.evaluate.bm25 import best_documents
from pipeline.evaluate.heldout import load_pooled_heldout, score_heldout
from pipeline.evaluate.metrics import paired_interval, ranking_scores, triplet_hits
from pipeline.evaluate.task import compare_metrics
from tests.evaluate.test_evaluate import FixedEmbeddings, _unit
from tests.helpers import write_dataset

ALPHA_HELDOUT = [("red apple pie", "apple pie with red apples"), ("blue sky today", "the sky is blue")]
ALPHA_TRAIN = [
    ("red apple pie", "baked apple dessert"),  # a training positive of a held-out anchor: relevant, not a distractor
    ("green frog", "a frog that is green"),
    ("red car fast", "a fast red car"),
    ("night", "a dark sky"),
]
BETA_HELDOUT = [("a tall tree", "red apple pie", "a short bush")]  # its positive is another query's own text
BETA_TRAIN = [("old house", "an old wooden house", "a new glass house")]

# Angles (degrees) on the unit circle: cosine similarity falls with the angle between two texts.
ANGLES = {
    "red apple pie": 0, "apple pie with red apples": 20, "baked apple dessert": 50, "a fast red car": 10,
    "blue sky today": 90, "the sky is blue": 95, "a dark sky": 125,
    "a tall tree": 180, "an old wooden house": 170, "a new glass house": 200, "a frog that is green": 150,
}  # fmt: skip


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write_dataset(root / "alpha", ALPHA_TRAIN, ALPHA_HELDOUT)
    write_dataset(root / "beta", BETA_TRAIN, BETA_HELDOUT)
    return root


def embedder() -> FixedEmbeddings:
    return FixedEmbeddings({text: _unit(angle)[0] for text, angle in ANGLES.items()})


def test_queries_documents_relevance_and_mined_negatives(corpus: Path) -> None:
    pooled = load_pooled_heldout(corpus, corpus_datasets(corpus), max_rows=None, max_distractors=10)
    assert pooled.datasets == ["alpha", "beta"]
    assert pooled.queries == ["red apple pie", "blue sky today", "a tall tree"]
    # held-out positives, the training positive of a held-out anchor, then distractors:
    # the smaller dataset (beta) is read first; the negative of a held-out row is no document
    assert pooled.documents == [
        "apple pie with red apples", "the sky is blue", "red apple pie", "baked apple dessert",
        "an old wooden house", "a new glass house", "a frog that is green", "a fast red car", "a dark sky",
    ]  # fmt: skip
    assert pooled.distractors == 5 and pooled.training_rows_read == 5
    assert pooled.relevant == [{0, 3}, {1}, {2}]
    assert pooled.own_text == [2, None, None]  # "red apple pie" is left out of its own ranking
    # BM25: "red" -> the car; "sky" -> the dark sky; "a" -> the shortest text holding it
    assert [pooled.documents[n] for n in pooled.negatives] == ["a fast red car", "a dark sky", "a dark sky"]
    assert pooled.triplet_rows() == [0, 1, 2]
    assert pooled.metric_rows()["heldout/retrieval/ndcg@10"] == 3
    assert pooled.metric_rows()["retrieval/alpha/mrr@10"] == 2


def test_exact_ranks_of_the_pooled_retrieval_and_triplets(corpus: Path) -> None:
    pooled = load_pooled_heldout(corpus, corpus_datasets(corpus), max_rows=None, max_distractors=10)
    scores = score_heldout(embedder(), pooled)
    # q0 ranks the car (10 deg), then its positives at ranks 2 and 3 (its own text is left out);
    # q1 finds its positive first; q2's positive lies opposite, at rank 9 of 9
    ndcg_q0 = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert scores["heldout/retrieval/mrr@10"] == pytest.approx((1 / 2 + 1 + 1 / 9) / 3)
    assert scores["heldout/retrieval/ndcg@10"] == pytest.approx((ndcg_q0 + 1 + 1 / np.log2(10)) / 3)
    assert scores["heldout/retrieval/recall@1"] == pytest.approx(1 / 3)
    assert scores["heldout/retrieval/recall@10"] == pytest.approx(1.0)
    # triplets: the car is closer to q0 than its positive (miss), the dark sky is farther from
    # q1 than the blue sky (hit), q2's positive is opposite it (miss)
    assert scores["heldout/triplet_accuracy"] == pytest.approx(1 / 3)
    # each dataset on its own: among its own held-out positives every query finds its own first
    assert scores["retrieval/alpha/mrr@10"] == scores["retrieval/beta/mrr@10"] == 1.0


def test_distractors_are_capped_and_reading_stops_at_the_cap(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heldout_module, "SCAN_BATCH_ROWS", 2)
    many = [(f"anchor {i}", f"distractor number {i}") for i in range(50)]
    write_dataset(corpus / "gamma", many, [("held anchor", "held positive")])
    pooled = load_pooled_heldout(corpus, corpus_datasets(corpus), max_rows=None, max_distractors=4)
    assert pooled.distractors == 4
    assert pooled.training_rows_read < 10  # gamma's 50 rows are not all read
    assert "distractor number 49" not in pooled.documents


def test_max_rows_and_a_corpus_without_heldout_rows(corpus: Path, tmp_path: Path) -> None:
    pooled = load_pooled_heldout(corpus, corpus_datasets(corpus), max_rows=1, max_distractors=0)
    assert pooled.rows_used == {"alpha": 1, "beta": 1} and pooled.heldout_rows == {"alpha": 2, "beta": 1}
    assert pooled.distractors == 0 and pooled.training_rows_read == 0
    empty = tmp_path / "empty"
    write_dataset(empty / "only-train", ALPHA_TRAIN)
    nothing = load_pooled_heldout(empty, corpus_datasets(empty), max_rows=None, max_distractors=10)
    assert nothing.queries == [] and score_heldout(embedder(), nothing) == {}


def test_bm25_picks_the_best_allowed_document() -> None:
    documents = ["the cat sat", "a cat and a dog sat on the mat", "dogs bark", "cat"]
    assert best_documents(documents, ["cat"], [set()]) == [3]  # the shortest text holding the word
    assert best_documents(documents, ["cat"], [{3}]) == [0]
    assert best_documents(documents, ["dog mat", "zebra"], [set(), set()]) == [1, None]
    assert best_documents(documents, ["cat"], [{0, 1, 3}]) == [None]
    with pytest.raises(ValueError, match="exclusion sets"):
        best_documents(documents, ["cat"], [])


def test_ranking_scores_agree_with_sentence_transformers() -> None:
    from pipeline.evaluate.metrics import _evaluation

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(110, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries, documents = vectors[:30], vectors[30:]
    relevant = [set(rng.choice(80, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(30)]
    texts = {f"q{i}": v for i, v in enumerate(queries)} | {f"d{i}": v for i, v in enumerate(documents)}
    from sentence_transformers.util import cos_sim

    evaluator = _evaluation().InformationRetrievalEvaluator(
        queries={f"q{i}": f"q{i}" for i in range(30)}, corpus={f"d{i}": f"d{i}" for i in range(80)},
        relevant_docs={f"q{i}": {f"d{j}" for j in wanted} for i, wanted in enumerate(relevant)},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10], map_at_k=[10],
        show_progress_bar=False, write_csv=False, score_functions={"cosine": cos_sim}, main_score_function="cosine",
    )  # fmt: skip
    theirs = evaluator(FixedEmbeddings(texts))
    ours = ranking_scores(queries, documents, relevant)
    for name in ("mrr@10", "ndcg@10", "recall@1", "recall@10"):
        assert ours[name] == pytest.approx(theirs[f"cosine_{name}"], abs=1e-6), name
    with pytest.raises(ValueError, match="relevant document"):
        ranking_scores(queries[:2], documents, [{0}, set()])


def test_triplet_hits_are_strict() -> None:
    anchor = np.repeat(_unit(0), 3, axis=0)
    assert triplet_hits(anchor, _unit(10, 50, 20), _unit(40, 20, 20)).tolist() == [True, False, False]


def test_paired_intervals_tell_noise_from_a_shift() -> None:
    theirs = np.zeros(67)
    assert paired_interval(theirs, theirs) == (0.0, 0.0)
    assert paired_interval(theirs + 1.0, theirs) == (1.0, 1.0)
    one_row_worse = theirs.copy()
    one_row_worse[5] = -1.0  # one triplet of 67 lost: a drop of 0.015, beyond a 0.01 tolerance
    low, high = paired_interval(one_row_worse, theirs)
    assert low < 0 <= high
    assert paired_interval(one_row_worse, theirs) == (low, high)  # seeded: the same interval every time
    rows, verdict = compare_metrics(
        {"heldout/triplet_accuracy": -1 / 67, "stsb/dev/spearman_cosine": 0.02}, {"heldout/triplet_accuracy": 0.0, "stsb/dev/spearman_cosine": 0.0},
        tolerance=0.01, rows={"heldout/triplet_accuracy": 67, "stsb/dev/spearman_cosine": 1500},
        intervals={"heldout/triplet_accuracy": (low, high)},
    )  # fmt: skip
    assert verdict["within_noise"] == ["heldout/triplet_accuracy"] and verdict["regressed"] == []
    assert verdict["improved"] == ["stsb/dev/spearman_cosine"] and verdict["verdict"] == "better"
    assert rows[0]["interval"] == [round(low, 6), round(high, 6)] and rows[1]["interval"] is None
