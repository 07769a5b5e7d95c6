"""The parent flow ``pairforge-pipeline``: raw files in; corpus, model and report out.

In: ``sources`` (``[{"source", "inputs"}]``), an output folder, config overrides per
stage, and optionally the deployments to trigger for training and evaluation. Out,
under ``out_dir``: ``corpus/`` (datasets, mined datasets, ``data_config.json``,
``build.json``), ``model/``, ``eval/``, the artifacts of every stage, a progress
artifact, and a summary dict (datasets and rows, negatives mined, the config written,
training steps, the evaluation table, where everything is).

Stages run in order: build-corpus, curate-corpus (the curation steps switched on by
``curation``, before mining), mine-negatives, curate-corpus again (rescoring of the
mined negatives), write-config, then training and evaluation. With ``train_deployment`` / ``evaluate_deployment`` set (a work pool
configured, e.g. ``pairforge-train/gpu``), those run as deployment runs on their
pools via ``run_deployment``, linked to this run as subflows; without them (the
embedded default) they run in-process. Every worker must then see ``out_dir``.
``task_runner`` (flows/runners.py) runs the tasks of build-corpus and mine-negatives
on a Dask cluster instead of threads; the output is byte-identical either way.

One writer at a time: the flow holds its corpus folder (``out_dir/corpus``) from the
first stage to the last, training and evaluation included, as these read it
(:mod:`flows.locking`); a second run writing the same folder fails at once with the
holder named, or waits with ``wait_for_lock``. The model and report folders are
locked by the train and evaluate flows, which may run as deployment runs elsewhere.

Inputs are named by absolute path (:func:`flows.sources_file.absolute_sources`), and
so are model and extra-corpus folders given to mining: manifests, shards and
``build.json`` then mean the same files from any working folder, and
``pairforge verify`` rebuilds from build.json byte for byte wherever it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.tasks import exponential_backoff

from flows.artifacts import Progress
from flows.curate import DATASETS_KEY, curate_corpus, resolve_curation
from flows.data_config import write_config
from flows.evaluate import evaluate
from flows.ingest import build_corpus
from flows.locking import flow_lock
from flows.mine import mine_corpus, pair_datasets
from flows.paths import corpus_paths
from flows.runners import dask_cluster, shared_prefect_api, with_runner
from flows.sources_file import absolute_path, absolute_sources
from flows.train import train

StopAfter = Literal["config", "train", "evaluate"]


class DeploymentRunFailed(RuntimeError):
    """A triggered deployment run ended in a state other than Completed (not retried)."""


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    # Retry API and network trouble while triggering or polling; a deployment run
    # that itself failed is not transient and is not triggered again.
    return not isinstance(getattr(state, "data", None), DeploymentRunFailed)


@task(
    name="run-deployment",
    task_run_name="run-{name}",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=_retry_transient,
)
def run_stage_deployment(name: str, parameters: dict[str, Any], idempotency_key: str) -> str:
    """Run deployment ``name`` (``flow/deployment``), wait for it, return its flow run id.

    The idempotency key makes a retry of this task find the run it already created
    instead of starting a second training.

    Raises:
        DeploymentRunFailed: the deployment run did not complete.
    """
    from prefect.deployments import run_deployment

    run = run_deployment(name=name, parameters=parameters, idempotency_key=idempotency_key, as_subflow=True)
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise DeploymentRunFailed(f"deployment run {run.name} ({run.id}) of {name} ended {state}")
    get_run_logger().info("deployment run %s of %s completed", run.name, name)
    return str(run.id)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing after its stage completed")
    return json.loads(path.read_text(encoding="utf-8"))


def _train_stage(
    paths: dict[str, Path], model_dir: Path, options: dict[str, Any] | None, deployment: str | None, wait: bool
) -> dict[str, Any]:
    parameters = {
        "corpus_dir": str(paths["corpus"]), "data_config": str(paths["data_config"]), "model_dir": str(model_dir),
        "options": options, "wait_for_lock": wait,
    }  # fmt: skip
    if deployment is None:
        return train(**parameters)
    run_stage_deployment(deployment, parameters, f"{current_flow_run.id}-train")
    from pipeline.train.task import TRAIN_CONFIG_NAME

    return _read_json(model_dir / TRAIN_CONFIG_NAME)["result"] | {"out_dir": str(model_dir), "deployment": deployment}


def _evaluate_stage(
    paths: dict[str, Path], model_dir: Path, report_dir: Path, baseline_dir: str | None, options: dict[str, Any] | None,
    deployment: str | None, wait: bool,
) -> dict[str, Any]:
    parameters = {
        "model_dir": str(model_dir), "report_dir": str(report_dir), "corpus_dir": str(paths["corpus"]),
        "baseline_dir": baseline_dir, "options": options, "wait_for_lock": wait,
    }
    if deployment is None:
        return evaluate(**parameters)
    run_stage_deployment(deployment, parameters, f"{current_flow_run.id}-evaluate")
    from pipeline.evaluate.task import REPORT_NAME

    return _read_json(report_dir / REPORT_NAME)


def absolute_mining(mining: dict[str, Any] | None) -> dict[str, Any]:
    """Mining overrides with the model and extra-corpus folders absolute (when they are paths that exist).

    The mined manifest records them as given: absolute, a rebuild from another working
    folder finds them and writes the same bytes.
    """
    options = dict(mining or {})
    model = options.get("model")
    if isinstance(model, str) and model not in ("", "default") and Path(model).exists():
        options["model"] = absolute_path(model)
    if options.get("extra_corpus"):
        options["extra_corpus"] = [absolute_path(p) if Path(p).exists() else p for p in options["extra_corpus"]]
    return options


def _scores(manifest: dict[str, Any]) -> dict[str, Any]:
    """A mined dataset's score quartiles and its histograms' path in the corpus, for the run's report."""
    stats = manifest.get("mining") or {}
    quartiles = {
        key: {q: stats[key][q] for q in ("p25", "median", "p75") if q in stats.get(key, {})}
        for key in ("positive_scores", "negative_scores", "margins")
    }
    plot = stats.get("plot")
    return quartiles | {"plot": f"{manifest['dataset']}/{plot}" if plot else None}


