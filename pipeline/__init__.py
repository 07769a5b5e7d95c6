"""pairforge's library: raw text dumps in, sentence-pair Parquet corpora, mined
negatives, a weighted data_config.json, a trained and evaluated model out.

What a library user calls, one function per stage (each documented with its
arguments, what it returns and an example)::

    from pipeline import ingest_source, mine_negatives, write_data_config, train_model, evaluate_model

    ingest_source("nli", ["snli_1.0_dev.jsonl"], "corpus/")
    mine_negatives("corpus/nli-pairs", "corpus/nli-pairs-mined", MiningConfig())
    write_data_config("corpus/", "corpus/data_config.json", WeightPolicy())
    train_model("corpus/", "corpus/data_config.json", "model/", TrainConfig(max_steps=100))
    evaluate_model("model/", None, EvalConfig(corpus="corpus/"), "eval/")

The stage functions take no lock on the folders they write: the ``pairforge``
commands and the flows hold them (one writer per output folder,
:mod:`pipeline.corpus.locks`). A library caller that other processes may race wraps
its call in ``with writer_lock(out_dir):``.

The stages are subpackages (``ingest``, ``mining``, ``sampling``, ``train``,
``evaluate``) over a shared on-disk contract (``corpus``), file readers (``io``) and
embeddings (``embed``). Plain Python: nothing in this package imports Prefect or
``flows/`` (the orchestration wires the library, never the other way round). The
names below are imported when first used, so ``import pipeline`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_FACE = {
    "ingest_source": "pipeline.ingest.plan",
    "IngestConfig": "pipeline.ingest.config",
    "mine_negatives": "pipeline.mining.job",
    "MiningConfig": "pipeline.mining.config",
    "write_data_config": "pipeline.sampling.data_config",
    "WeightPolicy": "pipeline.sampling.policies",
    "train_model": "pipeline.train.task",
    "TrainConfig": "pipeline.train.config",
    "evaluate_model": "pipeline.evaluate.task",
    "EvalConfig": "pipeline.evaluate.config",
    "Embedder": "pipeline.embed.embedder",
}

__all__ = sorted(_FACE)


def __getattr__(name: str) -> Any:
    if name in _FACE:
        value = getattr(importlib.import_module(_FACE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACE))
