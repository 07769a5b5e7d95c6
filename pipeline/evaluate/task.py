"""The evaluation task: is the new model better than the one it started from?

In: a model folder, a baseline model folder (by default the model the training run
started from) and an :class:`~pipeline.evaluate.config.EvalConfig` naming the
benchmarks (:mod:`pipeline.evaluate.benchmarks`). Out: a report folder with
``report.json`` (deterministic: no timings), ``report.md`` (model, baseline and delta
per metric), ``metrics.png`` and ``heatmap.png``, plus ``timings.json`` (wall-clock
seconds, kept apart because they change from run to run). ``report.json`` is written
last: its presence means the report is complete.

Metric names: ``stsb/<file>/spearman_cosine``, ``nli/<name>/triplet_accuracy``
(sentence-transformers' evaluators, :mod:`pipeline.evaluate.metrics`), and from the
corpus's held-out rows (:mod:`pipeline.evaluate.heldout`):
``heldout/retrieval/{mrr@10, ndcg@10, recall@1, recall@10}`` (every held-out anchor
searches every held-out positive and the corpus's distractors),
``heldout/triplet_accuracy`` (held-out rows with BM25-mined negatives) and
``retrieval/<dataset>/...`` (a dataset's anchors against its own held-out positives).

A figure resting on fewer than ``min_rows`` rows is left out of the table and the
verdict (``left_out`` lists it with its rows); the summary names the one or two
figures that say most (:func:`key_metrics`). The pooled held-out figures are scored
row by row, so their delta comes with a 95% paired bootstrap interval, and a change
whose interval holds zero is called within noise, not better or worse.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.corpus.files import config_hash
from pipeline.corpus.manifest import library_versions
from pipeline.evaluate.benchmarks import Benchmarks, load_benchmarks
from pipeline.evaluate.config import EvalConfig
from pipeline.evaluate.heldout import POOLED_RETRIEVAL, POOLED_TRIPLETS, score_heldout
from pipeline.evaluate.metrics import encode_texts, paired_interval, rounded, stsb_spearman, triplet_accuracy
from pipeline.train.task import TRAIN_CONFIG_NAME

REPORT_NAME = "report.json"
TIMINGS_NAME = "timings.json"
_METRIC_DIGITS = 6


def score_model(
    model: Any, benchmarks: Benchmarks, config: EvalConfig, outcomes: dict[str, Any] | None = None
) -> dict[str, float | None]:
    """Every metric of one model on the benchmarks, as ``{metric_name: value}``.

    ``outcomes``, when given, receives the per-row values of the figures that have them
    (the pooled held-out ones), for :func:`pipeline.evaluate.metrics.paired_interval`.
    """
    batch, progress = config.batch_size, config.show_progress
    metrics: dict[str, float] = {}
    for pairs in benchmarks.stsb:
        metrics[f"stsb/{pairs.name}/spearman_cosine"] = stsb_spearman(
            model, pairs.sentences1, pairs.sentences2, pairs.scores, batch, progress
        )
    for triplets in benchmarks.nli:
        if triplets.anchors:
            metrics[f"nli/{triplets.name}/triplet_accuracy"] = triplet_accuracy(
                model, triplets.anchors, triplets.positives, triplets.negatives, batch, progress
            )
    if benchmarks.heldout is not None:
        metrics.update(score_heldout(model, benchmarks.heldout, batch, progress, outcomes))
    return {name: rounded(value, _METRIC_DIGITS) for name, value in metrics.items()}


def metric_rows(benchmarks: Benchmarks) -> dict[str, int]:
    """How many rows each metric of :func:`score_model` rests on: scored pairs, triplets or queries."""
    rows = {f"stsb/{p.name}/spearman_cosine": len(p.scores) for p in benchmarks.stsb}
    rows |= {f"nli/{t.name}/triplet_accuracy": len(t.anchors) for t in benchmarks.nli}
    if benchmarks.heldout is not None:
        rows |= benchmarks.heldout.metric_rows()
    return rows


# The figures that say most, in order: the user's STSb, retrieval over every held-out
# row with the corpus as distractors, the user's NLI triplets, the mined held-out triplets.
KEY_METRIC_ORDER = ("stsb/", f"{POOLED_RETRIEVAL}/ndcg@10", "nli/", POOLED_TRIPLETS)
KEY_METRICS = 2


def key_metrics(names: Sequence[str]) -> list[str]:
    """The one or two figures a summary names, from ``names`` (the figures shown), in :data:`KEY_METRIC_ORDER`."""
    chosen: list[str] = []
    for prefix in KEY_METRIC_ORDER:
        match = next((n for n in names if n.startswith(prefix)), None)
        if match is not None and match not in chosen:
            chosen.append(match)
    return chosen[:KEY_METRICS]


def resolve_baseline(model_dir: str | os.PathLike[str], baseline_dir: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The baseline model folder and where that choice came from.

    ``baseline_dir`` when given; else the ``base_model`` of the training run's
    ``train_config.json`` in ``model_dir``, or failing that key its ``config.model``
    (null or ``"default"`` meaning the packaged default; a relative path is tried from
    the working directory, then from ``model_dir``); else the packaged default model.

    Raises:
        FileNotFoundError: the chosen folder does not exist (the message names where it came from).
        ValueError: ``train_config.json`` is not a JSON object.
    """
    from pipeline.embed.models import default_model_path, resolve_model_path

    if baseline_dir not in (None, ""):
        return resolve_model_path(baseline_dir), "--baseline"
    train_config = Path(model_dir) / TRAIN_CONFIG_NAME
    if not train_config.is_file():
        return default_model_path(), "packaged default (no train_config.json)"
    try:
        values = json.loads(train_config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{train_config}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{train_config}: expected a JSON object")
    key = "base_model"
    if key not in values and isinstance(values.get("config"), dict) and "model" in values["config"]:
        # pipeline.train also records the starting model as config.model
        key = "config.model"
        base = values["config"]["model"]
    else:
        base = values.get(key)
    if base in (None, "", "default"):
        return default_model_path(), f"{TRAIN_CONFIG_NAME} {key}={base!r} (packaged default)"
    candidate = Path(str(base))
    if not candidate.is_absolute() and not candidate.is_dir():
        candidate = Path(model_dir) / candidate
    if not candidate.is_dir():
        raise FileNotFoundError(f"{train_config}: {key} folder not found: {base}")
    return candidate, f"{TRAIN_CONFIG_NAME} {key}"


def _heatmap_texts(benchmarks: Benchmarks, n: int) -> tuple[str, list[str], list[str]]:
    """A few pairs to draw: the first held-out pairs, else NLI anchors/entailments, else STSb pairs."""
    heldout = benchmarks.heldout
    if heldout is not None and heldout.datasets:
        name = heldout.datasets[0]
        rows = heldout.dataset_rows[name][:n]
        anchors = [heldout.queries[heldout.row_query[r]] for r in rows]
        return f"held-out pairs of {name}", anchors, [heldout.documents[heldout.row_document[r]] for r in rows]
    for triplets in benchmarks.nli:
        if triplets.anchors:
            # one pair per anchor: a premise with several contradictions repeats its entailment
            first_positive: dict[str, str] = {}
            for anchor, positive in zip(triplets.anchors, triplets.positives):
                first_positive.setdefault(anchor, positive)
            anchors = list(first_positive)[:n]
            return f"NLI {triplets.name} anchor/entailment", anchors, [first_positive[a] for a in anchors]
    for scored in benchmarks.stsb:
        return f"STSb {scored.name}", scored.sentences1[:n], scored.sentences2[:n]
    return "", [], []


def _similarity_matrix(model: Any, anchors: list[str], positives: list[str], batch_size: int) -> list[list[float]]:
    if not anchors:
        return []
    matrix = encode_texts(model, anchors, batch_size) @ encode_texts(model, positives, batch_size).T
    return np.round(matrix.astype(np.float64), 4).tolist()


def compare_metrics(
    model: dict[str, float | None],
    baseline: dict[str, float | None],
    tolerance: float,
    rows: dict[str, int] | None = None,
    intervals: dict[str, tuple[float, float]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows ``{name, model, baseline, delta, rows, interval}`` and a verdict.

    ``rows`` says how many rows each metric rests on; ``intervals`` gives, for the
    metrics scored row by row, a 95% paired bootstrap interval of the delta. A metric
    with an interval counts as improved or regressed only when the interval leaves out
    zero (else it is ``within_noise``). The verdict is ``worse`` when some metric
    regressed by more than ``tolerance``, else ``better`` when some metric improved,
    else ``same``.
    """
    table = []
    intervals = intervals or {}
    for name in model:
        ours, theirs = model[name], baseline.get(name)
        delta = None if ours is None or theirs is None else round(ours - theirs, _METRIC_DIGITS)
        interval = intervals.get(name)
        table.append({
            "name": name, "model": ours, "baseline": theirs, "delta": delta, "rows": (rows or {}).get(name),
            "interval": None if interval is None else [round(interval[0], _METRIC_DIGITS), round(interval[1], _METRIC_DIGITS)],
        })  # fmt: skip
    improved, regressed, noise = [], [], []
    for row in table:
        if row["delta"] is None or row["delta"] == 0:
            continue
        if row["interval"] is not None and row["interval"][0] <= 0 <= row["interval"][1]:
            noise.append(row["name"])
        elif row["delta"] > 0:
            improved.append(row["name"])
        elif row["delta"] < -tolerance:
            regressed.append(row["name"])
    verdict = "worse" if regressed else "better" if improved else "same"
    return table, {"verdict": verdict, "improved": improved, "regressed": regressed, "within_noise": noise, "tolerance": tolerance}


def _benchmark_summary(benchmarks: Benchmarks) -> dict[str, Any]:
    """What was read and dropped, per input; makes the numbers traceable to rows."""
    return {
        "stsb": [
            {"name": p.name, "path": p.path, "rows_read": p.rows_read, "rows_scored": len(p.scores), "dropped": p.dropped.as_dict()}
            for p in benchmarks.stsb
        ],
        "nli": [
            {
                "name": t.name,
                "path": t.path,
                "format": t.format,
                "rows_read": t.rows_read,
                "pairs": t.pairs,
                "pairs_in_triplets": t.pairs_in_triplets,
                "triplets": len(t.anchors),
                "dropped": t.dropped.as_dict(),
            }
            for t in benchmarks.nli
        ],
        "heldout": None if benchmarks.heldout is None else benchmarks.heldout.summary(),
    }


def evaluate_model(
    model_dir: str | os.PathLike[str],
    baseline_dir: str | os.PathLike[str] | None,
    config: EvalConfig,
    out_dir: str | os.PathLike[str],
) -> dict[str, Any]:
    """Score a model and its baseline on the configured benchmarks and write the report.

    Steps: 1. read the benchmarks; 2. resolve the baseline; 3. score the model;
    4. score the baseline (reusing the model's scores when it is the same folder);
    5. compare; 6. write ``report.md``, the plots, ``timings.json`` and, last,
    ``report.json``.

    Args:
        model_dir: the trained model folder.
        baseline_dir: the model to compare with; None for the training run's base model.
        config: benchmarks and options.
        out_dir: the report folder (created).

    Returns:
        The report, exactly as written to ``report.json``.

    Example::

        from pipeline import EvalConfig, evaluate_model

        config = EvalConfig(stsb=("sts-dev.csv",), corpus="corpus/")
        report = evaluate_model("model/", None, config, "eval/")  # baseline: the model training started from
        print(report["summary"]["verdict"], [(m["name"], m["delta"]) for m in report["metrics"]])
    """
    from pipeline.embed.models import load_encoder, model_fingerprint, resolve_model_path
    from pipeline.evaluate import report as report_files

    timings: dict[str, float] = {}
    started = time.perf_counter()
    out = Path(out_dir)

    # 1. benchmarks
    benchmarks = load_benchmarks(config)
    timings["read_benchmarks"] = time.perf_counter() - started

    # 2. models
    model_path = resolve_model_path(model_dir)
    baseline_path, baseline_source = resolve_baseline(model_dir, baseline_dir)
    same_model = model_path.resolve() == baseline_path.resolve()
    heatmap_title, heat_anchors, heat_positives = _heatmap_texts(benchmarks, config.heatmap_pairs)

    # 3. the model
    tick = time.perf_counter()
    model = load_encoder(model_path, device=config.device)
    model_outcomes: dict[str, Any] = {}
    model_metrics = score_model(model, benchmarks, config, model_outcomes)
    model_heat = _similarity_matrix(model, heat_anchors, heat_positives, config.batch_size)
    del model
    timings["score_model"] = time.perf_counter() - tick

    # 4. the baseline
    tick = time.perf_counter()
    if same_model:
        baseline_metrics, baseline_heat, baseline_outcomes = dict(model_metrics), model_heat, model_outcomes
    else:
        baseline = load_encoder(baseline_path, device=config.device)
        baseline_outcomes: dict[str, Any] = {}
        baseline_metrics = score_model(baseline, benchmarks, config, baseline_outcomes)
        baseline_heat = _similarity_matrix(baseline, heat_anchors, heat_positives, config.batch_size)
        del baseline
    timings["score_baseline"] = time.perf_counter() - tick

    # 5. comparison, of the figures resting on at least min_rows rows
    rows_of = metric_rows(benchmarks)
    shown = {name: value for name, value in model_metrics.items() if rows_of.get(name, 0) >= config.min_rows}
    intervals = {name: paired_interval(model_outcomes[name], baseline_outcomes[name]) for name in shown if name in model_outcomes}
    rows, verdict = compare_metrics(shown, baseline_metrics, config.regression_tolerance, rows_of, intervals)
    verdict |= {"min_rows": config.min_rows, "key_metrics": key_metrics(list(shown))}
    left_out = [{"name": name, "rows": rows_of.get(name, 0)} for name in model_metrics if name not in shown]
    resolved_config = config.as_dict()
    report: dict[str, Any] = {
        "model": {"path": str(model_dir), "fingerprint": model_fingerprint(model_path)},
        "baseline": {
            "path": str(baseline_path),
            "fingerprint": model_fingerprint(baseline_path),
            "source": baseline_source,
            "same_as_model": same_model,
        },
        "metrics": rows,
        "left_out": left_out,
        "summary": verdict,
        "benchmarks": _benchmark_summary(benchmarks),
        "heatmap": {"title": heatmap_title, "anchors": heat_anchors, "positives": heat_positives,
                    "model": model_heat, "baseline": baseline_heat},
        "config": resolved_config,
        "config_hash": config_hash(resolved_config),
        "versions": library_versions("sentence-transformers", "transformers", "torch", "faiss-cpu", "numpy", "scipy"),
    }

    # 6. files, report.json last
    tick = time.perf_counter()
    report_files.write_report_files(report, out)
    timings["write_report"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    report_files.write_timings(out / TIMINGS_NAME, timings)
    report_files.write_report_json(out / REPORT_NAME, report)
    return report