@flow(name="pairforge-pipeline", log_prints=True)
def pairforge_pipeline(
    sources: list[dict[str, Any]],
    out_dir: str = "out",
    ingest: dict[str, Any] | None = None,
    mining: dict[str, Any] | None = None,
    mine: list[str] | None = None,
    curation: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    train_deployment: str | None = None,
    evaluate_deployment: str | None = None,
    stop_after: StopAfter = "evaluate",
    task_runner: str | None = None,
    wait_for_lock: bool = False,
) -> dict[str, Any]:
    """Build the corpus, mine negatives, write data_config.json, train, evaluate.

    Args:
        sources: ``[{"source": "nli", "inputs": ["a.jsonl"]}, ...]``.
        out_dir: the output root.
        ingest: :class:`pipeline.ingest.IngestConfig` overrides.
        mining: :class:`pipeline.mining.MiningConfig` overrides.
        mine: names of the datasets to mine; None for every ingested pair dataset.
        curation: the curation steps to run, ``{step: overrides}``, e.g. ``{"decontaminate": {},
            "consistency": {"k": 2}, "rescore": {"model": "models/ce"}}`` (flows/curate.py); a
            dataset is mined (and trained on) in its curated version. None: no curation.
        policy: :class:`pipeline.sampling.WeightPolicy` overrides.
        training: :class:`pipeline.train.TrainConfig` overrides.
        evaluation: :class:`pipeline.evaluate.EvalConfig` overrides (``stsb``, ``nli``...).
        train_deployment: run training as this deployment (e.g. ``pairforge-train/gpu``).
        evaluate_deployment: run evaluation as this deployment (e.g. ``pairforge-evaluate/cpu``).
        stop_after: the last stage to run: ``config`` (corpus only), ``train`` or ``evaluate``.
        task_runner: where the corpus tasks run: None (threads), ``dask:local[:N]`` or
            ``dask:tcp://scheduler:8786`` (:func:`flows.runners.parse_runner_spec`).
        wait_for_lock: when another process writes the corpus (or the model or report
            folder), wait for it instead of failing at once.

    Returns:
        The run's summary (see the module docstring).

    Raises:
        pipeline.corpus.locks.FolderLockedError: another process writes the corpus, the
            model or the report folder (without ``wait_for_lock``).
    """
    paths = corpus_paths(out_dir)
    with flow_lock(paths["corpus"], wait_for_lock):
        return _pipeline(
            paths, absolute_sources(sources), ingest, absolute_mining(mining), mine, curation, policy, training, evaluation,
            train_deployment, evaluate_deployment, stop_after, task_runner, wait_for_lock,
        )  # fmt: skip


