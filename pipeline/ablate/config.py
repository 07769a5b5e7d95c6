"""What an ablation trains and how it judges: :class:`AblationConfig`, saved in ``report.json``.

In: option values. Out: a frozen, validated config. The variants themselves (what
each adds to the one before) are fixed in :mod:`pipeline.ablate.plan`; this config
chooses which of them run, the seeds, the training budget they all share and the
benchmarks they are scored on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.ablate.plan import VARIANT_NAMES


@dataclass(frozen=True)
class AblationConfig:
    """The variants, seeds, shared training budget and benchmarks of an ablation.

    Attributes:
        variants: the variants to train (``naive``, ``clean``, ``mined-naive``,
            ``mined-percpos``, ``weighted``, ``filtered``; docs/ablation.md).
        seeds: training seeds; every variant trains once per seed (at least 2 for a
            seed spread, 3 or more to trust it).
        model: the start model of every run and the encoder of mining and curation: a
            local sentence-transformers folder; None for the packaged all-MiniLM-L6-v2.
        max_steps: optimizer steps of every run (the default, 40 of 16 rows, fits the
            6 variants x 3 seeds of the real samples in 45 minutes on 2 CPU cores).
        batch_size: rows per batch (each batch from one dataset).
        learning_rate: AdamW's peak learning rate (2e-5, ``pairforge train``'s and the
            1B recipe's: at 5e-5 every variant lost held-out retrieval to the start
            model on the real samples; docs/ablation.md).
        warmup_steps: linear warmup steps.
        max_seq_length: tokens per text; longer texts are cut.
        heldout_fraction: share of each dataset's rows kept apart for evaluation (the
            same rows in every variant: the split is by a hash of the row's id).
        weight_policy: the weight policy of the ``weighted`` variant and after
            (``temperature``, ``uniform`` or ``proportional``).
        weight_alpha: the size exponent of ``temperature`` (0.5: weights grow with the
            square root of a dataset's size).
        stsb: STSb files to score on (original tab-separated distribution).
        nli: further NLI inputs to score triplet accuracy on (the corpus's own held-out
            NLI triplets always are).
        max_heldout_rows: held-out rows read per dataset for the held-out benchmarks.
        max_distractors: corpus texts added as distractors to the pooled held-out
            retrieval task (each costs an encoding per scored model).
        min_rows: a figure resting on fewer rows than this is left out.
        spread: a difference between two variants is real only when it exceeds this
            many times the larger of their seed standard deviations.
        device: ``cpu``, ``cuda``... (default: a GPU when one is visible).
    """

    variants: tuple[str, ...] = field(default=VARIANT_NAMES, metadata={"split": ",", "metavar": "NAME[,NAME...]"})
    seeds: tuple[int, ...] = field(default=(1, 2, 3), metadata={"split": ",", "metavar": "SEED[,SEED...]"})
    model: str | None = None
    max_steps: int = 40
    batch_size: int = 16
    learning_rate: float = field(default=2e-5, metadata={"flag": "--lr"})
    warmup_steps: int = 4
    max_seq_length: int = 128
    heldout_fraction: float = 0.2
    weight_policy: str = "temperature"
    weight_alpha: float = 0.5
    stsb: tuple[str, ...] = ()
    nli: tuple[str, ...] = ()
    max_heldout_rows: int = 2000
    max_distractors: int = 5000
    min_rows: int = 100
    spread: float = 2.0
    device: str | None = None

    def __post_init__(self) -> None:
        variants = (self.variants,) if isinstance(self.variants, str) else tuple(self.variants)
        unknown = [v for v in variants if v not in VARIANT_NAMES]
        if unknown:
            raise ValueError(f"unknown variant(s): {', '.join(unknown)}; choose from {', '.join(VARIANT_NAMES)}")
        if not variants:
            raise ValueError("variants: name at least one")
        # the variants run in the order of the recipe, each once
        object.__setattr__(self, "variants", tuple(v for v in VARIANT_NAMES if v in variants))
        seeds = (self.seeds,) if isinstance(self.seeds, (int, str)) else tuple(self.seeds)
        try:
            seeds = tuple(int(s) for s in seeds)
        except ValueError:
            raise ValueError(f"seeds must be integers, got {', '.join(map(str, seeds))}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: give one or more distinct integers, got {list(seeds)}")
        object.__setattr__(self, "seeds", seeds)
        for name in ("stsb", "nli"):
            object.__setattr__(self, name, tuple(str(p) for p in getattr(self, name)))
        for name in ("max_steps", "batch_size", "max_seq_length", "max_heldout_rows", "max_distractors", "min_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must not be negative, got {self.warmup_steps}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1): the benchmarks are held-out rows; got {self.heldout_fraction}")
        if self.weight_policy not in ("temperature", "uniform", "proportional"):
            raise ValueError(f"weight_policy must be temperature, uniform or proportional, got {self.weight_policy!r}")
        if not 0.0 < self.weight_alpha <= 1.0:
            raise ValueError(f"weight_alpha must be in (0, 1], got {self.weight_alpha}")
        if self.spread <= 0:
            raise ValueError(f"spread must be positive, got {self.spread}")

    def as_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (device left out: it does not change what is compared)."""
        values = asdict(self)
        values.pop("device")
        for name in ("variants", "seeds", "stsb", "nli"):
            values[name] = list(values[name])
        return values
