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
* ``mine-negatives``: one task per pair dataset to mine;
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
from typing import Any, Sequence

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
def source_up_to_date(source: str, inputs: list[str], corpus_dir: str, options: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The source's manifests when every dataset already matches inputs and config, else None."""
    from pipeline.ingest import IngestConfig, up_to_date

    return up_to_date(source, [Path(p) for p in inputs], Path(corpus_dir), build_config(IngestConfig, options))


@task(
    name="stage-file",
    task_run_name="stage-{source}-{file_index}",
    cache_policy=NO_CACHE,
)
def stage_input_file(source: str, path: str, corpus_dir: str, options: dict[str, Any] | None, file_index: int) -> str:
    """Read, clean and stage one input file of ``source`` (:func:`pipeline.ingest.stage_file`)."""
    from pipeline.ingest import STAGING_DIR, IngestConfig, stage_file

    work_dir = Path(corpus_dir) / STAGING_DIR / source
    staged = stage_file(source, Path(path), work_dir, build_config(IngestConfig, options), file_index)
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
        source, [Path(p) for p in staged], [Path(p) for p in inputs], corpus, build_config(IngestConfig, options), progress=False
    )
    # As pipeline.ingest.ingest does: staged files are only needed until the manifests exist.
    shutil.rmtree(corpus / STAGING_DIR / source, ignore_errors=True)
    with contextlib.suppress(OSError):
        (corpus / STAGING_DIR).rmdir()
    _log_manifests(manifests)
    return manifests


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
        done = check.result()
        if done is not None:
            logger.info("%s: %d datasets up to date, skipped", source, len(done))
            finished[source] = done
        else:
            futures = [stage_input_file.submit(source, path, corpus, ingest, index) for index, path in enumerate(inputs)]
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


@flow(name="mine-negatives", log_prints=True, timeout_seconds=MINE_TIMEOUT_S)
def mine_corpus(out_dir: str, datasets: list[str], mining: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Mine hard negatives for ``datasets`` of the corpus, one task per dataset.

    Args:
        out_dir: the output root holding ``corpus/``.
        datasets: names of pair datasets to mine (each gets a ``<name>-mined`` folder).
        mining: :class:`pipeline.mining.MiningConfig` overrides.

    Returns:
        The manifests of the mined datasets.
    """
    corpus = corpus_paths(out_dir)["corpus"]
    futures = [mine_dataset.submit(dataset, str(corpus), mining) for dataset in datasets]
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
