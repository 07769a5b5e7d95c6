"""Where a run writes under its output folder.

In: the run's output folder. Out: the absolute paths of its corpus, its
data_config.json, its model and its report (so every manifest names one place).
"""

from __future__ import annotations

from pathlib import Path

CORPUS_DIR = "corpus"
MODEL_DIR = "model"
REPORT_DIR = "eval"
BUILD_SPEC_NAME = "build.json"
MINED_SUFFIX = "-mined"


def corpus_paths(out_dir: str | Path) -> dict[str, Path]:
    """``out``, ``corpus``, ``data_config``, ``model``, ``report`` and ``build_spec`` under ``out_dir``, absolute."""
    from pipeline.sampling.data_config import DATA_CONFIG_NAME

    out = Path(out_dir).resolve()
    corpus = out / CORPUS_DIR
    return {
        "out": out,
        "corpus": corpus,
        "data_config": corpus / DATA_CONFIG_NAME,
        "model": out / MODEL_DIR,
        "report": out / REPORT_DIR,
        "build_spec": corpus / BUILD_SPEC_NAME,
    }


def mined_name(dataset: str) -> str:
    """The folder name of a dataset's mined version: ``nli-pairs`` -> ``nli-pairs-mined``."""
    return dataset + MINED_SUFFIX
