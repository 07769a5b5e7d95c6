"""The ``build-corpus`` flow: raw input files in; clean dataset folders out, one task per file.

In: ``sources``, a list of ``{"source": NAME, "inputs": [PATH, ...]}`` (the layout of
``examples/sources.json``), an output folder and :class:`pipeline.ingest.IngestConfig`
overrides (a JSON dict). Out: ``corpus/<dataset>/`` folders (shards and manifests,
docs/corpus-format.md) under the output folder, and the table artifact
``pairforge-ingest`` (rows kept and dropped by reason).

The flow runs the library's plan (:func:`pipeline.ingest.plan.plan_ingest`) as tasks:
``plan-source`` per source (is it up to date? hashes the inputs of a rebuild), then
one ``stage-file`` task per input file of the sources to rebuild, then one
``finalize-source`` task per source. The same units :func:`pipeline.ingest.plan.ingest_source`
runs in one process; nothing here repeats their work. Tasks are coarse (a file, a
source), never a row, and nothing retries: a data step that failed once fails the same
way again.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_stage_table
from flows.config_options import build_config
from flows.locking import flow_lock
from flows.paths import corpus_paths
from flows.sources_file import absolute_sources

# Per-file and per-dataset work on full dumps takes minutes to hours; a stage stuck far
# longer than that is hung. Timeouts sit on the flows, not on their tasks: tasks run in
# worker threads, where Prefect can only act on a timeout after the blocking call returns.
INGEST_TIMEOUT_S = 18 * 3600


@task(name="plan-source", task_run_name="plan-{source}", cache_policy=NO_CACHE)
def plan_source(source: str, inputs: list[str], corpus_dir: str, options: dict[str, Any] | None) -> Any:
    """The source's ingest plan (:func:`pipeline.ingest.plan.plan_ingest`): done, or one unit per file."""
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.plan import plan_ingest

    return plan_ingest(source, inputs, corpus_dir, build_config(IngestConfig, options))


@task(name="stage-file", task_run_name="stage-{plan.source}-{unit.file_index}", cache_policy=NO_CACHE)
def stage_file(plan: Any, unit: Any) -> str:
    """Read, clean and stage one input file of a source (:meth:`pipeline.ingest.plan.IngestPlan.stage`)."""
    staged = plan.stage(unit)
    get_run_logger().info("staged %s file %d (%s) in %s", plan.source, unit.file_index, unit.path, staged)
    return staged


@task(name="finalize-source", task_run_name="finalize-{plan.source}", cache_policy=NO_CACHE)
def finalize_source(plan: Any, staged: list[str]) -> list[dict[str, Any]]:
    """Deduplicate a source's staged files and write its datasets (:meth:`pipeline.ingest.plan.IngestPlan.finalize`)."""
    manifests = plan.finalize(staged, progress=False, map_partitions=cluster_map())
    _log_manifests(manifests)
    return manifests


def cluster_map() -> Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]] | type[map]:
    """A ``map`` over the Dask cluster this task runs on, else the builtin ``map``.

    Inside a task on a Dask worker (the ``dask:`` task runners), the exact-dedup
    partitions of a dataset become Dask tasks of their own, spread over the cluster's
    workers (``worker_client`` lets this task wait without holding a worker slot);
    the partition files live in the corpus folder, which a cluster shares. The mask
    they give is the same as in one process (each partition is independent and the
    merge is order-free: :meth:`pipeline.ingest.dedup.ExactDeduplicator.keep_mask`).
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
        )  # fmt: skip


@flow(name="build-corpus", log_prints=True, timeout_seconds=INGEST_TIMEOUT_S)
def build_corpus(
    sources: list[dict[str, Any]], out_dir: str, ingest: dict[str, Any] | None = None, wait_for_lock: bool = False
) -> list[dict[str, Any]]:
    """Ingest every input file of every source, then finalize each source's datasets.

    A source whose datasets already match their inputs (by content hash) and config is
    skipped whole; otherwise each input file is one ``stage-file`` task (a staged file
    that matches is reused), then one ``finalize-source`` task writes its datasets.
    The corpus is held for the whole flow (:mod:`flows.locking`); inputs are named by
    absolute path (:func:`flows.sources_file.absolute_sources`).

    Args:
        sources: ``[{"source": "nli", "inputs": ["a.jsonl", ...]}, ...]``.
        out_dir: the output root (``corpus/`` goes under it).
        ingest: :class:`pipeline.ingest.IngestConfig` overrides.
        wait_for_lock: wait for another writer of the corpus instead of failing at once.

    Returns:
        The manifests of every dataset, in source order.
    """
    with flow_lock(corpus_paths(out_dir)["corpus"], wait_for_lock):
        return _build(absolute_sources(sources), out_dir, ingest)


def _build(sources: list[dict[str, Any]], out_dir: str, ingest: dict[str, Any] | None) -> list[dict[str, Any]]:
    corpus = str(corpus_paths(out_dir)["corpus"])
    logger = get_run_logger()
    # Planning hashes a rebuild's inputs: submitted, the sources are planned in parallel
    # (on the cluster's workers when there is one).
    planning = [plan_source.submit(e["source"], [str(p) for p in e["inputs"]], corpus, ingest) for e in sources]
    finished: dict[str, list[dict[str, Any]]] = {}
    staging = []
    for future in planning:
        plan = future.result()
        if plan.done is not None:
            logger.info("%s: %d datasets up to date, skipped", plan.source, len(plan.done))
            finished[plan.source] = list(plan.done)
        else:
            staging.append((plan, [stage_file.submit(plan, unit) for unit in plan.stages]))
    finalizing = {plan.source: finalize_source.submit(plan, [f.result() for f in futures]) for plan, futures in staging}
    finished.update({source: future.result() for source, future in finalizing.items()})
    manifests = [m for entry in sources for m in finished[entry["source"]]]
    publish_stage_table("ingest", manifests, f"datasets ingested into `{corpus}`: rows kept and dropped by reason")
    return manifests
