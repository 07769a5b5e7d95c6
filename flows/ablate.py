"""The ``pairforge-ablate`` flow: raw sources in; every variant of the recipe trained per seed, scored, and a report out.

In: ``sources`` (``[{"source", "inputs"}]``), an output folder and
:class:`pipeline.ablate.AblationConfig` overrides. Out: the ablation folder
(:mod:`pipeline.ablate.run`: corpora, data configs, a model and scores per variant and
seed, ``report.json``/``report.md``/``ablation.png``), the report's Markdown as the
artifact ``pairforge-ablation`` and a progress artifact.

The tasks are the library's units (ingest per corpus, mining and curation, a data
config per variant, a training and a scoring per variant and seed, the report); each
skips what is up to date, so variants share every stage they have in common and a
rerun goes on where a killed one stopped. The flow holds its folder as its only writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import Progress
from flows.config_options import build_config
from flows.locking import flow_lock
from flows.sources_file import absolute_sources

ABLATE_TIMEOUT_S = 48 * 3600


@task(name="ablate-ingest", task_run_name="ingest-{kind}", cache_policy=NO_CACHE)
def ingest_corpus(kind: str, sources: list[dict[str, Any]], paths: Any, config: Any) -> int:
    """Ingest every source into the ``naive`` or ``clean`` corpus (:func:`pipeline.ablate.run.build_corpus`)."""
    from pipeline.ablate.run import build_corpus

    return len(build_corpus(kind, sources, paths, config, progress=False))


@task(name="ablate-prepare", cache_policy=NO_CACHE)
def prepare_datasets(paths: Any, config: Any) -> dict[str, list[str]]:
    """Mine and curate what the variants need; each variant's datasets (:func:`pipeline.ablate.run.prepare_datasets`)."""
    from pipeline.ablate.run import prepare_datasets as prepare

    return prepare(paths, config, get_run_logger().info)


@task(name="ablate-train", task_run_name="train-{variant}-seed-{seed}", cache_policy=NO_CACHE)
def train_variant(variant: str, seed: int, paths: Any, config: Any) -> dict[str, Any]:
    """Train one variant with one seed (:func:`pipeline.ablate.run.train_variant`; skipped when finished)."""
    from pipeline.ablate.run import train_variant as train

    return train(variant, seed, paths, config)


@task(name="ablate-score", task_run_name="score-{name}", cache_policy=NO_CACHE)
def score_model(name: str, model_dir: Path, out_dir: Path, benchmarks: Any, evaluation: Any) -> dict[str, Any]:
    """Score one model on the shared benchmarks (:func:`pipeline.ablate.run.score_model_dir`)."""
    from pipeline.ablate.run import score_model_dir

    return score_model_dir(model_dir, out_dir, benchmarks, evaluation, get_run_logger().info)


@flow(name="pairforge-ablate", log_prints=True, timeout_seconds=ABLATE_TIMEOUT_S)
def pairforge_ablate(
    sources: list[dict[str, Any]], out_dir: str = "ablation", options: dict[str, Any] | None = None, wait_for_lock: bool = False
) -> dict[str, Any]:
    """Train and score every variant of the recipe per seed; publish the report.

    Args:
        sources: ``[{"source": "nli", "inputs": ["s1.dev"]}, ...]``.
        out_dir: the ablation folder.
        options: :class:`pipeline.ablate.AblationConfig` overrides (``seeds``, ``stsb``, ``max_steps``...).
        wait_for_lock: wait for another writer of ``out_dir`` instead of failing at once.

    Returns:
        The report, as written to ``report.json``.
    """
    from pipeline.ablate import AblationConfig
    from pipeline.ablate.report import report_markdown, write_ablation_report
    from pipeline.ablate.run import AblationPaths, corpus_kinds, eval_config, write_variant_config
    from pipeline.embed.models import resolve_model_path
    from pipeline.evaluate.benchmarks import load_benchmarks

    config = build_config(AblationConfig, options)
    paths = AblationPaths(Path(out_dir))
    runs = [(v, s) for v in config.variants for s in config.seeds]
    progress = Progress(["ingest", "prepare", *(f"{v}/seed-{s}" for v, s in runs), "report"], key="pairforge-ablation-progress")
    with flow_lock(out_dir, wait_for_lock):
        absolute = absolute_sources(sources)
        for kind in corpus_kinds(config):
            ingest_corpus(kind, absolute, paths, config)
        progress.advance("ingest")
        datasets = prepare_datasets(paths, config)
        for variant in config.variants:
            write_variant_config(variant, datasets[variant], paths, config)
        progress.advance("prepare")
        evaluation = eval_config(paths, config)
        benchmarks = load_benchmarks(evaluation)
        base = score_model("start-model", resolve_model_path(config.model), paths.base_dir, benchmarks, evaluation)
        scores: dict[str, dict[int, dict[str, Any]]] = {}
        trained: dict[str, dict[int, dict[str, Any]]] = {}
        for variant, seed in runs:
            trained.setdefault(variant, {})[seed] = train_variant(variant, seed, paths, config)
            run = paths.run_dir(variant, seed)
            scores.setdefault(variant, {})[seed] = score_model(f"{variant}-seed-{seed}", run / "model", run, benchmarks, evaluation)
            progress.advance(f"{variant}/seed-{seed}")
        report = write_ablation_report(paths, config, datasets, scores, base, trained)
        progress.advance("report")
    create_markdown_artifact(key="pairforge-ablation", markdown=report_markdown(report), description=f"ablation in `{out_dir}`")
    get_run_logger().info("ablation: %s", report["verdict"].get("text", ""))
    return report
