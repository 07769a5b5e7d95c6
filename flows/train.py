"""The ``pairforge-train`` flow: a corpus and its data_config.json in, a trained model out.

In: a corpus folder, its data_config.json, a model folder, TrainConfig overrides
(a JSON dict, as deployment parameters carry them) and a process count. Out: the model
folder written by :func:`pipeline.train.train_model` (skipped when its
train_config.json matches), a table artifact of the datasets trained on, and the
training summary as the flow's return value.

With ``nproc="auto"`` (the default) the flow trains in its own process when it sees 0
or 1 GPU, and starts ``torchrun`` with one process per GPU when it sees more
(:func:`pipeline.launch.launch_training`): on the ``gpu`` deployment the pod's
``gpu_count`` job variable decides. Its own deployment (deploy/prefect.yaml) runs it on
the GPU pools; the parent flow calls it in-process when no deployment is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.config_options import build_config
from flows.locking import flow_lock

# A run on the full corpus takes hours; two days is a hung run, not a slow one.
# log_prints stays off: libraries print bytecode dumps and progress while training.
TRAIN_TIMEOUT_S = 48 * 3600


@flow(name="pairforge-train", timeout_seconds=TRAIN_TIMEOUT_S, log_prints=False)
def train(
    corpus_dir: str,
    data_config: str,
    model_dir: str,
    options: dict[str, Any] | None = None,
    nproc: int | Literal["auto"] = "auto",
    wait_for_lock: bool = False,
) -> dict[str, Any]:
    """Train a sentence-embedding model on the weighted datasets of ``data_config``.

    Args:
        corpus_dir: the corpus root.
        data_config: the data_config.json naming datasets of the corpus.
        model_dir: the model folder to write (resumes from its checkpoints).
        options: :class:`pipeline.train.TrainConfig` overrides, e.g. ``{"max_steps": 20}``.
        nproc: training processes: ``"auto"`` for one per visible GPU (in this process
            with 0 or 1 GPU, under torchrun with more), or a count (1: in this process;
            N > 1: torchrun with N processes, CPU processes when ``device`` is ``cpu``).
        wait_for_lock: wait for another writer of the model folder instead of failing at
            once (the folder is held for the whole run: :mod:`flows.locking`).

    Returns:
        The summary of :func:`pipeline.train.train_model` (steps, losses, datasets...)
        and ``processes``, the number of training processes.
    """
    from pipeline.train.config import TrainConfig
    from pipeline.train.launch import launch_training

    logger = get_run_logger()
    config = build_config(TrainConfig, options)
    logger.info("training %s on %s (%s) into %s", config.model or "the default model", corpus_dir, data_config, model_dir)
    with flow_lock(model_dir, wait_for_lock):
        summary = launch_training(Path(corpus_dir), Path(data_config), Path(model_dir), config, nproc=nproc, log=logger.info)
    if summary.get("skipped"):
        logger.info("model in %s is up to date (config hash %s): not retrained", model_dir, summary["config_hash"][:12])
    else:
        logger.info("trained %d steps, loss %s -> %s", summary["steps"], summary.get("loss_first"), summary.get("loss_last"))
    create_table_artifact(
        key="pairforge-train",
        table=[
            {"dataset": name, "lines": entry["lines"], "weight": entry["weight"]}
            for name, entry in sorted(summary.get("datasets", {}).items())
        ],
        description=f"trained {summary['steps']} steps into `{model_dir}`"
        + (" (up to date, skipped)" if summary.get("skipped") else ""),
    )
    return summary
