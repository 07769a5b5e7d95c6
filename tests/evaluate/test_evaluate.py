"""Tests of pipeline.evaluate and pipeline.report: readers on real and hand-written
files, retrieval metrics on hand-made embeddings, baseline resolution, and a whole
evaluation of the tiny model on a tiny corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flows.cli import build_parser
from pipeline.corpus.files import atomic_write_json
from pipeline.corpus.schema import arrow_schema
from pipeline.corpus.shards import ShardWriter
from pipeline.embed.models import default_model_path
from pipeline.evaluate.benchmarks import corpus_datasets, read_heldout_triplets, read_nli_input, read_nli_pairs, read_stsb
from pipeline.evaluate.config import EvalConfig
from pipeline.evaluate.metrics import triplet_accuracy
from pipeline.evaluate.report import report_markdown
from pipeline.evaluate.task import evaluate_model, resolve_baseline
from tests.helpers import TEST_DATA

DATA = TEST_DATA / "evaluate"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- STSb ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "rows", "nine_field_rows", "first_pair"),
    [
        ("sts-dev.csv", 1500, 22, ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)),
        ("sts-train.csv", 5749, 197, ("A plane is taking off.", "An air plane is taking off.", 5.0)),
    ],
)
def test_stsb_reader_keeps_every_real_row(
    shared_data: Path, name: str, rows: int, nine_field_rows: int, first_pair: tuple[str, str, float]
) -> None:
    path = shared_data / "stsb" / name
    pairs = read_stsb(path)
    assert (pairs.rows_read, len(pairs.scores), pairs.dropped.as_dict()) == (rows, rows, {})
    # the trailing source fields of 9-field rows never leak into the sentences
    assert not any("newsbrief" in s for s in pairs.sentences1 + pairs.sentences2)
    raw = path.read_text(encoding="utf-8").split("\n")[:-1]
    assert sum(len(line.split("\t")) == 9 for line in raw) == nine_field_rows
    assert [float(line.split("\t")[4]) for line in raw] == pairs.scores
    assert (pairs.sentences1[0], pairs.sentences2[0], pairs.scores[0]) == first_pair


def test_stsb_reader_counts_drops_by_reason() -> None:
    pairs = read_stsb(DATA / "sts-sample.csv")
    assert pairs.rows_read == 8
    assert pairs.dropped.as_dict() == {"bad_score": 2, "empty_sentence": 1, "too_few_fields": 1}
    assert pairs.rows_read == len(pairs.scores) + pairs.dropped.total()
    # quotes inside sentences are kept as text (quoting off)
    assert pairs.sentences1[1] == 'Driver says "sorry" after crash'
    assert pairs.sentences2[1] == 'Driver apologises after the "crash'
    assert pairs.scores == [5.0, 4.0, 0.5, 1.0]


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"", "no STSb rows"), (b"a\tb\tc\n", "no STSb rows"), (b"g\tf\t2012\t1\t5.0\t\xff\xfe\tx\n", "not valid UTF-8")],
    ids=["empty", "all-dropped", "invalid-utf8"],
)
def test_stsb_reader_errors_name_the_file(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "broken-sts.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=error) as caught:
        read_stsb(path)
    assert "broken-sts.csv" in str(caught.value)


# --- NLI -----------------------------------------------------------------------------------
def _labels_by_pair(jsonl: Path) -> dict[tuple[str, str], str]:
    labels = {}
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        labels[(row["sentence1"].strip(), row["sentence2"].strip())] = row["gold_label"]
    return labels


def test_nli_jsonl_reader_on_real_snli(shared_data: Path) -> None:
    path = shared_data / "snli" / "jsonl" / "snli_1.0_dev.jsonl"
    pairs = read_nli_pairs(path)
    assert (pairs.rows_read, len(pairs.labels)) == (1289, 1273)
    assert pairs.dropped.as_dict() == {"no_gold_label": 16}
    triplets = read_nli_input(path)
    assert (triplets.name, triplets.format, triplets.pairs, len(triplets.anchors)) == ("snli_1.0_dev", "jsonl", 1273, 427)
    assert triplets.pairs == triplets.pairs_in_triplets + sum(
        triplets.dropped.counts[r] for r in ("neutral", "no_contradiction", "no_entailment")
    )
    labels = _labels_by_pair(path)
    assert Counter(labels.values())["neutral"] == triplets.dropped.counts["neutral"]
    for anchor, positive, negative in zip(triplets.anchors, triplets.positives, triplets.negatives):
        assert labels[(anchor, positive)] == "entailment"
        assert labels[(anchor, negative)] == "contradiction"


@pytest.mark.parametrize("which", ["folder", "s1-file"])
def test_nli_senteval_reader_on_real_snli(shared_data: Path, which: str) -> None:
    folder = shared_data / "snli" / "senteval"
    pairs = read_nli_pairs(folder if which == "folder" else folder / "s1.dev")
    assert (pairs.rows_read, len(pairs.labels), pairs.dropped.as_dict()) == (9842, 9842, {})
    assert Counter(pairs.labels) == {"entailment": 3329, "contradiction": 3278, "neutral": 3235}
    assert not any(s.endswith(" ") for s in pairs.premises + pairs.hypotheses)
    triplets = read_nli_input(folder)
    assert (triplets.name, triplets.format, len(triplets.anchors)) == ("senteval.dev", "senteval", 3256)
    assert triplets.pairs == triplets.pairs_in_triplets + sum(
        triplets.dropped.counts[r] for r in ("neutral", "no_contradiction", "no_entailment")
    )


def test_nli_jsonl_reader_counts_drops_by_reason() -> None:
    """The evaluation reads NLI files with the nli source's reader: its reasons for unreadable lines."""
    triplets = read_nli_input(DATA / "nli-sample.jsonl")
    assert triplets.rows_read == 13
    assert triplets.dropped.as_dict() == {
        "malformed_json": 1,
        "empty_sentence": 1,
        "missing_field:sentence2": 1,
        "neutral": 1,
        "no_contradiction": 1,
        "no_entailment": 1,
        "no_gold_label": 1,
        "unknown_label": 1,
    }
    # the dogs premise has one entailment and two contradictions: two triplets
    assert list(zip(triplets.anchors, triplets.positives, triplets.negatives)) == [
        ("A man plays a guitar on stage.", "A man is playing music.", "A man is sleeping at home."),
        ("Two dogs run through a field.", "Animals are outside.", "Two cats sleep on a sofa."),
        ("Two dogs run through a field.", "Animals are outside.", "No animals are in the field."),
    ]
    assert triplets.pairs == 8 and triplets.pairs_in_triplets == 5