def _pipeline(
    paths: dict[str, Path],
    sources: list[dict[str, Any]],
    ingest: dict[str, Any] | None,
    mining: dict[str, Any],
    mine: list[str] | None,
    curation: dict[str, Any] | None,
    policy: dict[str, Any] | None,
    training: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    train_deployment: str | None,
    evaluate_deployment: str | None,
    stop_after: StopAfter,
    task_runner: str | None,
    wait: bool,
) -> dict[str, Any]:
    """The stages of :func:`pairforge_pipeline`, its corpus held."""
    from pipeline.corpus.files import atomic_write_json

    logger = get_run_logger()
    out = paths["out"]
    model_dir, report_dir = paths["model"], paths["report"]
    steps = resolve_curation(curation, evaluation)  # a bad step or option fails before any work
    stages = ["ingest", *(["curate"] if steps else []), "mine", "config", "train", "evaluate"]
    stages = stages[: stages.index(stop_after) + 1]
    progress = Progress(stages)

    # One cluster (and one Prefect API the workers report to) for the corpus stages.
    curated: list[dict[str, Any]] = []
    with shared_prefect_api(task_runner), dask_cluster(task_runner) as runner:
        datasets = with_runner(build_corpus, runner)(sources, str(out), ingest)
        progress.advance("ingest")
        final = {m["dataset"]: m["dataset"] for m in datasets}  # each dataset's last version
        if steps:
            chosen = steps.get(DATASETS_KEY) or [m["dataset"] for m in datasets]
            before = with_runner(curate_corpus, runner)(str(out), chosen, steps)
            curated, final = before["manifests"], final | before["names"]
        latest = {m["dataset"]: m for m in [*datasets, *curated]}
        to_mine = pair_datasets([latest[final[m["dataset"]]] for m in datasets]) if mine is None else [final.get(n, n) for n in mine]
        mined = with_runner(mine_corpus, runner)(str(out), to_mine, mining)
        if steps:
            unmined = [final[m["dataset"]] for m in datasets if final[m["dataset"]] not in to_mine]
            after = with_runner(curate_corpus, runner)(str(out), [m["dataset"] for m in mined] + unmined, steps, after_mining=True)
            curated += after["manifests"]
            progress.advance("curate")
        progress.advance("mine")
    entries = write_config(str(out), policy)
    # What verify needs to rebuild this corpus: the inputs (absolute paths, as the
    # manifests name them) and every corpus config.
    atomic_write_json(
        paths["build_spec"],
        {"sources": sources, "ingest": ingest or {}, "mining": mining, "mine": mine, "policy": policy or {},
         "curation": curation or {}},
    )  # fmt: skip
    progress.advance("config")

    summary: dict[str, Any] = {
        "out_dir": str(out),
        "corpus_dir": str(paths["corpus"]),
        "data_config": str(paths["data_config"]),
        "datasets": {m["dataset"]: {k: m[k] for k in ("rows_read", "rows_kept", "rows_train", "rows_heldout")} for m in datasets},
        "mined": {m["dataset"]: {"rows_kept": m["rows_kept"], "columns": m["columns"], "scores": _scores(m)} for m in mined},
        "curated": {m["dataset"]: {k: m[k] for k in ("stage", "rows_read", "rows_kept", "dropped")} for m in curated},
        "config_entries": entries,
    }
    if stop_after in ("train", "evaluate"):
        summary["train"] = _train_stage(paths, model_dir, training, train_deployment, wait)
        summary["model_dir"] = str(model_dir)
        progress.advance("train")
    if stop_after == "evaluate":
        from pipeline.evaluate.report import key_figures, report_markdown

        # The baseline is the model training started from (None: the packaged default).
        baseline_dir = (training or {}).get("model")
        report = _evaluate_stage(paths, model_dir, report_dir, baseline_dir, evaluation, evaluate_deployment, wait)
        summary["report_dir"] = str(report_dir)
        summary["evaluation"] = {
            "verdict": report["summary"]["verdict"], "key_figures": key_figures(report), "markdown": report_markdown(report),
        }  # fmt: skip
        progress.advance("evaluate")
    logger.info("pipeline finished: %d datasets, %d mined, config %s", len(datasets), len(mined), paths["data_config"])
    return summary
