"""Tests for pipeline.train.launch: in-process or torchrun training, and a real 2-process CPU run."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline.train import launch
from pipeline.train.config import TrainConfig
from pipeline.train.launch import (
    TrainingLaunchError,
    launch_training,
    resolve_process_count,
    run_streaming,
    torchrun_command,
    write_training_job,
)
from tests.helpers import tiny_train_config


def test_torchrun_runs_the_worker_on_a_job_file(tmp_path: Path) -> None:
    config = TrainConfig(model="/models/start", batch_size=64, max_steps=100, pooling="cls", normalize=False)
    job = write_training_job(tmp_path / "job.json", "/data/corpus", "/data/corpus/data_config.json", "/data/model", config, "/tmp/s.json")
    assert torchrun_command(job, 8) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "8",
        "-m", "pipeline.train.worker", str(job),
    ]  # fmt: skip
    recorded = json.loads(job.read_text())
    assert recorded == {
        "corpus_dir": "/data/corpus", "data_config": "/data/corpus/data_config.json", "out_dir": "/data/model",
        "config": asdict(config), "summary": "/tmp/s.json",
    }  # fmt: skip
    with pytest.raises(ValueError, match="at least 1"):
        torchrun_command(job, 0)


def test_the_worker_rebuilds_the_launched_config_exactly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every TrainConfig field, with its type, reaches the torchrun workers through the job file."""
    from pipeline.train import worker

    config = TrainConfig(
        model="/models/start", batch_size=64, epochs=2.5, max_steps=None, steps_per_epoch=7, learning_rate=3e-5,
        pooling="cls", normalize=False, precision="bf16", device="cpu", resume=False, logging_steps=3,
    )  # fmt: skip
    job = write_training_job(tmp_path / "job.json", "corpus", "dc.json", "model", config, tmp_path / "summary.json")
    received = []

    def fake_train_model(corpus_dir, data_config_path, out_dir, train_config):
        received.append(train_config)
        return {"steps": 0, "examples": 0, "loss_first": None, "loss_last": None, "seconds": 0.0,
                "resumed_from": None, "skipped": False, "out_dir": str(out_dir), "config_hash": "0" * 64}  # fmt: skip

    monkeypatch.setattr(worker, "train_model", fake_train_model)
    assert worker.run_job(job) == 0
    assert received == [config]
    assert json.loads((tmp_path / "summary.json").read_text())["out_dir"] == "model"


def test_a_worker_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.train import worker

    job = write_training_job(tmp_path / "job.json", tmp_path / "no-corpus", tmp_path / "dc.json", tmp_path / "m", TrainConfig())
    assert worker.run_job(job) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pairforge: error: data config not found")


@pytest.mark.parametrize("gpus", [0, 1])
def test_auto_with_at_most_one_gpu_trains_in_process(gpus: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "gpu_count", lambda: gpus)
    calls = []
    monkeypatch.setattr(launch, "train_model", lambda *args: calls.append(args) or {"steps": 1})

    def no_torchrun(*args, **kwargs):
        raise AssertionError("torchrun must not start with at most one GPU")

    monkeypatch.setattr(launch, "train_with_torchrun", no_torchrun)
    config = TrainConfig(max_steps=1)
    assert resolve_process_count("auto", config) == 1
    assert launch_training("c", "d", "m", config) == {"steps": 1, "processes": 1}
    assert calls == [("c", "d", "m", config)]


def test_process_count_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "gpu_count", lambda: 4)
    assert resolve_process_count("auto", TrainConfig()) == 4
    assert resolve_process_count("auto", TrainConfig(device="cpu")) == 1  # GPUs do not count for a CPU run
    assert resolve_process_count(2, TrainConfig()) == 2
    assert resolve_process_count(1, TrainConfig()) == 1
    assert resolve_process_count(8, TrainConfig(device="cpu")) == 8
    with pytest.raises(ValueError, match="only 4 GPU"):
        resolve_process_count(8, TrainConfig())
    for bad in (0, -1, "8", 2.0, True, None):
        with pytest.raises(ValueError, match="'auto' or a positive integer"):
            resolve_process_count(bad, TrainConfig())  # type: ignore[arg-type]


def test_auto_with_several_gpus_starts_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "gpu_count", lambda: 8)
    launched = []
    monkeypatch.setattr(launch, "train_with_torchrun", lambda *args: launched.append(args) or {"steps": 5})
    monkeypatch.setattr(launch, "train_model", lambda *args: pytest.fail("must not train in-process with 8 GPUs"))
    config = TrainConfig()
    assert launch_training("c", "d", "m", config) == {"steps": 5, "processes": 8}
    assert launched[0][3:5] == (config, 8)