def test_nli_senteval_fixture_and_length_mismatch(tmp_path: Path) -> None:
    triplets = read_nli_input(DATA / "senteval")
    assert (triplets.name, triplets.rows_read, triplets.pairs) == ("senteval.test", 5, 4)
    assert triplets.anchors == ["A man plays a guitar on stage ."]
    assert triplets.dropped.as_dict() == {"neutral": 1, "no_contradiction": 1, "no_gold_label": 1}

    for name in ("s1.x", "s2.x"):
        (tmp_path / name).write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "labels.x").write_text("entailment\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"differ in length.*'labels\.x': 1"):
        read_nli_pairs(tmp_path)
    (tmp_path / "labels.x").unlink()
    with pytest.raises(ValueError, match=r"labels\.x"):
        read_nli_pairs(tmp_path / "s1.x")


# --- retrieval and triplet metrics on hand-made embeddings ----------------------------------
def _unit(*angles_deg: float) -> np.ndarray:
    radians = np.deg2rad(angles_deg)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


class FixedEmbeddings:
    """A stand-in model for sentence-transformers' evaluators: each text's embedding is given."""

    similarity_fn_name = "cosine"

    class _ModelCard:
        def set_evaluation_metrics(self, *_args) -> None:
            pass

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.model_card_data = self._ModelCard()

    def encode(self, sentences, convert_to_tensor: bool = False, **_kwargs):
        import torch

        array = np.stack([self.vectors[s] for s in sentences]).astype(np.float32)
        return torch.from_numpy(array) if convert_to_tensor else array

    encode_query = encode
    encode_document = encode

    def similarity(self, a, b):
        from sentence_transformers.util import cos_sim

        return cos_sim(a, b)


def _angles(prefix: str, *angles: float) -> tuple[list[str], dict[str, np.ndarray]]:
    names = [f"{prefix}{angle:g}" for angle in angles]
    return names, dict(zip(names, _unit(*angles)))


def test_triplet_accuracy_is_strict() -> None:
    _, a = _angles("a", 0)
    positives, p = _angles("p", 10, 50, 20)
    negatives, n = _angles("n", 40, 20, 20)  # right, wrong, tie (a tie is not a success)
    assert triplet_accuracy(FixedEmbeddings(a | p | n), ["a0"] * 3, positives, negatives) == pytest.approx(1 / 3)


# --- baseline, corpus names ----------------------------------------------------------------
def test_resolve_baseline(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = tmp_path / "trained"
    model.mkdir()
    assert resolve_baseline(model, None)[0] == default_model_path()
    assert resolve_baseline(model, tiny_model_dir) == (tiny_model_dir, "--baseline")
    for value in (None, "default"):
        atomic_write_json(model / "train_config.json", {"base_model": value})
        assert resolve_baseline(model, None)[0] == default_model_path()
    atomic_write_json(model / "train_config.json", {"base_model": str(tiny_model_dir)})
    assert resolve_baseline(model, None) == (tiny_model_dir, "train_config.json base_model")
    (tmp_path / "linked-baseline-model").symlink_to(tiny_model_dir, target_is_directory=True)
    atomic_write_json(model / "train_config.json", {"base_model": "../linked-baseline-model"})  # relative to the model folder
    assert resolve_baseline(model, None)[0].resolve() == tiny_model_dir.resolve()
    atomic_write_json(model / "train_config.json", {"config": {"model": str(tiny_model_dir)}})  # pipeline.train's layout
    assert resolve_baseline(model, None) == (tiny_model_dir, "train_config.json config.model")
    atomic_write_json(model / "train_config.json", {"base_model": None, "config": {"model": str(tiny_model_dir)}})
    assert resolve_baseline(model, None)[0] == default_model_path()
    atomic_write_json(model / "train_config.json", {"base_model": str(tmp_path / "gone")})
    with pytest.raises(FileNotFoundError, match="train_config.json.*gone"):
        resolve_baseline(model, None)


def test_dataset_names_cannot_leave_the_corpus(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "outside").mkdir()
    atomic_write_json(tmp_path / "outside" / "manifest.json", {})
    with pytest.raises(ValueError, match="escapes"):
        corpus_datasets(tmp_path / "corpus", ["../outside"])
    (tmp_path / "corpus" / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(ValueError, match="resolves outside the corpus root"):
        corpus_datasets(tmp_path / "corpus", ["link"])


# --- whole evaluation -----------------------------------------------------------------------
PAIRS = [
    ("How do I bake bread at home?", "Easy steps to make homemade bread."),
    ("What is the capital of France?", "Paris is the capital city of France."),
    ("Best way to learn the guitar", "Tips for beginners learning to play guitar."),
    ("Why is the sky blue?", "Rayleigh scattering makes the sky look blue."),
    ("How to fix a flat bicycle tyre", "Repairing a punctured bike tire step by step."),
    ("Symptoms of the common cold", "A runny nose and sore throat are signs of a cold."),
]


def _write_dataset(folder: Path, with_negative: bool) -> None:
    """A tiny complete dataset folder: 2 train rows, the rest held out, manifest last."""
    schema = arrow_schema(with_negative)
    rows = []
    for i, (anchor, positive) in enumerate(PAIRS):
        row = {"anchor": anchor, "positive": positive, "id": f"r{i}", "source_file": "hand.jsonl", "source_line": i + 1}
        if with_negative:
            row["negative"] = PAIRS[(i + 1) % len(PAIRS)][1]
        rows.append(row)
    shards = []
    for prefix, part in (("", rows[:2]), ("heldout", rows[2:])):
        with ShardWriter(folder, schema, rows_per_shard=3, prefix=prefix) as writer:
            writer.write(pa.Table.from_pylist(part, schema=schema))
        shards += [s.as_dict() for s in writer.shards]
    atomic_write_json(
        folder / "manifest.json",
        {"dataset": folder.name, "rows_read": 6, "rows_kept": 6, "rows_train": 2, "rows_heldout": 4, "dropped": {}, "shards": shards},
    )


@pytest.fixture()
def tiny_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    _write_dataset(corpus / "qa-pairs", with_negative=False)
    _write_dataset(corpus / "nested" / "qa-triplets", with_negative=True)
    (corpus / "unfinished").mkdir()  # no manifest: not a dataset
    return corpus


def test_heldout_triplets_from_a_corpus_dataset(tiny_corpus: Path) -> None:
    triplets = read_nli_input(tiny_corpus / "nested" / "qa-triplets", max_rows=3)
    assert (triplets.format, triplets.rows_read, triplets.pairs) == ("corpus-heldout", 4, 3)
    assert triplets.dropped.as_dict() == {"over_max_heldout_rows": 1}
    assert triplets.anchors == [a for a, _ in PAIRS[2:5]]
    with pytest.raises(ValueError, match="no negative column"):
        read_heldout_triplets(tiny_corpus / "qa-pairs")


def test_whole_evaluation_on_tiny_data(tmp_path: Path, tiny_model_dir: Path, base_model_dir: Path, tiny_corpus: Path) -> None:
    # the real model as baseline: the random tiny model must come out worse than it
    config = EvalConfig(
        stsb=(str(DATA / "sts-sample.csv"),),
        nli=(str(DATA / "nli-sample.jsonl"), str(DATA / "senteval"), str(tiny_corpus / "nested" / "qa-triplets")),
        corpus=str(tiny_corpus),
        heatmap_pairs=3,
        min_rows=1,
        show_progress=False,
    )
    out = tmp_path / "report"
    report = evaluate_model(tiny_model_dir, base_model_dir, config, out)

    names = [row["name"] for row in report["metrics"]]
    assert names == [
        "stsb/sts-sample/spearman_cosine",
        "nli/nli-sample/triplet_accuracy",
        "nli/senteval.test/triplet_accuracy",
        "nli/qa-triplets/triplet_accuracy",
        *[f"heldout/retrieval/{m}" for m in ("mrr@10", "ndcg@10", "recall@1", "recall@10")],
        "heldout/triplet_accuracy",
        *[f"retrieval/nested/qa-triplets/{m}" for m in ("mrr@10", "ndcg@10", "recall@1", "recall@10")],
        *[f"retrieval/qa-pairs/{m}" for m in ("mrr@10", "ndcg@10", "recall@1", "recall@10")],
    ]
    assert report["left_out"] == []
    assert report["summary"]["key_metrics"] == ["stsb/sts-sample/spearman_cosine", "heldout/retrieval/ndcg@10"]
    for row in report["metrics"]:
        assert row["delta"] == pytest.approx(row["model"] - row["baseline"], abs=2e-6)
    by_name = {row["name"]: row for row in report["metrics"]}
    assert by_name["retrieval/qa-pairs/recall@1"]["baseline"] == 1.0  # the real model finds every pair
    assert by_name["retrieval/qa-pairs/recall@1"]["delta"] < 0
    assert report["summary"]["verdict"] == "worse"
    assert "retrieval/qa-pairs/mrr@10" in report["summary"]["regressed"]
    assert report["baseline"]["source"] == "--baseline"
    heldout = report["benchmarks"]["heldout"]
    assert heldout["datasets"] == [
        {"name": "nested/qa-triplets", "heldout_rows": 4, "rows_used": 4},
        {"name": "qa-pairs", "heldout_rows": 4, "rows_used": 4},
    ]
    # both datasets hold the same held-out pairs: 4 queries over their 4 positives and the
    # training rows' 2 positives (their negatives are one of those and a held-out positive)
    assert (heldout["queries"], heldout["documents"], heldout["distractors"]) == (4, 6, 2)
    assert {row["name"]: row["rows"] for row in report["metrics"]}["heldout/triplet_accuracy"] == 8
    assert report["heatmap"]["anchors"] == [a for a, _ in PAIRS[2:5]]
    assert np.array(report["heatmap"]["model"]).shape == (3, 3)

    # files: JSON equals the returned report, markdown equals report_markdown, real PNGs
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == report
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown == report_markdown(report)
    assert "| retrieval/qa-pairs/mrr@10 |" in markdown
    for png in ("metrics.png", "heatmap.png"):
        assert (out / png).read_bytes().startswith(PNG_SIGNATURE)
    assert "seconds" in json.loads((out / "timings.json").read_text(encoding="utf-8"))
    assert "seconds" not in (out / "report.json").read_text(encoding="utf-8")



def test_baseline_from_train_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    trained = tmp_path / "trained"
    trained.mkdir()
    for item in tiny_model_dir.iterdir():
        (trained / item.name).symlink_to(item, target_is_directory=item.is_dir())
    atomic_write_json(trained / "train_config.json", {"base_model": str(tiny_model_dir)})
    config = EvalConfig(stsb=(str(DATA / "sts-sample.csv"),), nli=(str(DATA / "nli-sample.jsonl"),), min_rows=1, show_progress=False)
    report = evaluate_model(trained, None, config, tmp_path / "report")
    assert report["baseline"]["source"] == "train_config.json base_model"
    assert report["baseline"]["path"] == str(tiny_model_dir)
    assert report["baseline"]["same_as_model"] is False  # a different folder with the same weights
    assert [row["delta"] for row in report["metrics"]] == [0.0, 0.0]
    assert report["summary"]["verdict"] == "same"
    # without a corpus the heatmap shows NLI pairs, one per premise
    assert report["heatmap"]["anchors"] == ["A man plays a guitar on stage.", "Two dogs run through a field."]
    assert report["heatmap"]["positives"] == ["A man is playing music.", "Animals are outside."]

    # deterministic: a second run gives the same report bytes and plots
    again = tmp_path / "again"
    evaluate_model(trained, None, config, again)
    for name in ("report.json", "report.md", "metrics.png", "heatmap.png"):
        assert (again / name).read_bytes() == (tmp_path / "report" / name).read_bytes(), name


def test_cli_evaluate(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    out = tmp_path / "report"
    args = parser.parse_args(
        ["evaluate", str(tiny_model_dir), "--baseline", str(tiny_model_dir), "--stsb", str(DATA / "sts-sample.csv"),
         "--nli", str(DATA / "nli-sample.jsonl"), "--out", str(out), "--no-progress", "--min-rows", "4"]
    )
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "stsb/sts-sample/spearman_cosine" in printed and "verdict: same" in printed
    # the 3 NLI triplets are fewer than 4 rows: left out, and said so
    assert "nli/nli-sample/triplet_accuracy" not in printed and "left out: 1 figure resting on fewer than 4 rows" in printed
    assert "figures that matter: STSb sts-sample Spearman" in printed
    assert (out / "report.json").exists()

    empty = parser.parse_args(["evaluate", str(tiny_model_dir), "--out", str(out)])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        args.run(empty)


def test_import_stays_light() -> None:
    code = (
        "import sys; import pipeline.evaluate, pipeline.evaluate.report; "
        "heavy = [m for m in ('torch', 'faiss', 'sentence_transformers', 'matplotlib', 'scipy', 'prefect') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- agreement with sentence-transformers ---------------------------------------------------
@pytest.mark.slow
def test_stsb_spearman_agrees_with_sentence_transformers(shared_data: Path, base_model) -> None:

    from scipy.stats import spearmanr

    from pipeline.evaluate.metrics import encode_texts, stsb_spearman

    pairs = read_stsb(shared_data / "stsb" / "sts-dev.csv")
    ours = stsb_spearman(base_model, pairs.sentences1, pairs.sentences2, pairs.scores)
    # by hand: cosine of the two sentences' unit vectors, ranked against the gold scores
    cosines = np.sum(encode_texts(base_model, pairs.sentences1) * encode_texts(base_model, pairs.sentences2), axis=1)
    assert round(ours, 3) == round(float(spearmanr(cosines, pairs.scores).statistic), 3)
    assert ours == pytest.approx(0.867, abs=0.001)  # the published all-MiniLM-L6-v2 figure on STSb dev
