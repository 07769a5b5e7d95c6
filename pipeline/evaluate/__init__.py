"""Evaluation: a trained model and its baseline in; a report that says whether it got better.

* :mod:`.config`: :class:`~pipeline.evaluate.config.EvalConfig`;
* :mod:`.benchmarks`: STSb, NLI (the ``nli`` source's reader) and held-out corpus readers;
* :mod:`.metrics`: the metrics, through sentence-transformers' evaluators;
* :mod:`.task`: :func:`~pipeline.evaluate.task.evaluate_model`: score both models, compare, write;
* :mod:`.report`: report.md and the plots.
"""

from pipeline.evaluate.config import EvalConfig
from pipeline.evaluate.task import evaluate_model

__all__ = ["EvalConfig", "evaluate_model"]
