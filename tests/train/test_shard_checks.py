"""Tests for pipeline.train.verify: a missing, truncated or changed shard fails training before a step uses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.train.data import load_training_data, training_datasets
from pipeline.train.task import train_model
from pipeline.train.verify import ShardError, ShardVerifier, check_shards_present
from tests.helpers import tiny_train_config, write_dataset


@pytest.fixture
def copied(corpus: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny training corpus, to damage."""
    shutil.copytree(corpus[0], tmp_path / "corpus")
    return tmp_path / "corpus", corpus[1]


def _rewrite_one_text(shard: Path) -> None:
    """The same rows but one text changed: still valid Parquet with the manifest's row count; only the hash differs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(shard)
    anchors = table.column("anchor").to_pylist()
    anchors[0] = anchors[0] + " (edited)"
    pq.write_table(table.set_column(0, "anchor", pa.array(anchors, pa.string())), shard, compression="zstd")


def _damage(shard: Path, how: str) -> None:
    if how == "missing":
        shard.unlink()
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        _rewrite_one_text(shard)



def _step_counter():
    from transformers import TrainerCallback

    class StepCounter(TrainerCallback):
        steps = 0

        def on_step_begin(self, args, state, control, **kwargs):
            StepCounter.steps += 1

    return StepCounter()


@pytest.mark.parametrize("loader", ["stream", "memory"])
@pytest.mark.parametrize(("how", "message"), [
    ("missing", "lists a shard that is missing"),
    ("truncated", "truncated or not Parquet"),
    ("changed", "SHA-256 .* but .*manifest.json says"),
])  # fmt: skip
def test_a_bad_shard_fails_before_the_first_step(
    copied: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path, how: str, message: str, loader: str
) -> None:
    shard = copied[0] / "animals" / "pairs" / "part-00001.parquet"
    _damage(shard, how)
    counter = _step_counter()
    config = tiny_train_config(tiny_model_dir, max_steps=2, loader=loader, verify_shards="upfront")
    with pytest.raises(ShardError, match=message) as failure:
        train_model(*copied, tmp_path / "m", config, callbacks=[counter])
    assert str(shard) in str(failure.value) and "\n" not in str(failure.value)
    assert counter.steps == 0


def test_a_changed_shard_checked_in_the_background_is_never_trained_on(
    copied: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``background``: the run stops at the first batch that would need the changed shard, none of its rows trained on."""
    shard = copied[0] / "animals" / "pairs" / "part-00002.parquet"  # rows 20-29
    _rewrite_one_text(shard)
    log = tmp_path / "log"
    config = tiny_train_config(tiny_model_dir, max_steps=30, batch_log=str(log))
    with pytest.raises(ShardError, match="part-00002.parquet: SHA-256"):
        train_model(*copied, tmp_path / "m", config)
    trained = [json.loads(line) for line in (log / "rank-0.jsonl").read_text().splitlines()]
    assert not any(20 <= r < 30 for b in trained if b["dataset"] == "animals/pairs" for r in b["rows"])
    # the check is what stops it: unchecked, the same run trains on the changed rows
    summary = train_model(*copied, tmp_path / "unchecked", tiny_train_config(tiny_model_dir, max_steps=2, verify_shards="off"))
    assert summary["steps"] == 2 and summary["verify_shards"]["verified"] == 0


def test_the_check_reports_its_cost(corpus: tuple[Path, Path]) -> None:
    shards = [s for d in training_datasets(*corpus) for s in d.shards]
    check_shards_present(shards)
    with ShardVerifier(shards, "upfront") as verifier:
        report = verifier.report()
    assert report["mode"] == "upfront" and report["shards"] == report["verified"] == len(shards) == 5
    assert report["bytes"] == sum(s.path.stat().st_size for s in shards)
    assert report["hash_seconds"] >= 0 and load_training_data(*corpus).verify["verified"] == 5
    with ShardVerifier(shards, "off") as verifier:
        assert verifier.report()["verified"] == 0


def test_a_footer_with_another_row_count_is_refused(tmp_path: Path) -> None:
    from pipeline.train.stream import DatasetReader

    folder = write_dataset(tmp_path / "c" / "d", [(f"a{i}", f"b{i}") for i in range(6)], rows_per_shard=3)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][1]["rows"] = 4
    manifest["rows_train"] = manifest["rows_kept"] = manifest["rows_read"] = 7
    (folder / "manifest.json").write_text(json.dumps(manifest))
    config = tmp_path / "dc.json"
    config.write_text(json.dumps([{"name": "d", "lines": 7, "weight": 1}]))
    (dataset,) = training_datasets(tmp_path / "c", config)
    reader = DatasetReader(0, dataset, seed=0)
    with pytest.raises(ShardError, match="part-00001.parquet: 3 rows but .* says 4"):
        for _ in range(7):
            reader.next_row()


def test_a_dataset_without_training_rows_is_an_error(real_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    config = tmp_path / "dc.json"
    config.write_text(json.dumps([{"name": "nli-pairs", "weight": 1}, {"name": "s2orc-citations", "weight": 1}]))
    with pytest.raises(ValueError, match="'s2orc-citations' has no training rows"):
        training_datasets(real_corpus[0], config)


def test_the_background_check_hashes_each_dataset_s_first_shard_first(real_corpus: tuple[Path, Path]) -> None:
    from pipeline.train.stream import DatasetReader, first_use_order

    datasets = training_datasets(*real_corpus)
    order = first_use_order(datasets, [d.entry.weight for d in datasets], seed=5)
    assert sorted(map(str, (s.path for s in order))) == sorted(str(s.path) for d in datasets for s in d.shards)
    opened_first = set()
    for index, dataset in enumerate(datasets):
        reader = DatasetReader(index, dataset, seed=5, window_rows=500)  # a window within one shard
        reader.next_row()
        opened_first.add(dataset.shards[reader._file[0]])
        reader.discard()
    assert set(order[: len(datasets)]) == opened_first
