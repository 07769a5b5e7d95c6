"""Tests for pipeline.sampling (data_config.json) and pipeline.batch_sampler (weighted batches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.corpus.files import atomic_write_json, config_hash
from pipeline.corpus.folders import discover_datasets
from pipeline.corpus.schema import arrow_schema
from pipeline.corpus.shards import ShardWriter
from pipeline.sampling.batch_sampler import WeightedBatchSampler, text_hashes
from pipeline.sampling.data_config import load_data_config, meta_path, write_data_config
from pipeline.sampling.policies import WeightPolicy, compute_weights
from tests.helpers import TEST_DATA

FIXTURES = TEST_DATA / "sampling"
ONE_B_CONFIGS = ("all_datasets_v1.json", "all_datasets_v4.json", "multi-qa_v1.json", "reddit.json", "stackoverflow.json")


def write_dataset(
    corpus: Path,
    name: str,
    pairs: list[tuple[str, ...]],
    heldout: list[tuple[str, ...]] = (),
    rows_per_shard: int = 1000,
) -> Path:
    """A dataset folder as ingest writes it: train shards, heldout shards, manifest last."""
    with_negative = len(pairs[0]) == 3 if pairs else False
    schema = arrow_schema(with_negative)
    folder = corpus / name
    shards = []
    for prefix, rows in (("", pairs), ("heldout", heldout)):
        with ShardWriter(folder, schema, rows_per_shard=rows_per_shard, prefix=prefix) as writer:
            if rows:
                columns = list(zip(*rows))
                data = {"anchor": columns[0], "positive": columns[1]}
                if with_negative:
                    data["negative"] = columns[2]
                data["id"] = [f"{prefix}{i}" for i in range(len(rows))]
                data["source_file"] = ["fixture"] * len(rows)
                data["source_line"] = list(range(1, len(rows) + 1))
                writer.write(pa.table(data))
        shards += [s.as_dict() for s in writer.shards]
    config = {"fixture": name}
    atomic_write_json(
        folder / "manifest.json",
        {
            "dataset": name,
            "source": "fixture",
            "stage": "ingest",
            "unit": "pair",
            "rows_read": len(pairs) + len(heldout),
            "rows_kept": len(pairs) + len(heldout),
            "rows_train": len(pairs),
            "rows_heldout": len(heldout),
            "dropped": {},
            "columns": schema.names,
            "shards": shards,
            "inputs": [],
            "failures": [],
            "quarantine": {"path": "quarantine.jsonl", "rows": 0},
            "config": config,
            "config_hash": config_hash(config),
            "versions": {},
        },
    )
    return folder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write_dataset(root, "nli-pairs", [(f"a{i}", f"p{i}") for i in range(400)], heldout=[("h", "h")])
    write_dataset(root, "reddit/2015", [(f"a{i}", f"p{i}") for i in range(100)])
    write_dataset(root, "s2orc-triplets", [(f"a{i}", f"p{i}", f"n{i}") for i in range(25)])
    write_dataset(root, "empty", [])
    (root / "incomplete").mkdir()
    return root


# --- weight policies and data_config.json ------------------------------------------


def test_write_data_config_proportional(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "data_config.json"
    entries = write_data_config(corpus, out, WeightPolicy(kind="proportional", scale=16))
    assert entries == [
        {"name": "nli-pairs", "lines": 400, "weight": 16},
        {"name": "reddit/2015", "lines": 100, "weight": 4},
        {"name": "s2orc-triplets", "lines": 25, "weight": 1},
    ]
    assert json.loads(out.read_text()) == entries
    assert list(json.loads(out.read_text())[0]) == ["name", "lines", "weight"]
    meta = json.loads(meta_path(out).read_text())
    assert meta["dropped"] == {"no_train_rows": 1}
    assert meta["datasets_found"] == 4 and meta["datasets_written"] == 3
    assert meta["policy"]["kind"] == "proportional" and meta["policy_hash"] == config_hash(meta["policy"])
    # deterministic bytes and a round trip through the validator, against the corpus
    first = out.read_bytes(), meta_path(out).read_bytes()
    write_data_config(corpus, out, WeightPolicy(kind="proportional", scale=16))
    assert (out.read_bytes(), meta_path(out).read_bytes()) == first
    assert [e.as_dict() for e in load_data_config(out, corpus_dir=corpus)] == entries


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (WeightPolicy(kind="uniform", scale=5), {"a": 5, "b": 5, "c": 5}),
        (WeightPolicy(kind="temperature", alpha=0.5, scale=100), {"a": 100, "b": 10, "c": 1}),
        (WeightPolicy(kind="proportional", scale=10000, size_cap=100), {"a": 10000, "b": 10000, "c": 100}),
        (WeightPolicy(kind="proportional", scale=10000, max_weight=500, min_weight=2), {"a": 500, "b": 100, "c": 2}),
        (WeightPolicy(kind="explicit", weights={"a": 3, "b": 1}, default_weight=7), {"a": 3, "b": 1, "c": 7}),
    ],
)
def test_compute_weights(policy: WeightPolicy, expected: dict[str, int]) -> None:
    weights, _ = compute_weights({"a": 10000, "b": 100, "c": 1}, policy)
    assert weights == expected


def test_explicit_policy_errors() -> None:
    with pytest.raises(ValueError, match="no weight for: c"):
        compute_weights({"a": 1, "c": 1}, WeightPolicy(kind="explicit", weights={"a": 1}))
    with pytest.raises(ValueError, match="not in the corpus: zz"):
        compute_weights({"a": 1}, WeightPolicy(kind="explicit", weights={"a": 1, "zz": 2}))
    with pytest.raises(ValueError, match="positive integer"):
        WeightPolicy(kind="explicit", weights={"a": 0})
    with pytest.raises(ValueError, match="alpha"):
        WeightPolicy(kind="temperature", alpha=0)


def test_exclude_patterns(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "dc.json"
    entries = write_data_config(corpus, out, WeightPolicy(kind="uniform", exclude=("reddit/*",)))
    assert [e["name"] for e in entries] == ["nli-pairs", "s2orc-triplets"]
    assert json.loads(meta_path(out).read_text())["dropped"] == {"excluded": 1, "no_train_rows": 1}


def test_discover_skips_incomplete_and_heldout(corpus: Path) -> None:
    assert list(discover_datasets(corpus)) == ["empty", "nli-pairs", "reddit/2015", "s2orc-triplets"]


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="no dataset with training rows"):
        write_data_config(tmp_path / "c", tmp_path / "dc.json", WeightPolicy())
    with pytest.raises(FileNotFoundError):
        write_data_config(tmp_path / "nope", tmp_path / "dc.json", WeightPolicy())


# --- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("missing_dataset.json", "missing dataset"),
        ("wrong_lines.json", "lines 399 does not match rows_train 400"),
        ("zero_weight.json", "weight must be a positive integer, got 0"),
        ("float_weight.json", "weight must be a positive integer, got 1.5"),
        ("string_weight.json", "weight must be a positive integer, got '3'"),
        ("duplicate_name.json", "duplicate name"),
        ("escaping_name.json", "escapes"),
        ("absolute_name.json", "absolute"),
        ("not_a_list.json", "non-empty JSON list"),
        ("empty_list.json", "non-empty JSON list"),
        ("bad_json.json", "not valid JSON"),
        ("negative_lines.json", "lines must be a non-negative integer"),
    ],
)
def test_validation_errors(corpus: Path, fixture: str, message: str) -> None:
    path = FIXTURES / fixture
    with pytest.raises(ValueError, match=message) as caught:
        load_data_config(path, corpus_dir=corpus)
    assert str(path) in str(caught.value)


def test_validation_reports_every_problem(corpus: Path) -> None:
    with pytest.raises(ValueError, match=r"3 problem\(s\)") as caught:
        load_data_config(FIXTURES / "several_problems.json", corpus_dir=corpus)
    assert "entry 0" in str(caught.value) and "entry 2" in str(caught.value) and "entry 3" in str(caught.value)


def test_symlink_escaping_the_root_is_refused(corpus: Path, tmp_path: Path) -> None:
    outside = write_dataset(tmp_path / "elsewhere", "secret", [("a", "p")])
    (corpus / "link").symlink_to(outside)
    config = tmp_path / "dc.json"
    config.write_text(json.dumps([{"name": "link", "lines": 1, "weight": 1}]))
    with pytest.raises(ValueError, match="outside the corpus root"):
        load_data_config(config, corpus_dir=corpus)
    assert "link" not in discover_datasets(corpus)  # discovery does not follow symlinks


def test_missing_lines_taken_from_manifest(corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "dc.json"
    config.write_text(json.dumps([{"name": "reddit/2015", "weight": 100, "note": "kept"}]))
    (entry,) = load_data_config(config, corpus_dir=corpus)
    assert (entry.lines, entry.weight, dict(entry.extra)) == (100, 100, {"note": "kept"})
    assert load_data_config(config)[0].lines is None


@pytest.mark.parametrize("name", ONE_B_CONFIGS)
def test_reads_the_1b_project_configs(shared_data: Path, name: str) -> None:
    path = shared_data / "1b_project" / "train_data_configs" / name
    raw = json.loads(path.read_text())
    entries = load_data_config(path)
    assert [e.as_dict() for e in entries] == raw
    assert all(e.weight >= 1 for e in entries)


def test_reads_the_packaged_model_config(base_model_dir: Path) -> None:
    entries = load_data_config(base_model_dir / "data_config.json")
    assert len(entries) > 100
    assert any(e.name.startswith("reddit") for e in entries)
    assert sum(e.lines for e in entries if e.lines) > 1_000_000_000


# --- the weighted batch sampler ------------------------------------------------------


def _sampler(weights: list[int], sizes: list[int], batch_size: int = 4, seed: int = 0, num_batches=None):
    hashes = [
        text_hashes([[f"d{d}a{i}" for i in range(n)], [f"d{d}p{i}" for i in range(n)]]) for d, n in enumerate(sizes)
    ]
    return WeightedBatchSampler(hashes, weights, batch_size=batch_size, seed=seed, num_batches=num_batches)


def test_dataset_frequencies_match_weights() -> None:
    """Chi-square goodness of fit: 4000 batches, 3 datasets of very different sizes."""
    weights = [1, 3, 6]
    sampler = _sampler(weights, sizes=[500, 20, 90], num_batches=4000)
    observed = np.bincount([d for d, _ in sampler.iter_with_datasets()], minlength=3)
    expected = 4000 * np.array(weights) / sum(weights)
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    # critical value of chi-square with 2 degrees of freedom at p = 0.001
    assert chi_square < 13.82, (observed, expected)
    # sizes do not matter, weights do: the smallest dataset is not the rarest
    assert observed[1] > observed[0]


def test_size_proportional_sampling_would_fail_the_same_test() -> None:
    """The chi-square test has teeth: size-proportional draws are far from these weights."""
    weights, sizes = np.array([1, 3, 6]), np.array([500, 20, 90])
    observed = np.random.default_rng(0).multinomial(4000, sizes / sizes.sum())
    expected = 4000 * weights / weights.sum()
    assert float(((observed - expected) ** 2 / expected).sum()) > 13.82


def test_no_duplicate_text_within_a_batch() -> None:
    # 60 rows but only 7 distinct positives: batches must never repeat one
    anchors = [f"q{i}" for i in range(60)]
    positives = [f"answer {i % 7}" for i in range(60)]
    hashes = [text_hashes([anchors, positives]), text_hashes([["x", "y", "z", "x"], ["1", "2", "3", "4"]])]
    sampler = WeightedBatchSampler(hashes, [1, 1], batch_size=5, seed=3, num_batches=200)
    texts = [list(zip(anchors, positives)), list(zip(["x", "y", "z", "x"], ["1", "2", "3", "4"]))]
    full = 0
    for dataset, batch in sampler.iter_with_datasets():
        offset = int(sampler.offsets[dataset])
        values = [t for i in batch for t in texts[dataset][i - offset]]
        assert len(values) == len(set(values)), values
        assert 1 <= len(batch) <= 5
        full += len(batch) == 5
    assert full > 50  # dataset 0 fills its batches despite the repeats


def test_every_row_is_used_before_any_repeats() -> None:
    sampler = _sampler([1], sizes=[40], batch_size=8, num_batches=5)
    rows = [i for batch in sampler for i in batch]
    assert sorted(rows) == list(range(40))


def test_same_seed_same_batches_new_epoch_new_order() -> None:
    first = list(_sampler([2, 1], [50, 30], seed=7))
    assert first == list(_sampler([2, 1], [50, 30], seed=7))
    assert first != list(_sampler([2, 1], [50, 30], seed=8))
    sampler = _sampler([2, 1], [50, 30], seed=7)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_global_indices_and_length() -> None:
    sampler = _sampler([1, 1], [10, 6], batch_size=4)
    assert len(sampler) == 2 + 1
    for dataset, batch in sampler.iter_with_datasets():
        low = int(sampler.offsets[dataset])
        assert all(low <= i < low + (10, 6)[dataset] for i in batch)


def test_sampler_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one weight per dataset"):
        _sampler([1], [5, 5])
    with pytest.raises(ValueError, match="positive"):
        _sampler([1, 0], [5, 5])


def test_a_pair_dataset_with_a_mined_version_is_left_out(tmp_path: Path) -> None:
    from pipeline.corpus.files import atomic_write_json
    from pipeline.corpus.schema import arrow_schema
    from pipeline.corpus.shards import ShardWriter
    from pipeline.sampling.data_config import write_data_config
    from pipeline.sampling.policies import WeightPolicy

    for name, stage, extra in (
        ("nli-pairs", "ingest", {}),
        ("nli-pairs-mined", "mine", {"mined_from": {"dataset": "nli-pairs", "path": "nli-pairs"}}),
        ("qqp-duplicates", "ingest", {}),
    ):
        folder = tmp_path / name
        with ShardWriter(folder, arrow_schema(False)) as writer:
            writer.write(
                pa.table(
                    {"anchor": ["a b", "c d"], "positive": ["e f", "g h"], "id": ["1", "2"],
                     "source_file": ["f", "f"], "source_line": [1, 2]}
                )
            )
        shards = [s.as_dict() for s in writer.shards]
        atomic_write_json(
            folder / "manifest.json",
            {"dataset": name, "stage": stage, "rows_read": 2, "rows_kept": 2, "rows_train": 2, "rows_heldout": 0,
             "dropped": {}, "shards": shards, **extra},
        )
    entries = write_data_config(tmp_path, tmp_path / "data_config.json", WeightPolicy())
    assert [e["name"] for e in entries] == ["nli-pairs-mined", "qqp-duplicates"]
    kept_both = write_data_config(tmp_path, tmp_path / "all.json", WeightPolicy(prefer_mined=False))
    assert [e["name"] for e in kept_both] == ["nli-pairs", "nli-pairs-mined", "qqp-duplicates"]
