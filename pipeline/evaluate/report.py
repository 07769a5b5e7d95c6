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
from typing import Any, Mapping

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


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: a verdict line and a table of model, baseline and delta per metric."""
    summary = report["summary"]
    lines = [
        "# Evaluation report",
        "",
        f"- model: `{report['model']['path']}`",
        f"- baseline: `{report['baseline']['path']}` ({report['baseline']['source']})",
        f"- verdict: **{summary['verdict']}** (a drop of more than {summary['tolerance']} in any metric counts as worse)",
        "",
        "| metric | model | baseline | delta |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in report["metrics"]:
        lines.append(
            f"| {row['name']} | {_number(row['model'])} | {_number(row['baseline'])} | {_number(row['delta'], signed=True)} |"
        )
    if summary["regressed"]:
        lines += ["", "Regressed beyond tolerance: " + ", ".join(f"`{name}`" for name in summary["regressed"])]
    benchmarks = report["benchmarks"]
    lines += ["", "## Data", ""]
    for item in benchmarks["stsb"]:
        lines.append(f"- STSb `{item['name']}`: {item['rows_scored']} of {item['rows_read']} rows scored, dropped {item['dropped'] or 'none'}")
    for item in benchmarks["nli"]:
        lines.append(
            f"- NLI `{item['name']}` ({item['format']}): {item['triplets']} triplets from {item['pairs']} labelled pairs"
            f" ({item['rows_read']} rows read), dropped {item['dropped'] or 'none'}"
        )
    for item in benchmarks["retrieval"]:
        lines.append(
            f"- retrieval `{item['name']}`: {item['queries']} queries over {item['documents']} held-out positives"
            f" ({item['pairs_used']} of {item['heldout_rows']} held-out rows)"
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
