"""The seed-spread rule: per-seed metric tables in; means, spreads and which differences are real out.

In: ``{variant: {seed: {metric: value}}}``. Out: ``{variant: {metric: {mean, std,
n, values}}}`` (:func:`summarize`) and, for two variants, whether a difference is
larger than the noise between seeds (:func:`compare`).

The rule: the difference of two variants' means is **real** only when its size
exceeds ``spread`` times the larger of their two seed standard deviations (sample
standard deviation, ``ddof=1``). With one seed there is no spread and no difference
is called real. When both spreads are zero (the runs do not depend on the seed), any
non-zero difference is real.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

MetricTable = Mapping[str, Mapping[int, Mapping[str, float | None]]]


def _std(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(table: MetricTable, digits: int = 6) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean, sample std and the per-seed values of every metric of every variant.

    A metric a seed has no value for (None) is left out of that metric's figures; ``n``
    says how many seeds it rests on.
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, seeds in table.items():
        names = list(dict.fromkeys(name for metrics in seeds.values() for name in metrics))
        summary[variant] = {}
        for name in names:
            values = [float(seeds[s][name]) for s in sorted(seeds) if seeds[s].get(name) is not None]
            std = _std(values)
            summary[variant][name] = {
                "mean": round(sum(values) / len(values), digits) if values else None,
                "std": None if std is None else round(std, digits),
                "n": len(values),
                "values": [round(v, digits) for v in values],
            }
    return summary


def compare(ours: Mapping[str, Any], theirs: Mapping[str, Any], spread: float) -> dict[str, Any]:
    """Whether ``ours`` differs from ``theirs`` beyond the seed spread (both :func:`summarize` entries of one metric).

    Returns:
        ``{delta, threshold, real, direction}``: ``delta`` = our mean - theirs;
        ``threshold`` = ``spread`` x the larger std (None with fewer than 2 seeds);
        ``real`` whether ``|delta| > threshold``; ``direction`` is ``better``, ``worse``
        (real differences) or ``within noise``.
    """
    if ours.get("mean") is None or theirs.get("mean") is None:
        return {"delta": None, "threshold": None, "real": False, "direction": "n/a"}
    delta = ours["mean"] - theirs["mean"]
    stds = [ours.get("std"), theirs.get("std")]
    if any(s is None for s in stds):
        threshold, real = None, False
    else:
        threshold = spread * max(stds)  # type: ignore[type-var]
        real = abs(delta) > threshold if threshold > 0 else delta != 0
    direction = ("better" if delta > 0 else "worse") if real else "within noise"
    return {
        "delta": round(delta, 6),
        "threshold": None if threshold is None else round(threshold, 6),
        "real": real,
        "direction": direction,
    }
