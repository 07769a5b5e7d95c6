"""The tiny training corpus shared by the training tests.

Fixtures:
    corpus: ``(corpus_dir, data_config.json)``: ``animals/pairs`` (32 pairs, one held
        out) and ``animals/triplets`` (16 triplets), weights proportional to size.
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
