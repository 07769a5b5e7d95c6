"""The ablation report: per-seed scores in; ``report.json``, ``report.md`` and ``ablation.png`` out.

In: each variant's per-seed metrics, the start model's, the datasets and data configs
each variant trained on. Out, in the ablation folder: ``report.json`` (deterministic:
timings go to ``timings.json``), ``report.md`` (the table of mean ± std per variant,
what each step buys, each variant against the start model, the verdict of the full
recipe against ``naive``) and
``ablation.png`` (a panel per headline metric, a bar per variant with its seed spread
as error bar, the start model as a dashed line). ``report.json`` is written last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from pipeline.ablate.compare import compare, summarize
from pipeline.ablate.config import AblationConfig
from pipeline.ablate.plan import VARIANTS, step_base
from pipeline.corpus.files import atomic_write_bytes, atomic_write_json, config_hash
from pipeline.evaluate.heldout import POOLED_RETRIEVAL, POOLED_TRIPLETS
from pipeline.evaluate.report import metric_label, metric_unit
from pipeline.plots import png_bytes, pyplot

REPORT_NAME = "report.json"
MARKDOWN_NAME = "report.md"
PLOT_NAME = "ablation.png"
TIMINGS_NAME = "timings.json"
REFERENCE = "naive"


def headline_metrics(names: list[str]) -> list[str]:
    """The metrics the table and plot show: STSb Spearman, NLI triplet accuracy, pooled held-out retrieval
    nDCG@10 and held-out triplet accuracy."""
    stsb = [n for n in names if n.startswith("stsb/") and n.endswith("/spearman_cosine")]
    nli = [n for n in names if n.startswith("nli/") and n.endswith("/triplet_accuracy")]
    heldout = [n for n in (f"{POOLED_RETRIEVAL}/ndcg@10", POOLED_TRIPLETS) if n in names]
    return stsb + nli + heldout


def _verdict(summary: Mapping[str, Any], metrics: list[str], recipe: str, spread: float) -> dict[str, Any]:
    """The full recipe (the last variant run) against ``naive`` on each headline metric, in words."""
    if recipe == REFERENCE or REFERENCE not in summary:
        return {"recipe": recipe, "against": None, "metrics": {}, "beats_naive": None,
                "text": "The full recipe was not compared with `naive` (run both variants for a verdict)."}  # fmt: skip
    results = {m: compare(summary[recipe].get(m, {}), summary[REFERENCE].get(m, {}), spread) for m in metrics}
    wins = [m for m, r in results.items() if r["direction"] == "better"]
    losses = [m for m, r in results.items() if r["direction"] == "worse"]
    noise = [m for m, r in results.items() if r["direction"] == "within noise"]
    beats = bool(metrics) and len(wins) == len(metrics)
    sentences = []
    if beats:
        sentences.append(f"`{recipe}` beats `naive` beyond the seed spread on every headline metric.")
    else:
        sentences.append(f"`{recipe}` does not beat `naive` beyond the seed spread on every headline metric.")
    for label, group in (("better", wins), ("worse", losses), ("within noise", noise)):
        if group:
            sentences.append(f"{label.capitalize()}: " + ", ".join(
                f"{metric_label(m)} ({results[m]['delta']:+.4f}, spread threshold {_num(results[m]['threshold'])})" for m in group
            ) + ".")  # fmt: skip
    return {"recipe": recipe, "against": REFERENCE, "metrics": results, "beats_naive": beats, "text": " ".join(sentences)}


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def build_report(
    config: AblationConfig,
    datasets: Mapping[str, list[str]],
    data_configs: Mapping[str, list[dict[str, Any]]],
    scores: Mapping[str, Mapping[int, Mapping[str, Any]]],
    base: Mapping[str, Any],
) -> dict[str, Any]:
    """The report dict (see the module docstring); pure, for the tests."""
    table = {v: {s: dict(scores[v][s]["metrics"]) for s in scores[v]} for v in scores}
    summary = summarize(table)
    names = list(dict.fromkeys(n for v in table.values() for metrics in v.values() for n in metrics))
    metrics = headline_metrics(names)
    rows: dict[str, Any] = {}
    for variant in scores.values():
        for run in variant.values():
            rows.update({k: v for k, v in (run.get("rows") or {}).items() if v is not None})
    variants = [v for v in config.variants if v in scores]
    steps = []
    for variant in variants:
        against = step_base(variant, tuple(variants))
        if against is None:
            continue
        for metric in metrics:
            result = compare(summary[variant].get(metric, {}), summary[against].get(metric, {}), config.spread)
            steps.append({"variant": variant, "compared_with": against, "metric": metric} | result)
    # The start model is one fixed model (no seed spread): a variant differs from it
    # beyond noise when the difference exceeds `spread` times the variant's own spread.
    start = {m: {"mean": base["metrics"].get(m), "std": 0.0} for m in metrics}
    against_start = {v: {m: compare(summary[v].get(m, {}), start[m], config.spread) for m in metrics} for v in variants}
    resolved = config.as_dict()
    return {
        "config": resolved,
        "config_hash": config_hash(resolved),
        "rule": f"a difference is real when it exceeds {config.spread:g} x the larger seed standard deviation (ddof=1)",
        "metrics": metrics,
        "rows": {m: rows.get(m) for m in names},
        "variants": [
            {
                "name": v, "adds": VARIANTS[v].adds, "corpus": VARIANTS[v].corpus, "mining": VARIANTS[v].mining,
                "weighted": VARIANTS[v].weighted, "curated": VARIANTS[v].curated, "compared_with": step_base(v, tuple(variants)),
                "datasets": list(datasets.get(v, [])), "data_config": list(data_configs.get(v, [])),
            }
            for v in variants
        ],  # fmt: skip
        "base_model": {"model": base.get("model"), "fingerprint": base.get("model_fingerprint"), "metrics": dict(base["metrics"])},
        "summary": summary,
        "steps": steps,
        "against_start": against_start,
        "verdict": _verdict(summary, metrics, variants[-1], config.spread) if variants else {},
    }


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the table, what each step buys, the verdict."""
    config, metrics, summary = report["config"], report["metrics"], report["summary"]
    model = config["model"] or "packaged all-MiniLM-L6-v2"
    lines = [
        "# Ablation report",
        "",
        f"Start model {model}; {config['max_steps']} steps of {config['batch_size']} rows, lr {config['learning_rate']:g},"
        f" seeds {', '.join(map(str, config['seeds']))}; mean ± std over seeds. {report['rule'].capitalize()}.",
        "",
        report["verdict"].get("text", ""),
        "",
        "| variant | adds | " + " | ".join(f"{metric_label(m)} ({report['rows'].get(m) or 0:,} {metric_unit(m)})" for m in metrics) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in metrics) + " |",
        "| start model | (not trained) | " + " | ".join(_num(report["base_model"]["metrics"].get(m)) for m in metrics) + " |",
    ]
    for variant in report["variants"]:
        cells = []
        for m in metrics:
            entry = summary[variant["name"]].get(m, {})
            std = entry.get("std")
            cells.append(f"{_num(entry.get('mean'))} ± {_num(std)}" if std is not None else _num(entry.get("mean")))
        lines.append(f"| `{variant['name']}` | {variant['adds']} | " + " | ".join(cells) + " |")
    if report["steps"]:
        lines += ["", "## What each step buys", "", "| variant | compared with | metric | delta | threshold | |",
                  "| --- | --- | --- | ---: | ---: | --- |"]  # fmt: skip
        for step in report["steps"]:
            mark = f"**{step['direction']}**" if step["real"] else step["direction"]
            lines.append(
                f"| `{step['variant']}` | `{step['compared_with']}` | {metric_label(step['metric'])} |"
                f" {_num(step['delta'], signed=True)} | {_num(step['threshold'])} | {mark} |"
            )
    if report.get("against_start"):
        lines += ["", "## Against the start model", "",
                  "Each variant's mean minus the start model's figure; real when beyond the spread times the variant's own seed spread.", "",
                  "| variant | " + " | ".join(metric_label(m) for m in metrics) + " |",
                  "| --- | " + " | ".join("---:" for _ in metrics) + " |"]  # fmt: skip
        for variant in report["variants"]:
            cells = []
            for m in metrics:
                result = report["against_start"][variant["name"]][m]
                mark = f"**{result['direction']}**" if result["real"] else result["direction"]
                cells.append(f"{_num(result['delta'], signed=True)} {mark}")
            lines.append(f"| `{variant['name']}` | " + " | ".join(cells) + " |")
    lines += ["", "## Training data", ""]
    for variant in report["variants"]:
        mix = ", ".join(f"{e['name']} {e['lines']} rows weight {e['weight']}" for e in variant["data_config"])
        lines.append(f"- `{variant['name']}`: {mix or 'none'}")
    return "\n".join(lines) + "\n"


