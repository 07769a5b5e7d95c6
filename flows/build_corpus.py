"""Corpus flows: raw input files in; dataset folders, mined negatives and data_config.json out.

In: ``sources``, a list of ``{"source": NAME, "inputs": [PATH, ...]}`` (the layout of
``examples/sources.json``), an output folder and config overrides (JSON dicts). Out,
under ``out_dir``:

* ``corpus/<dataset>/``: shards and ``manifest.json`` (docs/corpus-format.md);
* ``corpus/<dataset>-mined/``: the same pairs with mined hard negatives;
* ``corpus/data_config.json`` and its ``.meta.json`` sidecar;
* ``corpus/.staging/``: per-file intermediate folders of ingest, removed once a
  source's manifests are written;
* table artifacts ``pairforge-ingest``, ``pairforge-mine``, ``pairforge-config``.

Flows:

* ``build-corpus``: one task per input file per source (``stage-file``), then one task
  per source for dedup, shards and manifests (``finalize-source``);
* ``mine-negatives``: one task per pair dataset to mine (on Dask, a large dataset is
  split into prepare, one encode task per slice of its texts, and finish);
* ``write-config``: one task writing data_config.json.

Tasks are coarse (a file, a source, a dataset), never a row. Whether a stage is
skipped is decided by the library from the manifests (inputs by content hash, config
hash), so a rerun after a crash redoes only what has no matching manifest. Nothing
here retries: a data step that failed once fails the same way again.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import build_config, publish_stage_table

CORPUS_DIR = "corpus"
DATA_CONFIG_NAME = "data_config.json"
MINED_SUFFIX = "-mined"
# Per-file and per-dataset work on full dumps takes minutes to hours; a task stuck
# far longer than that is hung.
# Timeouts sit on the stage flows, not on their tasks: tasks run in worker threads,
# where Prefect can only act on a timeout after the blocking call returns (and warns
# on every task run that it cannot).
INGEST_TIMEOUT_S = 18 * 3600
MINE_TIMEOUT_S = 12 * 3600


def corpus_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where each stage writes under ``out_dir`` (made absolute, so manifests name one place)."""
    out = Path(out_dir).resolve()
    return {"out": out, "corpus": out / CORPUS_DIR, "data_config": out / CORPUS_DIR / DATA_CONFIG_NAME}


