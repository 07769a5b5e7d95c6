"""Tests for pipeline.devices: the one GPU detector and the offline switch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.devices import cpu_threads, gpu_count, pick_device, use_local_models_only


def test_no_nvidia_device_node_means_no_gpu_and_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from pipeline.devices import gpu_count;"
        f" print(gpu_count(Path({str(tmp_path)!r})), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "False"]


def test_hidden_gpus_count_zero_even_with_device_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nvidia0").touch()
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpu_count(tmp_path) == 0
        assert pick_device() == "cpu"
    assert pick_device("cuda:1") == "cuda:1"


def test_device_nodes_without_a_cuda_torch_count_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    (tmp_path / "nvidia0").touch()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_count(tmp_path) == 0  # a CPU build of torch: no CUDA device, no error


def test_cpu_threads_follow_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads() == len(os.sched_getaffinity(0))


def test_offline_switch_keeps_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    use_local_models_only()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "0"
