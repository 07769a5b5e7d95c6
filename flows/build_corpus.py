"""Corpus flows: raw input files in; dataset folders, mined negatives and data_config.json out.

In: ``sources``, a list of ``{"source": NAME, "inputs": [PATH, ...]}`` (the layout of
``examples/sources.json``), an output folder and config overrides (JSON dicts). Out,
under ``out_dir``:

* ``corpus/<dataset>/``: shards and ``manifest.json`` (docs/corpus-format.md);
* ``corpus/data_config.json`` and its ``.meta.json`` sidecar;
* ``staging/``: per-file intermediate folders of the ingest stage;
* table artifacts ``pairforge-ingest``, ``pairforge-mine``, ``pairforge-config``.

Flows:

* ``build-corpus``: one task per input file per source (``stage-file``), then one task
  per source for dedup, shards and manifests (``finalize-source``);
* ``mine-negatives``: one task per dataset to mine;
* ``write-config``: one task writing data_config.json.

Tasks are coarse (a file, a source, a dataset), never a row. Whether a stage is
skipped is decided by the library from the manifests (inputs by content hash, config
hash), so a rerun after a crash redoes only what has no matching manifest. Nothing
here retries: a data step that failed once fails the same way again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import build_config, publish_stage_table

CORPUS_DIR = "corpus"
STAGING_DIR = "staging"
DATA_CONFIG_NAME = "data_config.json"
# Per-file and per-dataset work on full dumps takes minutes to hours; a task stuck
# far longer than that is hung.
STAGE_FILE_TIMEOUT_S = 6 * 3600
FINALIZE_TIMEOUT_S = 12 * 3600
MINE_TIMEOUT_S = 12 * 3600


def corpus_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where each stage writes under ``out_dir``: corpus, staging, data_config.json."""
    out = Path(out_dir)
    return {
        "corpus": out / CORPUS_DIR,
        "staging": out / STAGING_DIR,
        "data_config": out / CORPUS_DIR / DATA_CONFIG_NAME,
    }


# --- ingest --------------------------------------------------------------------------
@task(
    name="stage-file",
    task_run_name="stage-{source}-{file_index}",
    cache_policy=NO_CACHE,
    timeout_seconds=STAGE_FILE_TIMEOUT_S,
)
def stage_input_file(source: str, path: str, work_dir: str, options: dict[str, Any] | None, file_index: int) -> str:
    """Read, clean and stage one input file of ``source`` (:func:`pipeline.ingest.stage_file`)."""
    from pipeline.ingest import IngestConfig, stage_file

    staged = stage_file(source, Path(path), Path(work_dir), build_config(IngestConfig, options), file_index)
    get_run_logger().info("staged %s file %d (%s) in %s", source, file_index, path, staged)
    return str(staged)


@task(
    name="finalize-source",
    task_run_name="finalize-{source}",
    cache_policy=NO_CACHE,
    timeout_seconds=FINALIZE_TIMEOUT_S,
)
def finalize_input_source(
    source: str, staged: list[str], inputs: list[str], corpus_dir: str, options: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Deduplicate a source's staged files and write its datasets (:func:`pipeline.ingest.finalize_source`)."""
    from pipeline.ingest import IngestConfig, finalize_source

    manifests = finalize_source(
        source, [Path(p) for p in staged], [Path(p) for p in inputs], Path(corpus_dir), build_config(IngestConfig, options)
    )
    logger = get_run_logger()
    for manifest in manifests:
        logger.info(
            "%s: %d read, %d kept (%d train, %d held out), dropped %s",
            manifest["dataset"], manifest["rows_read"], manifest["rows_kept"],
            manifest["rows_train"], manifest["rows_heldout"], manifest["dropped"] or "nothing",
        )
    return manifests


@flow(name="build-corpus", log_prints=True)
def build_corpus(sources: list[dict[str, Any]], out_dir: str, ingest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Ingest every input file of every source, then finalize each source's datasets.

    Args:
        sources: ``[{"source": "nli", "inputs": ["a.jsonl", ...]}, ...]``.
        out_dir: the output root (``corpus/`` and ``staging/`` go under it).
        ingest: :class:`pipeline.ingest.IngestConfig` overrides.

    Returns:
        The manifests of every dataset written, in source order.
    """
    paths = corpus_paths(out_dir)
    staged_by_source = []
    for entry in sources:
        source, inputs = entry["source"], [str(p) for p in entry["inputs"]]
        work_dir = str(paths["staging"] / source)
        futures = [
            stage_input_file.submit(source, path, work_dir, ingest, index) for index, path in enumerate(inputs)
        ]
        staged_by_source.append((source, inputs, futures))
    finals = [
        finalize_input_source.submit(source, [f.result() for f in futures], inputs, str(paths["corpus"]), ingest)
        for source, inputs, futures in staged_by_source
    ]
    manifests = [manifest for future in finals for manifest in future.result()]
    publish_stage_table("ingest", manifests, f"datasets ingested into `{paths['corpus']}`: rows kept and dropped by reason")
    return manifests


# --- mine ----------------------------------------------------------------------------
@task(name="mine-dataset", task_run_name="mine-{dataset}", cache_policy=NO_CACHE, timeout_seconds=MINE_TIMEOUT_S)
def mine_dataset(dataset: str, corpus_dir: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Mine hard negatives for one dataset (:func:`pipeline.mining.mine_negatives`)."""
    from pipeline.mining import MiningConfig, mine_negatives, mined_dataset_dir

    corpus = Path(corpus_dir)
    manifest = mine_negatives(corpus / dataset, mined_dataset_dir(corpus, dataset), build_config(MiningConfig, options))
    get_run_logger().info("%s: %d rows with negatives written to %s", dataset, manifest["rows_kept"], manifest["dataset"])
    return manifest


@flow(name="mine-negatives", log_prints=True)
def mine_corpus(out_dir: str, mining: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Mine hard negatives for every dataset of the corpus that mining applies to.

    Args:
        out_dir: the output root holding ``corpus/``.
        mining: :class:`pipeline.mining.MiningConfig` overrides.

    Returns:
        The manifests of the mined datasets.
    """
    from pipeline.mining import datasets_to_mine

    corpus = corpus_paths(out_dir)["corpus"]
    futures = [mine_dataset.submit(dataset, str(corpus), mining) for dataset in datasets_to_mine(corpus)]
    manifests = [future.result() for future in futures]
    publish_stage_table("mine", manifests, f"datasets with mined negatives in `{corpus}`")
    return manifests


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


def count_rows(manifests: Sequence[dict[str, Any]]) -> int:
    """Rows kept over a list of manifests."""
    return sum(int(m.get("rows_kept", 0)) for m in manifests)
