"""The ``mine-negatives`` flow: pair datasets of a corpus in; their mined versions out.

In: the run's output folder (holding ``corpus/``), the names of pair datasets to mine
and :class:`pipeline.mining.MiningConfig` overrides (a JSON dict). Out:
``corpus/<dataset>-mined/`` for each (the same pairs with hard negatives) and the table
artifact ``pairforge-mine``.

The library's mining job is three units (:mod:`pipeline.mining.job`): on the default
thread runner one task per dataset runs them all (:func:`pipeline.mining.mine_negatives`);
on a Dask cluster a dataset with more than ``encode_slice_texts`` texts becomes one
``mine-prepare`` task, one ``mine-encode`` task per slice of its texts (spread over the
workers, into the shared embedding cache) and one ``mine-finish`` task. The output is
byte-identical either way, on any number of workers. Whether a dataset is up to date is
decided by the library from its manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_score_table, publish_stage_table
from flows.config_options import build_config
from flows.locking import flow_lock
from flows.paths import corpus_paths, mined_name

MINE_TIMEOUT_S = 12 * 3600
ENCODE_SLICE_TEXTS = 50_000


@task(name="mine-dataset", task_run_name="mine-{dataset}", cache_policy=NO_CACHE)
def mine_dataset(dataset: str, corpus_dir: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Mine hard negatives for one dataset (:func:`pipeline.mining.mine_negatives`; skipped when its manifest matches)."""
    from pipeline.mining import MiningConfig, mine_negatives

    corpus = Path(corpus_dir)
    logger = get_run_logger()
    manifest = mine_negatives(
        corpus / dataset, corpus / mined_name(dataset), build_config(MiningConfig, options), echo=logger.info
    )
    logger.info("%s: %d rows with negatives in %s", dataset, manifest["rows_kept"], manifest["dataset"])
    return manifest


@task(name="mine-prepare", task_run_name="mine-prepare-{dataset}", cache_policy=NO_CACHE)
def prepare_mining_job(dataset: str, corpus_dir: str, options: dict[str, Any] | None, n_slices: int) -> Any:
    """Check, read and plan one dataset's mining (:func:`pipeline.mining.job.prepare_mining`)."""
    from pipeline.mining import MiningConfig, prepare_mining

    corpus = Path(corpus_dir)
    return prepare_mining(
        corpus / dataset, corpus / mined_name(dataset), build_config(MiningConfig, options), n_slices=n_slices,
        echo=get_run_logger().info,
    )


@task(name="mine-encode", task_run_name="mine-encode-{dataset}-{slice_index}", cache_policy=NO_CACHE)
def encode_mining_slice(dataset: str, job: Any, slice_index: int) -> dict[str, Any]:
    """Encode one slice of a dataset's texts into the shared embedding cache (:func:`pipeline.mining.job.encode_slice`)."""
    from pipeline.mining import encode_slice

    return encode_slice(job, slice_index, echo=get_run_logger().info)


@task(name="mine-finish", task_run_name="mine-finish-{dataset}", cache_policy=NO_CACHE)
def finish_mining_job(dataset: str, job: Any, encoded: list[dict[str, Any]]) -> dict[str, Any]:
    """Search the shared index once, select and write (:func:`pipeline.mining.job.finish_mining`).

    ``encoded`` (the slices' results) is what orders this task after every slice.
    """
    from pipeline.mining import finish_mining

    logger = get_run_logger()
    manifest = finish_mining(job, echo=logger.info)
    logger.info("%s: %d rows with negatives in %s (%d slices encoded)", dataset, manifest["rows_kept"], manifest["dataset"], len(encoded))
    return manifest


ENCODE_SLICE_TEXTS = 50_000


