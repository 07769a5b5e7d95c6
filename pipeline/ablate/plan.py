"""The variants of an ablation: each is the one before it plus one step of the recipe.

In: nothing (the recipe is fixed). Out: :data:`VARIANTS`, what each variant's corpus,
mining, weights and curation are, and :data:`STEP_BASE`, the variant each one is
compared with to say what its step buys.

=============== ==================================================================
``naive``       the pairs as a user gets them without pairforge: texts as the source
                gave them, no length filters, no dedup, no mining, weights
                proportional to size (sentence-transformers' default sampler)
``clean``       + normalization, length and pair filters, exact dedup
``mined-naive`` + one hard negative per pair: the top-scoring candidate, no margin
``mined-percpos`` + one hard negative below 95% of the positive's score
                (NV-Retriever's TopK-PercPos, ``relative_margin=0.05``) instead
``weighted``    ``mined-percpos`` with the weight policy of the config (temperature
                0.5 by default: weights grow with the square root of the size)
``filtered``    + the model-based curation: decontamination against the benchmarks,
                the consistency filter (k=2), and the rescoring of mined negatives
                (near-copies of the positive and negatives too close to it dropped)
=============== ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CorpusKind = Literal["naive", "clean"]


@dataclass(frozen=True)
class Variant:
    """One variant of the recipe.

    Attributes:
        name: the variant's name.
        corpus: ``naive`` (the raw-as-given ingest) or ``clean`` (pairforge's ingest).
        mining: ``naive`` (top candidate), ``percpos`` (TopK-PercPos) or None (no mining).
        weighted: the config's weight policy instead of proportional weights.
        curated: the curation steps on.
        adds: what this variant adds to the one it is compared with, in words.
    """

    name: str
    corpus: CorpusKind
    mining: str | None
    weighted: bool
    curated: bool
    adds: str


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("naive", "naive", None, False, False, "the pairs as given: no cleaning, filters, dedup or mining; proportional weights"),
        Variant("clean", "clean", None, False, False, "normalization, length and pair filters, exact dedup"),
        Variant("mined-naive", "clean", "naive", False, False, "a hard negative per pair: the top candidate, no margin"),
        Variant("mined-percpos", "clean", "percpos", False, False, "a hard negative per pair below 95% of the positive's score"),
        Variant("weighted", "clean", "percpos", True, False, "the weight policy instead of proportional weights"),
        Variant("filtered", "clean", "percpos", True, True, "decontamination, consistency filter, rescoring of negatives"),
    )
}  # fmt: skip
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)

# What each variant is compared with to tell what its own step buys.
STEP_BASE: dict[str, str] = {
    "clean": "naive",
    "mined-naive": "clean",
    "mined-percpos": "clean",
    "weighted": "mined-percpos",
    "filtered": "weighted",
}

# Mining options of each mining choice (MiningConfig fields), both spelled out so that
# neither follows a change of MiningConfig's defaults.
MINING_OPTIONS: dict[str, dict[str, Any]] = {
    "naive": {"relative_margin": None, "num_negatives": 1, "sampling_strategy": "top"},
    "percpos": {"relative_margin": 0.05, "num_negatives": 1, "sampling_strategy": "top"},
}


def step_base(variant: str, variants: tuple[str, ...]) -> str | None:
    """The variant ``variant`` is compared with: its step's base, else the nearest earlier one that ran."""
    base = STEP_BASE.get(variant)
    while base is not None and base not in variants:
        base = STEP_BASE.get(base)
    return base
