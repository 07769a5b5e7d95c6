"""Weight policies: dataset sizes in; integer sampling weights out.

In: each dataset's training rows and a :class:`WeightPolicy`. Out: an integer weight
per dataset (and the raw, unrounded weight), for ``data_config.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

PolicyKind = Literal["proportional", "temperature", "uniform", "explicit"]
POLICY_KINDS: tuple[str, ...] = ("proportional", "temperature", "uniform", "explicit")


@dataclass(frozen=True)
class WeightPolicy:
    """How dataset sizes become integer sampling weights.

    The raw weight of a dataset is ``min(lines, size_cap) ** alpha`` (``alpha`` = 1 for
    ``proportional``, 0 for ``uniform``, the given value for ``temperature``, i.e.
    ``alpha = 1 / T``); raw weights are scaled so the largest becomes ``scale``, rounded,
    then clipped to ``[min_weight, max_weight]``. ``explicit`` takes ``weights`` as given
    (``default_weight`` for datasets it does not name; without one they are an error).

    Attributes:
        kind: ``proportional``, ``temperature``, ``uniform`` or ``explicit``.
        alpha: the size exponent of ``temperature`` (0 < alpha <= 1 flattens the mix).
        size_cap: T5's artificial dataset-size limit K: sizes above it count as K.
        scale: the integer weight of the heaviest dataset before clipping.
        min_weight: the least weight a dataset gets (at least 1).
        max_weight: the most weight a dataset gets, or None for no cap.
        weights: dataset name -> weight for ``explicit``.
        default_weight: the weight of a dataset ``explicit`` does not name, or None.
        exclude: dataset names or shell patterns (``reddit/*``) left out of the config.
        prefer_mined: leave out a pair dataset whose mined version (the same pairs with
            hard negatives, ``pairforge mine``) is in the corpus, so its pairs are not
            sampled twice.
        prefer_curated: leave out a dataset whose curated version (the rows a curation
            step kept, ``pairforge consistency-filter`` and the others) is in the corpus.
    """

    kind: PolicyKind = field(default="proportional", metadata={"flag": "--policy"})
    alpha: float = 1.0
    size_cap: int | None = None
    scale: int = 1000
    min_weight: int = 1
    max_weight: int | None = None
    weights: Mapping[str, int] = field(default_factory=dict, metadata={"flag": "--weight", "pairs": True})
    default_weight: int | None = None
    exclude: tuple[str, ...] = field(default=(), metadata={"split": ",", "metavar": "PATTERN"})
    prefer_mined: bool = field(default=True, metadata={"flag": "--keep-unmined"})
    prefer_curated: bool = field(default=True, metadata={"flag": "--keep-uncurated"})

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"unknown weight policy {self.kind!r}; choose one of {', '.join(POLICY_KINDS)}")
        if self.kind == "temperature" and not 0 < self.alpha <= 1:
            raise ValueError(f"temperature alpha must be in (0, 1], got {self.alpha}")
        if self.scale < 1 or self.min_weight < 1:
            raise ValueError(f"scale and min_weight must be at least 1, got {self.scale} and {self.min_weight}")
        if self.max_weight is not None and self.max_weight < self.min_weight:
            raise ValueError(f"max_weight {self.max_weight} is below min_weight {self.min_weight}")
        if self.size_cap is not None and self.size_cap < 1:
            raise ValueError(f"size_cap must be at least 1, got {self.size_cap}")
        for name, weight in self.weights.items():
            if not is_positive_int(weight):
                raise ValueError(f"weight of {name!r} must be a positive integer, got {weight!r}")
        if self.default_weight is not None and not is_positive_int(self.default_weight):
            raise ValueError(f"default_weight must be a positive integer, got {self.default_weight!r}")
        if self.weights and self.kind != "explicit":
            raise ValueError("per-dataset weights are only used by the explicit policy")

    def as_dict(self) -> dict[str, Any]:
        """The policy as plain JSON values (weights sorted by name)."""
        value = asdict(self)
        value["weights"] = {name: int(self.weights[name]) for name in sorted(self.weights)}
        value["exclude"] = list(self.exclude)
        return value

    def exponent(self) -> float:
        """The size exponent this policy applies."""
        return {"proportional": 1.0, "uniform": 0.0, "temperature": self.alpha}.get(self.kind, 1.0)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def compute_weights(sizes: Mapping[str, int], policy: WeightPolicy) -> tuple[dict[str, int], dict[str, float]]:
    """Integer weights and raw (unrounded) weights for datasets of the given sizes.

    Args:
        sizes: dataset name -> training rows (all positive).
        policy: the weight policy.

    Returns:
        ``(weights, raw_weights)``, both keyed like ``sizes``.

    Raises:
        ValueError: ``explicit`` without a weight for some dataset and no default.
    """
    if policy.kind == "explicit":
        unknown = sorted(set(policy.weights) - set(sizes))
        if unknown:
            raise ValueError(f"weights given for datasets not in the corpus: {', '.join(unknown)}")
        missing = sorted(n for n in sizes if n not in policy.weights)
        if missing and policy.default_weight is None:
            raise ValueError(f"explicit policy has no weight for: {', '.join(missing)} (give --default-weight)")
        raw = {n: float(policy.weights.get(n, policy.default_weight or 0)) for n in sizes}
        return {n: int(w) for n, w in raw.items()}, raw
    exponent = policy.exponent()
    raw = {}
    for name, lines in sizes.items():
        capped = min(lines, policy.size_cap) if policy.size_cap else lines
        raw[name] = float(capped) ** exponent
    top = max(raw.values())
    weights = {}
    for name, value in raw.items():
        weight = max(policy.min_weight, int(math.floor(policy.scale * value / top + 0.5)))
        weights[name] = min(weight, policy.max_weight) if policy.max_weight else weight
    return weights, raw