def _on_dask() -> bool:
    """Whether this flow run's tasks go to a Dask cluster (prefect-dask's runner)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context is not None and type(context.task_runner).__name__ == "DaskTaskRunner"


def _estimated_texts(dataset_dir: Path, options: dict[str, Any] | None) -> int:
    """An upper bound of a dataset's distinct texts from manifests alone (no shard is read):
    two per training row, plus the extra corpus' rows."""
    from pipeline.corpus.manifest import read_manifest

    manifest = read_manifest(dataset_dir) or {}
    texts = 2 * int(manifest.get("rows_train", 0))
    for extra in (options or {}).get("extra_corpus", ()) or ():
        extra_manifest = read_manifest(Path(extra)) if Path(extra).is_dir() else None
        texts += int(extra_manifest.get("rows_train", 0)) if extra_manifest else ENCODE_SLICE_TEXTS
    return texts


def _mine_split(dataset: str, prepared: Any):
    """Submit the encode tasks (one per slice) and the finish task of a prepared dataset."""
    job = prepared.result()
    encoded = [encode_mining_slice.submit(dataset, job, index) for index in range(len(job.slices))]
    return finish_mining_job.submit(dataset, job, encoded)


@flow(name="mine-negatives", log_prints=True, timeout_seconds=MINE_TIMEOUT_S)
def mine_corpus(
    out_dir: str,
    datasets: list[str],
    mining: dict[str, Any] | None = None,
    encode_slice_texts: int = ENCODE_SLICE_TEXTS,
    wait_for_lock: bool = False,
) -> list[dict[str, Any]]:
    """Mine hard negatives for ``datasets`` of the corpus.

    On the default thread runner: one task per dataset. On a Dask cluster, a dataset
    with more than ``encode_slice_texts`` texts is split: ``mine-prepare`` reads it
    and plans the encoding, ``mine-encode`` tasks (one per slice of about
    ``encode_slice_texts`` texts) encode on the workers into the shared embedding
    cache, and ``mine-finish`` builds the index once, searches, selects and writes.
    The output is byte-identical either way, on any number of workers.

    Args:
        out_dir: the output root holding ``corpus/``.
        datasets: names of pair datasets to mine (each gets a ``<name>-mined`` folder).
        mining: :class:`pipeline.mining.MiningConfig` overrides.
        encode_slice_texts: texts per encode task on a Dask cluster.
        wait_for_lock: wait for another writer of the corpus instead of failing at once
            (the corpus is held for the whole flow: :mod:`flows.locking`).

    Returns:
        The manifests of the mined datasets.
    """
    corpus = corpus_paths(out_dir)["corpus"]
    with flow_lock(corpus, wait_for_lock):
        return _mine(corpus, datasets, mining, encode_slice_texts)


def _mine(corpus: Path, datasets: list[str], mining: dict[str, Any] | None, encode_slice_texts: int) -> list[dict[str, Any]]:
    split = _on_dask()
    futures: list[Any] = []
    for dataset in datasets:
        texts = _estimated_texts(corpus / dataset, mining) if split else 0
        if split and texts > encode_slice_texts:
            n_slices = -(-texts // max(1, encode_slice_texts))
            futures.append((dataset, prepare_mining_job.submit(dataset, str(corpus), mining, n_slices)))
        else:
            futures.append(mine_dataset.submit(dataset, str(corpus), mining))
    # Every dataset is prepared (in parallel) before any slice is submitted.
    futures = [_mine_split(*entry) if isinstance(entry, tuple) else entry for entry in futures]
    manifests = [future.result() for future in futures]
    publish_stage_table("mine", manifests, f"datasets with mined negatives in `{corpus}`")
    publish_score_table(manifests, str(corpus))
    return manifests


def pair_datasets(manifests: Sequence[dict[str, Any]]) -> list[str]:
    """The ingested datasets that mining applies to: training rows and no negative column yet."""
    from pipeline.corpus.schema import negative_columns

    return [m["dataset"] for m in manifests if m["rows_train"] > 0 and not negative_columns(m["columns"])]
