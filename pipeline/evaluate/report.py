"""The evaluation report's files: Markdown, plots, timings and the JSON written last.

In: the report dict :func:`pipeline.evaluate.evaluate_model` builds. Out:
``report.md`` (model, baseline, delta per metric; :func:`report_markdown` returns the
same text for a Prefect artifact), ``metrics.png`` (metric bars, model vs baseline),
``heatmap.png`` (cosine similarity of a few held-out pairs, model and baseline side by
side), ``timings.json`` and ``report.json``.

Every file goes through a temporary name and a rename. The PNGs carry no date or
software metadata, so the same report gives the same bytes with the same matplotlib.
matplotlib is imported inside the plotting functions, with the Agg backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.corpus.files import atomic_write_bytes, atomic_write_json
from pipeline.plots import png_bytes, pyplot

MARKDOWN_NAME = "report.md"
METRICS_PLOT_NAME = "metrics.png"
HEATMAP_PLOT_NAME = "heatmap.png"
_HEATMAP_LABEL_CHARS = 40


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def key_figures(report: Mapping[str, Any]) -> str:
    """The one or two figures that say most, in a sentence: model, baseline, delta and the rows behind each."""
    by_name = {row["name"]: row for row in report["metrics"]}
    parts = []
    for name in report["summary"].get("key_metrics", []):
        row = by_name[name]
        parts.append(
            f"{metric_label(name)} {_number(row['model'])} (baseline {_number(row['baseline'])},"
            f" {_number(row['delta'], signed=True)}{_interval_words(row)}; {row['rows']:,} {metric_unit(name)})"
        )
    if not parts:
        return f"No figure rests on {report['summary'].get('min_rows', 1):,} rows or more: give --stsb/--nli files or a larger held-out split."
    return "; ".join(parts)


def _interval_words(row: Mapping[str, Any]) -> str:
    interval = row.get("interval")
    if interval is None or row.get("delta") is None:
        return ""
    within = interval[0] <= 0 <= interval[1]
    return f", 95% interval {interval[0]:+.4f} to {interval[1]:+.4f}: {'within noise' if within else 'beyond noise'}"


def metric_label(name: str) -> str:
    """A metric's name in words: ``heldout/retrieval/ndcg@10`` -> ``pooled held-out retrieval nDCG@10``."""
    parts = name.split("/")
    measure = parts[-1].replace("ndcg", "nDCG").replace("mrr", "MRR").replace("recall", "R")
    if name.startswith("heldout/retrieval/"):
        return f"pooled held-out retrieval {measure}"
    if name == "heldout/triplet_accuracy":
        return "held-out triplet accuracy (BM25 negatives)"
    if parts[0] == "stsb":
        return f"STSb {parts[1]} Spearman"
    if parts[0] == "nli":
        return f"NLI {parts[1]} triplet accuracy"
    if parts[0] == "retrieval":
        return f"{'/'.join(parts[1:-1])} retrieval {measure}"
    return name


def metric_unit(name: str) -> str:
    """What a metric's rows are: ``pairs``, ``triplets`` or ``queries``."""
    if name.startswith("stsb/"):
        return "pairs"
    return "triplets" if name.endswith("triplet_accuracy") else "queries"


