"""Session-wide test set-up: offline Hugging Face, a private Prefect home, and models.

Fixtures:
    shared_data: the real public samples in ../shared/data (skips when they are absent).
    tiny_model_dir: a tiny random BERT sentence-transformer (2 layers, 32 dims) built
        from a config with the real model's vocabulary, saved once per session. Fast.
    base_model_dir: the packaged all-MiniLM-L6-v2 folder (the real model).
    base_model: the real model loaded once per session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, build_tiny_model

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pairforge-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from pipeline.embed.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def base_model(base_model_dir: Path):
    from pipeline.embed.models import load_encoder

    return load_encoder(base_model_dir, device="cpu")
