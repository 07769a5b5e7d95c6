"""The tiny training corpus shared by the training tests.

Fixtures:
    corpus: ``(corpus_dir, data_config.json)``: ``animals/pairs`` (32 pairs, one held
        out) and ``animals/triplets`` (16 triplets), weights proportional to size.
    real_corpus: ``(corpus_dir, data_config.json)`` built by ingest from the real samples
        (SNLI SentEval dev, the Kaggle Quora sample, S2ORC) in shards of 1,000 rows:
        ``nli-pairs``, ``nli-triplets``, ``qqp-duplicates``, ``qqp-triplets``,
        ``s2orc-title-abstract`` (a few hundred to ~3,500 training rows each, repeated
        texts in all), explicit weights 5, 3, 4, 1, 2; ``s2orc-citations`` (no training
        rows) is in the corpus but not in the config.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_dataset

WORDS = "cat dog bird fish horse cow sheep goat lion tiger bear wolf fox deer mouse rat".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from pipeline.sampling.data_config import write_data_config
    from pipeline.sampling.policies import WeightPolicy

    root = tmp_path_factory.mktemp("train-corpus")
    corpus_dir = root / "corpus"
    write_dataset(
        corpus_dir / "animals" / "pairs",
        [(f"the {w} number {i}", f"a {w} {i}") for i, w in enumerate(WORDS * 2)],
        heldout=[("HELDOUT anchor", "HELDOUT positive")],
        rows_per_shard=10,
    )
    write_dataset(
        corpus_dir / "animals" / "triplets",
        [(f"where is the {w}", f"the {w} is here", f"the {WORDS[(i + 5) % 16]} is gone") for i, w in enumerate(WORDS)],
    )
    config = root / "data_config.json"
    write_data_config(corpus_dir, config, WeightPolicy(kind="proportional", scale=2))
    return corpus_dir, config


REAL_WEIGHTS = {"nli-pairs": 5, "nli-triplets": 3, "qqp-duplicates": 4, "qqp-triplets": 1, "s2orc-title-abstract": 2}


@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    from pipeline import IngestConfig, ingest_source
    from pipeline.sampling.data_config import write_data_config
    from pipeline.sampling.policies import WeightPolicy

    root = tmp_path_factory.mktemp("real-corpus")
    corpus_dir = root / "corpus"
    config = IngestConfig(rows_per_shard=1000)
    ingest_source("nli", [shared_data / "snli/senteval/s1.dev"], corpus_dir, config, progress=False)
    ingest_source("qqp", [shared_data / "quora/kaggle_first10k/preprocess2500.csv"], corpus_dir, config, progress=False)
    ingest_source("s2orc", [shared_data / "s2orc/sample.jsonl"], corpus_dir, config, progress=False)
    data_config = root / "data_config.json"
    policy = WeightPolicy(kind="explicit", weights=REAL_WEIGHTS, exclude=("s2orc-citations",))
    write_data_config(corpus_dir, data_config, policy)
    return corpus_dir, data_config
