"""Curation steps that judge pairs, each a dataset folder in and a dataset folder out.

In: a complete dataset folder (its training shards; ``heldout/`` is never judged and
stays in the source dataset), a step's frozen config, and for the model steps a model
folder and the embedding cache mining uses. Out: a dataset folder of the rows that
pass, in input order and with the input's columns; ``quarantine.jsonl`` naming every
dropped row, its reason and the step's evidence; ``manifest.json`` written last with
``stage`` = the step, ``rows_read == rows_kept + sum(dropped)``, the step's section and
``curated_from``. A step whose manifest matches its inputs and config is skipped.

The steps (one module each, all on :mod:`pipeline.curate.step`):

* :mod:`.decontaminate` (``decontaminate``): rows holding an evaluation text -> ``contaminated``;
* :mod:`.consistency` (``consistency``): pairs whose positive does not rank in the top
  ``k`` for its anchor -> ``inconsistent``;
* :mod:`.semantic_dedup` (``semantic_dedup``): pairs whose anchor is within ``eps`` of a
  kept one -> ``semantic_duplicate``;
* :mod:`.rescore` (``rescore``): rows whose negative is a near-copy of the positive ->
  ``near_duplicate_of_positive``, or scores too close to it by a second model ->
  ``likely_false_negative``.

They compose in any order; :data:`STEPS` lists them in the order the pipeline runs
them (decontaminate, consistency, semantic dedup before mining; rescore after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pipeline.curate.consistency import ConsistencyConfig, filter_consistent
from pipeline.curate.decontaminate import DecontaminationConfig, decontaminate
from pipeline.curate.rescore import RescoreConfig, rescore_negatives
from pipeline.curate.semantic_dedup import SemanticDedupConfig, deduplicate_semantically


@dataclass(frozen=True)
class CurationStep:
    """A curation step as the command line and the flows see it.

    Attributes:
        name: the step's name (a parameter key of the pipeline's ``curation``, the manifest's stage).
        command: its ``pairforge`` subcommand.
        config: its config class.
        run: its library function ``(dataset_dir, out_dir, config, **options) -> manifest``.
        suffix: what its output folder's name adds to the input's.
        uses_model: whether it takes ``cache_dir``, ``device`` and ``encoder``.
        after_mining: whether the pipeline runs it on mined datasets (else before mining).
        help: one line for ``pairforge --help``.
    """

    name: str
    command: str
    config: type
    run: Callable[..., dict[str, Any]]
    suffix: str
    uses_model: bool
    after_mining: bool
    help: str


STEPS: dict[str, CurationStep] = {
    step.name: step
    for step in (
        CurationStep("decontaminate", "decontaminate", DecontaminationConfig, decontaminate, "-decontaminated", False, False,
                     "drop training rows holding an evaluation text (STSb, NLI, BEIR, held-out): exact or n-gram"),
        CurationStep("consistency", "consistency-filter", ConsistencyConfig, filter_consistent, "-consistent", True, False,
                     "keep a pair only when its positive ranks in the top k for its anchor (E5 / contrastors)"),
        CurationStep("semantic_dedup", "semantic-dedup", SemanticDedupConfig, deduplicate_semantically, "-semdedup", True, False,
                     "drop pairs whose anchor is within eps cosine of a kept one in its k-means cluster (SemDeDup)"),
        CurationStep("rescore", "rescore", RescoreConfig, rescore_negatives, "-rescored", True, True,
                     "drop negatives a second model (CrossEncoder or bi-encoder) or the text finds too close to the positive"),
    )
}  # fmt: skip

__all__ = [
    "STEPS", "ConsistencyConfig", "CurationStep", "DecontaminationConfig", "RescoreConfig", "SemanticDedupConfig",
    "decontaminate", "deduplicate_semantically", "filter_consistent", "rescore_negatives",
]  # fmt: skip
