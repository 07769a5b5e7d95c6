"""The ``pairforge-evaluate`` flow: a trained model in, an evaluation report out.

In: a model folder, optionally a baseline folder (default: the model training
started from), benchmark inputs (STSb files, NLI files, a corpus with held-out
splits) and EvalConfig overrides. Out: the report folder written by
:func:`pipeline.evaluate.task.evaluate_model` (``report.json``, ``report.md``, plots) and
the report's Markdown table as the markdown artifact ``pairforge-evaluation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.config_options import build_config
from flows.locking import flow_lock

EVALUATE_TIMEOUT_S = 6 * 3600


@flow(name="pairforge-evaluate", timeout_seconds=EVALUATE_TIMEOUT_S, log_prints=False)
def evaluate(
    model_dir: str,
    report_dir: str,
    corpus_dir: str | None = None,
    baseline_dir: str | None = None,
    stsb: list[str] | None = None,
    nli: list[str] | None = None,
    options: dict[str, Any] | None = None,
    wait_for_lock: bool = False,
) -> dict[str, Any]:
    """Score ``model_dir`` and its baseline; publish the comparison table.

    Args:
        model_dir: the trained model folder.
        report_dir: where the report files go.
        corpus_dir: a corpus whose held-out splits are retrieval benchmarks.
        baseline_dir: the model to compare with; None for the one training started from.
        stsb: STSb benchmark files.
        nli: NLI benchmark files or folders.
        options: further :class:`pipeline.evaluate.config.EvalConfig` overrides.
        wait_for_lock: wait for another writer of the report folder instead of failing at once.

    Returns:
        The report, as written to ``report.json``.
    """
    from pipeline.evaluate.config import EvalConfig
    from pipeline.evaluate.report import report_markdown
    from pipeline.evaluate.task import evaluate_model

    logger = get_run_logger()
    overrides: dict[str, Any] = {"stsb": stsb or [], "nli": nli or [], "corpus": corpus_dir, "show_progress": False}
    overrides.update(options or {})
    config = build_config(EvalConfig, overrides)
    with flow_lock(report_dir, wait_for_lock):
        report = evaluate_model(Path(model_dir), Path(baseline_dir) if baseline_dir else None, config, Path(report_dir))
    markdown = report_markdown(report)
    create_markdown_artifact(key="pairforge-evaluation", markdown=markdown, description=f"evaluation of `{model_dir}`")
    logger.info("evaluation verdict: %s (report in %s)", report["summary"]["verdict"], report_dir)
    return report