def test_run_streaming_passes_lines_and_reports_a_failure() -> None:
    script = (
        "import sys\nprint('step 1')\nprint('50%\\r100%')\nprint('torch.OutOfMemoryError: CUDA out of memory', file=sys.stderr)"
        "\nprint('a.b.ChildFailedError: ')\nfor i in range(60): print(f'line {i}')\nsys.exit(3)"
    )
    lines: list[str] = []
    with pytest.raises(TrainingLaunchError) as failure:
        run_streaming([sys.executable, "-u", "-c", script], lines.append)
    assert lines[:3] == ["step 1", "50%", "100%"] and lines[-1] == "line 59"
    error = failure.value
    assert error.returncode == 3 and len(error.tail) == launch.ERROR_TAIL_LINES
    assert error.errors == ["torch.OutOfMemoryError: CUDA out of memory"]  # stderr too; torchrun's own error left out
    assert "exit code 3" in str(error) and str(error).endswith("line 59") and "line 19" not in str(error)
    assert shlex.join([sys.executable, "-u", "-c", script]) in str(error)


def test_only_the_main_process_writes_model_files(tmp_path: Path) -> None:
    """sentence-transformers' _save has no main-process check, and transformers 5 calls it on every rank."""
    from types import SimpleNamespace

    from pipeline.train.task import _trainer_class

    trainer = object.__new__(_trainer_class())
    trainer.args = SimpleNamespace(should_save=False)  # rank 1 of a torchrun launch
    trainer._save(str(tmp_path / "rank1"))
    assert not (tmp_path / "rank1").exists()
    trainer.args = SimpleNamespace(should_save=True)
    with pytest.raises(AttributeError):  # reaches sentence-transformers' _save, which needs a model
        trainer._save(str(tmp_path / "rank0"))
    assert (tmp_path / "rank0").is_dir()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_the_tiny_model(
    corpus: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A real torchrun launch: 2 CPU processes (gloo), 4 steps, each process training on half of each global batch.

    The two processes' rows at each step are, together, the rows one process with the
    same global batch (16) trains on, all from the dataset that process draws.
    """
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "model"
    lines: list[str] = []
    config = tiny_train_config(tiny_model_dir, max_steps=4, batch_log=str(tmp_path / "log-2"))
    summary = launch_training(*corpus, out, config, nproc=2, log=lines.append)

    assert summary["processes"] == 2 and summary["steps"] == 4 and not summary["skipped"]
    assert summary["examples"] == 4 * 8 * 2  # steps x per-device batch x processes
    assert summary["out_dir"] == str(out) and summary["loss_first"] is not None
    record = json.loads((out / "train_config.json").read_text())
    assert record["resolved"]["world_size"] == 2 and record["result"]["steps"] == 4
    assert record["config_hash"] == summary["config_hash"]
    assert SentenceTransformer(str(out), device="cpu").encode(["a cat"]).shape == (1, 32)
    # the output was streamed; rank 0 alone reports the run
    assert lines[0].startswith("training with 2 processes: ")
    assert sum(line.startswith("trained 4 steps") for line in lines) == 1
    assert record["resolved"]["gather_across_devices"] and record["resolved"]["global_batch_size"] == 16

    one = tiny_train_config(tiny_model_dir, max_steps=4, batch_size=16, batch_log=str(tmp_path / "log-1"))
    launch_training(*corpus, tmp_path / "one", one, nproc=1)
    rank0, rank1, alone = (_batches(tmp_path / log) for log in ("log-2/rank-0.jsonl", "log-2/rank-1.jsonl", "log-1/rank-0.jsonl"))
    assert len(alone) == 4 and [len(b["rows"]) for b in rank0 + rank1] == [8] * 8
    for a, b, whole in zip(rank0, rank1, alone):
        assert a["dataset"] == b["dataset"] == whole["dataset"]
        assert a["rows"] + b["rows"] == whole["rows"] and len(set(whole["rows"])) == 16


def _batches(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_torchrun_failure_names_the_exit_code_and_the_cause(tmp_path: Path) -> None:
    """A worker that fails (here: no such corpus) fails the launch with its own error message."""
    config = TrainConfig(device="cpu", max_steps=1)
    with pytest.raises(TrainingLaunchError, match="exit code") as failure:
        launch_training(tmp_path / "missing", tmp_path / "dc.json", tmp_path / "m", config, nproc=2, log=lambda _: None)
    error = failure.value
    assert error.returncode != 0
    # both ranks print the same one-line error; torchrun's own traceback follows it and is not a worker error
    assert len(error.errors) == 1 and error.errors[0].startswith("pairforge: error: data config not found"), error.errors
    assert "dc.json" in error.errors[0] and "errors from the workers:\n  pairforge: error:" in str(error)