# --- ingest --------------------------------------------------------------------------
@task(name="check-source", task_run_name="check-{source}", cache_policy=NO_CACHE)
def source_up_to_date(source: str, inputs: list[str], corpus_dir: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the source's datasets already match their inputs and config.

    Returns ``{"manifests": [...] or None, "entries": [...] or None}``: the manifests
    when every dataset matches, and the inputs' ``{path, bytes, sha256}`` when they were
    hashed for the comparison (every dataset had a manifest), so the stage tasks of a
    rebuild (say, after a config change) do not hash every input again.
    """
    from pipeline.ingest import IngestConfig, up_to_date

    check = up_to_date(source, [Path(p) for p in inputs], Path(corpus_dir), build_config(IngestConfig, options))
    return {"manifests": check.manifests, "entries": check.entries}


@task(
    name="stage-file",
    task_run_name="stage-{source}-{file_index}",
    cache_policy=NO_CACHE,
)
def stage_input_file(
    source: str,
    path: str,
    corpus_dir: str,
    options: dict[str, Any] | None,
    file_index: int,
    inputs: list[str],
    entry: dict[str, Any] | None = None,
) -> str:
    """Read, clean and stage one input file of ``source`` (:func:`pipeline.ingest.stage_file`);
    ``entry`` is the file's ``{path, bytes, sha256}`` when the check already hashed it."""
    from pipeline.ingest import STAGING_DIR, IngestConfig, stage_file

    work_dir = Path(corpus_dir) / STAGING_DIR / source
    config = build_config(IngestConfig, options)
    staged = stage_file(source, Path(path), work_dir, config, file_index, entry=entry, inputs=[Path(p) for p in inputs])
    get_run_logger().info("staged %s file %d (%s) in %s", source, file_index, path, staged)
    return str(staged)


@task(
    name="finalize-source",
    task_run_name="finalize-{source}",
    cache_policy=NO_CACHE,
)
def finalize_input_source(
    source: str, staged: list[str], inputs: list[str], corpus_dir: str, options: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Deduplicate a source's staged files and write its datasets (:func:`pipeline.ingest.finalize_source`)."""
    from pipeline.ingest import STAGING_DIR, IngestConfig, finalize_source

    corpus = Path(corpus_dir)
    manifests = finalize_source(
        source,
        [Path(p) for p in staged],
        [Path(p) for p in inputs],
        corpus,
        build_config(IngestConfig, options),
        progress=False,
        map_partitions=cluster_map(),
    )
    # As pipeline.ingest.ingest does: staged files are only needed until the manifests exist.
    shutil.rmtree(corpus / STAGING_DIR / source, ignore_errors=True)
    with contextlib.suppress(OSError):
        (corpus / STAGING_DIR).rmdir()
    _log_manifests(manifests)
    return manifests


def cluster_map() -> Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]] | type[map]:
    """A ``map`` over the Dask cluster this task runs on, else the builtin ``map``.

    Inside a task on a Dask worker (the ``dask:`` task runners), the exact-dedup
    partitions of a dataset become Dask tasks of their own, spread over the cluster's
    workers (``worker_client`` lets this task wait without holding a worker slot);
    the partition files live in the corpus folder, which a cluster shares. The mask
    they give is the same as in one process (each partition is independent and the
    merge is order-free: :meth:`pipeline.dedup.ExactDeduplicator.keep_mask`).
    """
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return map

    def on_cluster(function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        from distributed import worker_client

        with worker_client() as client:
            return client.gather(client.map(function, [str(item) for item in items], pure=False))

    return on_cluster


def _log_manifests(manifests: Sequence[dict[str, Any]]) -> None:
    logger = get_run_logger()
    for m in manifests:
        logger.info(
            "%s: %d read, %d kept (%d train, %d held out), dropped %s",
            m["dataset"], m["rows_read"], m["rows_kept"], m["rows_train"], m["rows_heldout"], m["dropped"] or "nothing",
        )


@flow(name="build-corpus", log_prints=True, timeout_seconds=INGEST_TIMEOUT_S)
def build_corpus(sources: list[dict[str, Any]], out_dir: str, ingest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Ingest every input file of every source, then finalize each source's datasets.

    A source whose datasets already match their inputs (by content hash) and config is
    skipped whole; otherwise each input file is one ``stage-file`` task (a staged file
    that matches is reused), then one ``finalize-source`` task writes its datasets.

    Args:
        sources: ``[{"source": "nli", "inputs": ["a.jsonl", ...]}, ...]``.
        out_dir: the output root (``corpus/`` goes under it).
        ingest: :class:`pipeline.ingest.IngestConfig` overrides.

    Returns:
        The manifests of every dataset, in source order.
    """
    corpus = str(corpus_paths(out_dir)["corpus"])
    logger = get_run_logger()
    staging = []  # (source, inputs, stage-file futures) of the sources to rebuild
    finished: dict[str, list[dict[str, Any]]] = {}
    # A check hashes every input file of its source: submitted, the sources are checked
    # in parallel (on the cluster's workers when there is one).
    checks = []
    for entry in sources:
        inputs = [str(p) for p in entry["inputs"]]
        checks.append((entry["source"], inputs, source_up_to_date.submit(entry["source"], inputs, corpus, ingest)))
    for source, inputs, check in checks:
        result = check.result()
        done, entries = result["manifests"], result["entries"]
        if done is not None:
            logger.info("%s: %d datasets up to date, skipped", source, len(done))
            finished[source] = done
        else:
            futures = [
                stage_input_file.submit(source, path, corpus, ingest, index, inputs, entries[index] if entries else None)
                for index, path in enumerate(inputs)
            ]
            staging.append((source, inputs, futures))
    finalizing = {
        source: finalize_input_source.submit(source, [f.result() for f in futures], inputs, corpus, ingest)
        for source, inputs, futures in staging
    }
    finished.update({source: future.result() for source, future in finalizing.items()})
    manifests = [m for entry in sources for m in finished[entry["source"]]]
    publish_stage_table("ingest", manifests, f"datasets ingested into `{corpus}`: rows kept and dropped by reason")
    return manifests


# --- mine ----------------------------------------------------------------------------
def mined_name(dataset: str) -> str:
    """The folder name of a dataset's mined version: ``nli-pairs`` -> ``nli-pairs-mined``."""
    return dataset + MINED_SUFFIX


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
    """Check, read and plan one dataset's mining (:func:`pipeline.mining.prepare_mining`)."""
    from pipeline.mining import MiningConfig, prepare_mining

    corpus = Path(corpus_dir)
    return prepare_mining(
        corpus / dataset, corpus / mined_name(dataset), build_config(MiningConfig, options), n_slices=n_slices,
        echo=get_run_logger().info,
    )


@task(name="mine-encode", task_run_name="mine-encode-{dataset}-{slice_index}", cache_policy=NO_CACHE)
def encode_mining_slice(dataset: str, job: Any, slice_index: int) -> dict[str, Any]:
    """Encode one slice of a dataset's texts into the shared embedding cache (:func:`pipeline.mining.encode_slice`)."""
    from pipeline.mining import encode_slice

    return encode_slice(job, slice_index, echo=get_run_logger().info)


@task(name="mine-finish", task_run_name="mine-finish-{dataset}", cache_policy=NO_CACHE)
def finish_mining_job(dataset: str, job: Any, encoded: list[dict[str, Any]]) -> dict[str, Any]:
    """Search the shared index once, select and write (:func:`pipeline.mining.finish_mining`).

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
    from pipeline.shards import read_manifest

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
    out_dir: str, datasets: list[str], mining: dict[str, Any] | None = None, encode_slice_texts: int = ENCODE_SLICE_TEXTS
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

    Returns:
        The manifests of the mined datasets.
    """
    corpus = corpus_paths(out_dir)["corpus"]
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
    return manifests


def pair_datasets(manifests: Sequence[dict[str, Any]]) -> list[str]:
    """The ingested datasets that mining applies to: training rows and no negative column yet."""
    return [
        m["dataset"]
        for m in manifests
        if m["rows_train"] > 0 and not any(c.startswith("negative") for c in m["columns"])
    ]


# --- data_config.json ----------------------------------------------------------------
@task(name="write-data-config", cache_policy=NO_CACHE)
def write_config_file(corpus_dir: str, out_path: str, policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Write data_config.json for the corpus (:func:`pipeline.sampling.write_data_config`)."""
    from pipeline.sampling import WeightPolicy, write_data_config

    return write_data_config(Path(corpus_dir), Path(out_path), build_config(WeightPolicy, policy))


@flow(name="write-config", log_prints=True)
def write_config(out_dir: str, policy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Write ``corpus/data_config.json``: ``[{name, lines, weight}, ...]``.

    Args:
        out_dir: the output root holding ``corpus/``.
        policy: :class:`pipeline.sampling.WeightPolicy` overrides, e.g. ``{"kind": "temperature", "alpha": 0.5}``.

    Returns:
        The entries written.
    """
    from prefect.artifacts import create_table_artifact

    paths = corpus_paths(out_dir)
    entries = write_config_file(str(paths["corpus"]), str(paths["data_config"]), policy)
    create_table_artifact(key="pairforge-config", table=entries, description=f"`{paths['data_config']}`")
    get_run_logger().info("wrote %s: %d datasets", paths["data_config"], len(entries))
    return entries
