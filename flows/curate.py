"""The ``curate-corpus`` flow: datasets of a corpus in; their curated versions out, a step at a time.

In: the run's output folder (holding ``corpus/``), dataset names and the pipeline's
``curation`` parameter: ``{step: overrides}`` for the steps to run (``decontaminate``,
``consistency``, ``semantic_dedup``, ``rescore``; a step absent, None or False is off,
``{}`` or True runs it with its defaults) and optionally ``datasets`` (the names to
curate; default: every dataset with training rows). Out: for each dataset and step,
``corpus/<input name><suffix>/`` (``-decontaminated``, ``-consistent``, ``-semdedup``,
``-rescored``), each step reading the previous one's output; the table artifact
``pairforge-curate``; and, per dataset, the name of its last curated version.

The steps run in the order of :data:`pipeline.curate.STEPS`, the ones before mining
(``after_mining=False``: decontaminate, consistency, semantic dedup) in one call and
rescore, on datasets with negatives, in another after mining. Each (step, dataset) is
one task; the datasets of a step run in parallel. Whether a step is up to date is
decided by the library from its manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_stage_table
from flows.config_options import build_config
from flows.locking import flow_lock
from flows.paths import corpus_paths

CURATE_TIMEOUT_S = 12 * 3600
DATASETS_KEY = "datasets"


def resolve_curation(curation: dict[str, Any] | None, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The steps switched on, each with its overrides checked; decontamination defaults to the run's evaluation sets.

    Raises:
        ValueError: an unknown step or option, or decontamination with nothing to check against.
    """
    from pipeline.curate import STEPS

    given = dict(curation or {})
    unknown = sorted(set(given) - set(STEPS) - {DATASETS_KEY})
    if unknown:
        raise ValueError(f"unknown curation step(s): {', '.join(unknown)}; known: {', '.join(STEPS)}, {DATASETS_KEY}")
    resolved: dict[str, Any] = {}
    for name, step in STEPS.items():
        options = given.get(name)
        if options is None or options is False:
            continue
        options = {} if options is True else dict(options)
        if name == "decontaminate" and not build_config(step.config, options).names_evaluation_sets:
            # Keep out of training what this run evaluates on.
            options |= {key: list((evaluation or {}).get(key) or []) for key in ("stsb", "nli")}
        build_config(step.config, options)  # fails here, before any work, on a bad option
        resolved[name] = options
    if given.get(DATASETS_KEY) is not None:
        resolved[DATASETS_KEY] = list(given[DATASETS_KEY])
    return resolved


def curated_name(dataset: str, step: str) -> str:
    """The folder name of a dataset's version after ``step``: ``nli-pairs`` -> ``nli-pairs-consistent``."""
    from pipeline.curate import STEPS

    return dataset + STEPS[step].suffix


@task(name="curate-dataset", task_run_name="{step}-{dataset}", cache_policy=NO_CACHE)
def curate_dataset(step: str, dataset: str, corpus_dir: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Run one curation step on one dataset (skipped by the library when its manifest matches)."""
    from pipeline.curate import STEPS

    corpus = Path(corpus_dir)
    logger = get_run_logger()
    chosen = STEPS[step]
    manifest = chosen.run(corpus / dataset, corpus / curated_name(dataset, step), build_config(chosen.config, options), echo=logger.info)
    logger.info("%s %s: %d of %d rows kept, dropped %s", step, dataset, manifest["rows_kept"], manifest["rows_read"],
                manifest["dropped"] or "nothing")  # fmt: skip
    return manifest


def _applies(step: Any, manifest: dict[str, Any]) -> bool:
    from pipeline.corpus.schema import negative_columns

    has_negatives = bool(negative_columns(manifest.get("columns") or []))
    return int(manifest.get("rows_train", 0)) > 0 and (has_negatives or not step.after_mining)


@flow(name="curate-corpus", log_prints=True, timeout_seconds=CURATE_TIMEOUT_S)
def curate_corpus(
    out_dir: str, datasets: list[str], curation: dict[str, Any], after_mining: bool = False, wait_for_lock: bool = False
) -> dict[str, Any]:
    """Run the curation steps switched on in ``curation`` over ``datasets``, each step on the previous one's output.

    Args:
        out_dir: the output root holding ``corpus/``.
        datasets: the names of the datasets to curate (those without training rows, and
            for rescoring those without negatives, are passed over).
        curation: ``{step: overrides}`` (:func:`resolve_curation`).
        after_mining: run the steps that follow mining (rescore) instead of those before it.
        wait_for_lock: wait for another writer of the corpus instead of failing at once
            (the corpus is held for the whole flow: :mod:`flows.locking`).

    Returns:
        ``{"manifests": [...], "names": {dataset: its last curated version}}``.
    """
    corpus = corpus_paths(out_dir)["corpus"]
    with flow_lock(corpus, wait_for_lock):
        return _curate(corpus, datasets, curation, after_mining)


def _curate(corpus: Path, datasets: list[str], curation: dict[str, Any], after_mining: bool) -> dict[str, Any]:
    from pipeline.corpus.manifest import read_manifest
    from pipeline.curate import STEPS

    names = {dataset: dataset for dataset in datasets}
    manifests: list[dict[str, Any]] = []
    for step in STEPS.values():
        if step.name not in curation or step.after_mining != after_mining:
            continue
        futures = {
            dataset: curate_dataset.submit(step.name, current, str(corpus), curation[step.name])
            for dataset, current in names.items()
            if _applies(step, read_manifest(corpus / current) or {})
        }
        for dataset, future in futures.items():
            manifest = future.result()
            manifests.append(manifest)
            names[dataset] = manifest["dataset"]
    if manifests:
        publish_stage_table("curate", manifests, f"curated datasets in `{corpus}`: rows kept and dropped by reason")
    return {"manifests": manifests, "names": names}
