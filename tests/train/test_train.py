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


@pytest.mark.slow
def test_resume_continues_at_the_right_step_with_the_same_data(
    corpus: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    config = tiny_train_config(tiny_model_dir, max_steps=6, save_steps=2)
    straight = train_model(*corpus, tmp_path / "straight", config)

    killed = tmp_path / "killed"
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

    # checkpoints of a different run are refused rather than silently mixed
    with pytest.raises(ValueError, match="different run"):
        train_model(*corpus, killed, tiny_train_config(tiny_model_dir, max_steps=6, save_steps=2, seed=2))
