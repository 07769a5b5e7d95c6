"""Where models run and where they come from: the one GPU detector, the one offline switch.

In: the process's environment (``CUDA_VISIBLE_DEVICES``, ``/dev/nvidia*``, CPU
affinity, ``OMP_NUM_THREADS``). Out: how many GPUs this process may use
(:func:`gpu_count`, torch imported only where a GPU device node exists), the device a
model runs on (:func:`pick_device`), the cores it may use (:func:`cpu_threads`), and
:func:`use_local_models_only`, which every model-loading path calls so that nothing is
downloaded at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def gpu_count(dev_dir: Path = Path("/dev")) -> int:
    """The CUDA GPUs this process may use (``CUDA_VISIBLE_DEVICES`` respected).

    0 when ``CUDA_VISIBLE_DEVICES`` hides every GPU or no NVIDIA device node exists
    under ``dev_dir`` (decided without importing torch, so a CPU machine never pays
    for it), and 0 with a CPU-only build of torch; otherwise torch's count.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    if not any(dev_dir.glob("nvidia[0-9]*")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_visible() -> bool:
    """Whether this process may use a CUDA GPU."""
    return gpu_count() > 0


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return device
    return "cuda" if gpu_visible() else "cpu"


def cpu_threads() -> int:
    """Cores this process may use: its CPU affinity, capped by ``OMP_NUM_THREADS`` when set
    (a Dask worker is given its share of the machine that way)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores, int(limit))) if limit.isdigit() and int(limit) > 0 else max(1, cores)


def use_local_models_only() -> None:
    """Tell Hugging Face's libraries never to reach the network (unless the user said otherwise).

    Models are loaded from local folders only (the packaged all-MiniLM-L6-v2 or a
    folder the user names); with these set, a missing file is an error at once
    instead of a download attempt. Values the user set are kept.
    """
    for name in _OFFLINE_VARIABLES:
        os.environ.setdefault(name, "1")