def ablation_plot(report: Mapping[str, Any]) -> bytes:
    """PNG bytes: a panel per headline metric, a bar per variant (mean, seed std as error bar), the start model dashed."""
    plt = pyplot()
    metrics = report["metrics"] or []
    variants = [v["name"] for v in report["variants"]]
    figure, panels = plt.subplots(1, max(1, len(metrics)), figsize=(4.4 * max(1, len(metrics)), 0.45 * len(variants) + 1.8), squeeze=False)
    for axes, metric in zip(panels[0], metrics):
        entries = [report["summary"][v].get(metric, {}) for v in variants]
        means = [e.get("mean") or 0.0 for e in entries]
        errors = [e.get("std") or 0.0 for e in entries]
        axes.barh(range(len(variants)), means, xerr=errors, color="#4c72b0", capsize=3)
        base = report["base_model"]["metrics"].get(metric)
        if base is not None:
            axes.axvline(base, color="#dd8452", linestyle="--", label="start model")
            axes.legend(loc="lower right", fontsize=7)
        low = min([m - e for m, e in zip(means, errors)] + ([base] if base is not None else []))
        high = max([m + e for m, e in zip(means, errors)] + ([base] if base is not None else []))
        pad = max((high - low) * 0.15, 0.002)
        axes.set_xlim(low - pad, high + pad)
        axes.set_yticks(range(len(variants)), variants, fontsize=8)
        axes.invert_yaxis()
        axes.set_title(metric_label(metric), fontsize=9)
    figure.suptitle(f"ablation: mean ± std over {len(report['config']['seeds'])} seeds", fontsize=10)
    figure.tight_layout()
    data = png_bytes(figure)
    plt.close(figure)
    return data


def write_ablation_report(
    paths: Any,
    config: AblationConfig,
    datasets: Mapping[str, list[str]],
    scores: Mapping[str, Mapping[int, Mapping[str, Any]]],
    base: Mapping[str, Any],
    trained: Mapping[str, Mapping[int, Mapping[str, Any]]],
) -> dict[str, Any]:
    """Write ``report.md``, ``ablation.png``, ``timings.json`` and, last, ``report.json``; the report."""
    data_configs = {
        v: json.loads(paths.data_config(v).read_text(encoding="utf-8")) for v in scores if paths.data_config(v).is_file()
    }
    report = build_report(config, datasets, data_configs, scores, base)
    out = Path(paths.out)
    atomic_write_bytes(out / MARKDOWN_NAME, report_markdown(report).encode("utf-8"))
    atomic_write_bytes(out / PLOT_NAME, ablation_plot(report))
    timings = {
        v: {str(s): {k: run.get(k) for k in ("train_seconds", "steps", "loss_first", "loss_last", "skipped")} for s, run in seeds.items()}
        for v, seeds in trained.items()
    }
    atomic_write_json(out / TIMINGS_NAME, timings)
    atomic_write_json(out / REPORT_NAME, report)
    return report
