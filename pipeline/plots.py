"""PNG figures drawn the reproducible way: matplotlib (Agg) in; PNG bytes without date or software metadata out.

In: a matplotlib figure, or score histograms as :func:`pipeline.mining.output.score_histogram`
writes them into manifests. Out: PNG bytes, the same for the same figure and
matplotlib version (:func:`png_bytes`); :func:`score_histograms_plot` draws a panel per
histogram (mining's positive and negative scores and margins; rescoring's), with the
median and the quartiles marked. matplotlib is imported inside the functions.
"""

from __future__ import annotations

import io
from typing import Any, Mapping


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure: Any) -> bytes:
    """The figure as PNG bytes: no Software or date metadata, so the same figure gives the same bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def score_histograms_plot(histograms: Mapping[str, Mapping[str, Any]], title: str) -> bytes:
    """One bar panel per histogram (``{"bins", "counts", "count", "median"...}``), side by side, as PNG bytes."""
    plt = pyplot()
    figure, panels = plt.subplots(1, len(histograms), figsize=(4.2 * len(histograms), 3.4), squeeze=False)
    for axes, (name, histogram) in zip(panels[0], histograms.items()):
        bins, counts = histogram["bins"], histogram["counts"]
        axes.bar(bins[:-1], counts, width=[b - a for a, b in zip(bins, bins[1:])], align="edge", color="#1f77b4")
        for key, style in (("p25", ":"), ("median", "-"), ("p75", ":")):
            if key in histogram:
                axes.axvline(histogram[key], color="#d62728", linestyle=style, linewidth=1)
        median = f", median {histogram['median']:.3f}" if "median" in histogram else ""
        axes.set_title(f"{name} (n={histogram['count']:,}{median})", fontsize=9)
        axes.set_xlim(bins[0], bins[-1])
        axes.tick_params(labelsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    data = png_bytes(figure)
    plt.close(figure)
    return data
