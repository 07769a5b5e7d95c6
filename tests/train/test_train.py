"""Tests for pipeline.train: the weighted-sampling training task on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.corpus.schema import text_columns
from pipeline.train.data import load_training_data
from pipeline.train.task import train_model
from tests.helpers import tiny_train_config


def test_text_columns_order() -> None:
    assert text_columns(["anchor", "positive", "id"]) == ["anchor", "positive"]
    assert text_columns(["anchor", "positive", "negative_2", "negative_10", "negative_1", "id"]) == [
        "anchor", "positive", "negative_1", "negative_2", "negative_10",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="anchor and positive"):
        text_columns(["query", "positive"])


def test_reads_train_shards_only(corpus: tuple[Path, Path]) -> None:
    data = load_training_data(*corpus)
    assert [e.name for e in data.entries] == ["animals/pairs", "animals/triplets"]
    assert [t.num_rows for t in data.tables] == [32, 16]
    assert data.columns == [["anchor", "positive"], ["anchor", "positive", "negative"]]
    texts = {s for t in data.tables for c in t.columns for s in c.to_pylist()}
    assert not any("HELDOUT" in s for s in texts)


def test_start_model_from_a_plain_hugging_face_folder(tiny_model_dir: Path) -> None:
    from pipeline.train.task import build_model

    model = build_model(tiny_train_config(tiny_model_dir.parent / "hf", max_seq_length=48))
    assert model.max_seq_length == 48
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]


@pytest.mark.slow
def test_train_loss_falls_and_output_folder(corpus: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "model"
    summary = train_model(*corpus, out, tiny_train_config(tiny_model_dir, max_steps=16))
    assert summary["steps"] == 16 and summary["examples"] == 16 * 8
    assert summary["loss_last"] < 0.5 * summary["loss_first"], summary
    for name in ("README.md", "data_config.json", "train_config.json", "modules.json", "model.safetensors"):
        assert (out / name).is_file(), name
    record = json.loads((out / "train_config.json").read_text())
    assert len(record["config_hash"]) == 64 and record["config"]["batch_size"] == 8
    assert record["result"]["steps"] == 16
    assert json.loads((out / "data_config.json").read_text()) == json.loads(corpus[1].read_text())
    model = SentenceTransformer(str(out), device="cpu")
    embeddings = model.encode(["the cat number 0", "a cat 0", "a dog 1"])
    assert embeddings.shape == (3, 32)
    assert float(embeddings[0] @ embeddings[1]) > float(embeddings[0] @ embeddings[2])
    # the same run again is recognised and skipped
    again = train_model(*corpus, out, tiny_train_config(tiny_model_dir, max_steps=16))
    assert again["skipped"] and again["config_hash"] == record["config_hash"]


def test_negatives_are_used(corpus: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    """With a negative column, MNRL ranks 2 * batch candidates: the untrained loss is near ln 16, not ln 8."""
    config = tmp_path / "triplets.json"
    config.write_text(json.dumps([{"name": "animals/triplets", "lines": 16, "weight": 1}]))
    summary = train_model(corpus[0], config, tmp_path / "m", tiny_train_config(tiny_model_dir, max_steps=1, learning_rate=1e-9))
    assert summary["loss_first"] > math.log(8) + 0.3, summary


def _kill_at(step: int):
    """A callback that raises at ``step``, as a killed process would stop there."""
    from transformers import TrainerCallback

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise KeyboardInterrupt(f"killed at step {state.global_step}")

    return KillAt()


def _batch_hashes(log_dir: Path) -> dict[int, str]:
    """Each batch index of a batch log -> the SHA-256 of its dataset and row numbers (the last line wins)."""
    import hashlib

    hashes = {}
    for line in (log_dir / "rank-0.jsonl").read_text().splitlines():
        record = json.loads(line)
        hashes[record["batch"]] = hashlib.sha256(json.dumps([record["dataset"], record["rows"]]).encode()).hexdigest()
    return hashes


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["stream", "memory"])
def test_resume_continues_at_the_right_step_with_the_same_data(
    loader: str, corpus: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    logs = {"batch_log": str(tmp_path / "straight-log")} if loader == "stream" else {}
    config = tiny_train_config(tiny_model_dir, max_steps=6, save_steps=2, loader=loader, **logs)
    straight = train_model(*corpus, tmp_path / "straight", config)

    killed = tmp_path / "killed"
    if loader == "stream":
        config = tiny_train_config(tiny_model_dir, max_steps=6, save_steps=2, loader=loader, batch_log=str(tmp_path / "log"))
    with pytest.raises(KeyboardInterrupt):
        train_model(*corpus, killed, config, callbacks=[_kill_at(5)])
    assert sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (killed / "train_config.json").exists()

    resumed = train_model(*corpus, killed, config)
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert resumed["steps"] == 6
    assert resumed["config_hash"] == straight["config_hash"]
    # same batches in the same order: the weights end up the same as the uninterrupted run's
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    if loader == "stream":
        # every batch, by the hash of its rows: the killed run's, then the resumed run's from checkpoint 4 on
        assert _batch_hashes(tmp_path / "log") == _batch_hashes(tmp_path / "straight-log")
        assert len(_batch_hashes(tmp_path / "log")) == 6

    # checkpoints of a different run are refused rather than silently mixed
    with pytest.raises(ValueError, match="different run"):
        train_model(*corpus, killed, tiny_train_config(tiny_model_dir, max_steps=6, save_steps=2, seed=2, loader=loader))


@pytest.mark.slow
def test_a_checkpoint_cut_short_is_passed_over(corpus: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    """A kill during a save leaves a checkpoint folder without the loader's position: resume from the one before."""
    from pipeline.train.loader import LOADER_STATE_NAME

    config = tiny_train_config(tiny_model_dir, max_steps=6, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train_model(*corpus, tmp_path / "m", config, callbacks=[_kill_at(5)])
    (tmp_path / "m" / "checkpoints" / "checkpoint-4" / LOADER_STATE_NAME).unlink()
    resumed = train_model(*corpus, tmp_path / "m", config)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 6


@pytest.mark.slow
def test_all_minilm_trains_on_the_streamed_real_samples(real_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    """The packaged all-MiniLM-L6-v2 on the real samples: MNRL, then GradCache (cached MNRL) on a batch 4x its mini-batch."""
    from sentence_transformers import SentenceTransformer

    from pipeline.train.config import TrainConfig

    common = dict(max_steps=2, warmup_steps=0, max_seq_length=48, device="cpu", seed=3, logging_steps=1, save_steps=100)
    plain = train_model(*real_corpus, tmp_path / "mnrl", TrainConfig(batch_size=32, learning_rate=1e-9, **common))
    cached = train_model(
        *real_corpus, tmp_path / "cached",
        TrainConfig(batch_size=32, loss="cached_mnrl", mini_batch_size=8, learning_rate=1e-9, **common),
    )  # fmt: skip
    assert plain["steps"] == cached["steps"] == 2 and plain["examples"] == 64
    # the same first batch scored against all 32 candidates either way (mini-batches of 8 would score ~ln 8 lower)
    assert abs(plain["loss_first"] - cached["loss_first"]) < 0.1, (plain, cached)
    record = json.loads((tmp_path / "cached" / "train_config.json").read_text())
    assert record["resolved"]["loader"] == "stream" and record["result"]["verify_shards"]["verified"] > 0
    model = SentenceTransformer(str(tmp_path / "cached"), device="cpu")
    assert model.encode(["A man is playing a guitar."]).shape == (1, 384)


@pytest.mark.slow
def test_the_1b_batch_of_1024_runs_with_gradcache(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``--batch-size 1024 --loss cached_mnrl``: one batch of 1,024 distinct pairs, embedded 64 rows at a time."""
    from tests.helpers import write_dataset

    rows = [(f"question {i} about item {i % 97}", f"answer {i} for item {i % 89}") for i in range(1100)]
    write_dataset(tmp_path / "corpus" / "qa", rows, rows_per_shard=400)
    config = tmp_path / "dc.json"
    config.write_text(json.dumps([{"name": "qa", "lines": 1100, "weight": 1}]))
    log = tmp_path / "log"
    summary = train_model(
        tmp_path / "corpus", config, tmp_path / "m",
        tiny_train_config(tiny_model_dir, batch_size=1024, loss="cached_mnrl", mini_batch_size=64, max_steps=1,
                          max_seq_length=16, learning_rate=1e-9, batch_log=str(log)),
    )  # fmt: skip
    assert summary["steps"] == 1 and summary["examples"] == 1024
    (batch,) = [json.loads(line) for line in (log / "rank-0.jsonl").read_text().splitlines()]
    assert len(set(batch["rows"])) == 1024
    assert summary["loss_first"] > math.log(1024) - 1.0  # an untrained model ranks among all 1,024, not 64
