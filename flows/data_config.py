"""The ``write-config`` flow: a corpus in; its ``data_config.json`` out.

In: the run's output folder (holding ``corpus/``) and :class:`pipeline.sampling.WeightPolicy`
overrides (a JSON dict). Out: ``corpus/data_config.json`` (``[{name, lines, weight}]``,
the 1B-pairs format) with its ``.meta.json`` sidecar, and the table artifact
``pairforge-config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.config_options import build_config
from flows.locking import flow_lock
from flows.paths import corpus_paths


@task(name="write-data-config", cache_policy=NO_CACHE)
def write_config_file(corpus_dir: str, out_path: str, policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Write data_config.json for the corpus (:func:`pipeline.sampling.data_config.write_data_config`)."""
    from pipeline.sampling.data_config import write_data_config
    from pipeline.sampling.policies import WeightPolicy

    return write_data_config(Path(corpus_dir), Path(out_path), build_config(WeightPolicy, policy))


@flow(name="write-config", log_prints=True)
def write_config(out_dir: str, policy: dict[str, Any] | None = None, wait_for_lock: bool = False) -> list[dict[str, Any]]:
    """Write ``corpus/data_config.json``: ``[{name, lines, weight}, ...]``.

    Args:
        out_dir: the output root holding ``corpus/``.
        policy: :class:`pipeline.sampling.WeightPolicy` overrides, e.g. ``{"kind": "temperature", "alpha": 0.5}``.
        wait_for_lock: wait for another writer of the corpus instead of failing at once.

    Returns:
        The entries written.
    """
    from prefect.artifacts import create_table_artifact

    paths = corpus_paths(out_dir)
    with flow_lock(paths["corpus"], wait_for_lock):
        entries = write_config_file(str(paths["corpus"]), str(paths["data_config"]), policy)
    create_table_artifact(key="pairforge-config", table=entries, description=f"`{paths['data_config']}`")
    get_run_logger().info("wrote %s: %d datasets", paths["data_config"], len(entries))
    return entries
