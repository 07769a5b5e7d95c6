"""Ablation: what each step of the recipe buys in the trained model, on the user's data.

In: raw sources (as ``pairforge run`` takes them) and an
:class:`~pipeline.ablate.config.AblationConfig`. Out: every variant of the recipe
(:mod:`pipeline.ablate.plan`) trained from the same start model, for the same steps,
once per seed, scored on the same benchmarks; a report of mean ± std per variant
that calls a difference real only beyond the seed spread (:mod:`pipeline.ablate.compare`),
with a plot (:mod:`pipeline.ablate.report`). :func:`run_ablation` runs it in this
process; ``pairforge ablate`` runs it as the ``pairforge-ablate`` flow.
"""

from pipeline.ablate.config import AblationConfig
from pipeline.ablate.plan import VARIANT_NAMES, VARIANTS
from pipeline.ablate.run import run_ablation

__all__ = ["VARIANTS", "VARIANT_NAMES", "AblationConfig", "run_ablation"]
