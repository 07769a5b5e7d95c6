"""Evaluation: a trained model and its baseline in; a report that says whether it got better.

* :mod:`.config`: :class:`~pipeline.evaluate.config.EvalConfig`;
* :mod:`.benchmarks`: STSb, NLI (the ``nli`` source's reader) and held-out corpus readers;
* :mod:`.heldout`: a corpus's held-out rows pooled into one retrieval task (the corpus's
  texts as distractors) and one triplet task (negatives mined by :mod:`.bm25`);
* :mod:`.metrics`: the metrics, through sentence-transformers' evaluators or their
  definitions on vectors embedded once, and paired bootstrap intervals;
* :mod:`.task`: :func:`~pipeline.evaluate.task.evaluate_model`: score both models, compare, write;
* :mod:`.report`: report.md and the plots.
"""

from pipeline.evaluate.config import EvalConfig
from pipeline.evaluate.task import evaluate_model

__all__ = ["EvalConfig", "evaluate_model"]