def left_out_text(left_out: Sequence[Mapping[str, Any]]) -> str:
    """The left-out figures with their rows, a dataset's four retrieval figures as one ``retrieval/<dataset>/*``."""
    groups: dict[tuple[str, int], list[str]] = {}
    for item in left_out:
        prefix = item["name"].rsplit("/", 1)[0] if item["name"].count("/") >= 2 else item["name"]
        groups.setdefault((prefix, item["rows"]), []).append(item["name"])
    return ", ".join(
        f"`{names[0]}` ({rows})" if len(names) == 1 else f"`{prefix}/*` ({rows})" for (prefix, rows), names in groups.items()
    )


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the key figures, a verdict line and a table of model, baseline and delta per metric."""
    summary = report["summary"]
    lines = [
        "# Evaluation report",
        "",
        f"- model: `{report['model']['path']}`",
        f"- baseline: `{report['baseline']['path']}` ({report['baseline']['source']})",
        f"- figures that matter: {key_figures(report)}",
        f"- verdict: **{summary['verdict']}** (a drop of more than {summary['tolerance']} in any metric counts as worse;"
        " a change whose 95% paired interval holds zero counts as neither)",
        "",
        "| metric | rows | model | baseline | delta | 95% interval of delta |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in report["metrics"]:
        interval = row.get("interval")
        lines.append(
            f"| {row['name']} | {row['rows'] or '?'} | {_number(row['model'])} | {_number(row['baseline'])}"
            f" | {_number(row['delta'], signed=True)} | {f'{interval[0]:+.4f} to {interval[1]:+.4f}' if interval else ''} |"
        )
    if summary["regressed"]:
        lines += ["", "Regressed beyond tolerance: " + ", ".join(f"`{name}`" for name in summary["regressed"])]
    if report.get("left_out"):
        lines += ["", f"Left out, resting on fewer than {summary.get('min_rows', 1):,} rows: {left_out_text(report['left_out'])}."]
    benchmarks = report["benchmarks"]
    lines += ["", "## Data", ""]
    for item in benchmarks["stsb"]:
        lines.append(f"- STSb `{item['name']}`: {item['rows_scored']} of {item['rows_read']} rows scored, dropped {item['dropped'] or 'none'}")
    for item in benchmarks["nli"]:
        lines.append(
            f"- NLI `{item['name']}` ({item['format']}): {item['triplets']} triplets from {item['pairs']} labelled pairs"
            f" ({item['rows_read']} rows read), dropped {item['dropped'] or 'none'}"
        )
    heldout = benchmarks.get("heldout")
    if heldout:
        used = ", ".join(f"{d['name']} {d['rows_used']}" for d in heldout["datasets"]) or "none"
        lines.append(
            f"- held-out rows (never trained on), pooled: {used}; {heldout['queries']:,} queries over"
            f" {heldout['documents']:,} documents ({heldout['distractors']:,} of them distractors from the corpus's"
            f" training rows); {heldout['triplets']:,} triplets with a BM25-mined negative,"
            f" dropped {heldout['triplets_dropped'] or 'none'}"
        )
    return "\n".join(lines) + "\n"


def metrics_plot(report: Mapping[str, Any]) -> bytes:
    """PNG bytes of horizontal bars per metric, model vs baseline."""
    plt = pyplot()
    rows = [r for r in report["metrics"] if r["model"] is not None and not math.isnan(r["model"])]
    height = max(2.5, 0.45 * len(rows) + 1.2)
    figure, axes = plt.subplots(figsize=(9, height))
    positions = list(range(len(rows)))
    bar = 0.4
    model_values = [r["model"] for r in rows]
    baseline_values = [r["baseline"] if r["baseline"] is not None else 0.0 for r in rows]
    axes.barh([p - bar / 2 for p in positions], model_values, height=bar, label="model", color="#1f77b4")
    axes.barh([p + bar / 2 for p in positions], baseline_values, height=bar, label="baseline", color="#bbbbbb")
    for position, row in zip(positions, rows):
        if row["delta"] is not None:
            colour = "#2ca02c" if row["delta"] >= 0 else "#d62728"
            axes.text(max(row["model"], row["baseline"] or 0.0) + 0.01, position, f"{row['delta']:+.3f}", va="center", color=colour, fontsize=8)
    axes.set_yticks(positions, [r["name"] for r in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(min(0.0, *model_values, *baseline_values) if rows else 0.0, 1.12)
    axes.set_xlabel("score (higher is better); label: model - baseline")
    axes.set_title(f"model vs baseline: {report['summary']['verdict']}")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.tight_layout()
    data = png_bytes(figure)
    plt.close(figure)
    return data


def heatmap_plot(report: Mapping[str, Any]) -> bytes:
    """PNG bytes of the cosine-similarity matrices (anchors x positives), model and baseline."""
    plt = pyplot()
    heat = report["heatmap"]
    n = len(heat["anchors"])
    cell = 0.5
    figure, panels = plt.subplots(
        1, 2, figsize=(2 * max(3.0, cell * n) + 5.5, max(3.0, cell * n) + 4.0), sharey=True, layout="constrained"
    )
    image = None
    for axes, key in zip(panels, ("model", "baseline")):
        matrix = heat[key] if n else [[0.0]]
        image = axes.imshow(matrix, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        axes.set_title(key + ("" if n else " (no pairs)"))
        if not n:
            continue
        axes.set_xticks(range(n), [_label(text) for text in heat["positives"]], fontsize=7, rotation=60, ha="right")
        for i in range(n):
            for j in range(n):
                value = matrix[i][j]
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white" if abs(value) > 0.6 else "black")
    if n:
        panels[0].set_yticks(range(n), [_label(text) for text in heat["anchors"]], fontsize=7)
        panels[0].set_ylabel("anchor")
        for axes in panels:
            axes.set_xlabel("positive")
    figure.suptitle(f"cosine similarity, {heat['title'] or 'no pairs'} (diagonal: true pairs)", fontsize=10)
    figure.colorbar(image, ax=list(panels), shrink=0.8)
    data = png_bytes(figure)
    plt.close(figure)
    return data


def _label(text: str) -> str:
    return text if len(text) <= _HEATMAP_LABEL_CHARS else text[: _HEATMAP_LABEL_CHARS - 1] + "…"


def write_report_files(report: Mapping[str, Any], out_dir: Path) -> None:
    """Write ``report.md``, ``metrics.png`` and ``heatmap.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / MARKDOWN_NAME, report_markdown(report).encode("utf-8"))
    atomic_write_bytes(out_dir / METRICS_PLOT_NAME, metrics_plot(report))
    atomic_write_bytes(out_dir / HEATMAP_PLOT_NAME, heatmap_plot(report))


def write_timings(path: Path, timings: Mapping[str, float]) -> None:
    """Write wall-clock seconds per step; kept out of ``report.json`` because they vary."""
    atomic_write_json(path, {"seconds": {step: round(value, 3) for step, value in timings.items()}})


def write_report_json(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report.json``: the last file, its presence meaning the report is complete."""
    atomic_write_json(path, report)
