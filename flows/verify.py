"""Reproducibility check: a built corpus in; a rebuild in a temporary folder and a verdict out.

In: a corpus folder written by the ``pairforge-pipeline`` flow (it holds
``build.json``: the sources, inputs and configs it was built from). Out: the
``pairforge-verify`` flow rebuilds the corpus into a temporary folder and returns
``{"identical", "checked", "differ", "missing", "extra"}``, comparing every shard, every
``manifest.json`` and ``data_config.json`` by SHA-256; a markdown artifact says the same.

Manifests name the folders they were built in (a mined dataset records the path of
the dataset it was mined from), so each manifest is compared with its corpus root
replaced by ``<corpus>``; every other byte must match.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.parent_flow import pairforge_pipeline
from flows.paths import BUILD_SPEC_NAME, corpus_paths

CORPUS_PLACEHOLDER = "<corpus>"


def corpus_digests(corpus_dir: str | Path) -> dict[str, str]:
    """SHA-256 of each shard listed in a manifest, of each manifest (root-independent) and of data_config.json.

    Args:
        corpus_dir: a corpus root.

    Returns:
        Path relative to the root -> hex digest, sorted by path.
    """
    from pipeline.corpus.files import file_sha256
    from pipeline.corpus.manifest import MANIFEST_NAME
    from pipeline.sampling.data_config import DATA_CONFIG_NAME

    root = Path(corpus_dir).resolve()
    digests: dict[str, str] = {}
    for manifest_path in sorted(root.rglob(MANIFEST_NAME)):
        relative = manifest_path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue  # staging and work folders are not part of the corpus
        text = manifest_path.read_text(encoding="utf-8")
        digests[str(relative)] = hashlib.sha256(text.replace(str(root), CORPUS_PLACEHOLDER).encode("utf-8")).hexdigest()
        for shard in json.loads(text).get("shards", []):
            shard_path = manifest_path.parent / shard["path"]
            key = str(shard_path.relative_to(root))
            digests[key] = file_sha256(shard_path) if shard_path.is_file() else "missing"
    if (root / DATA_CONFIG_NAME).is_file():
        digests[DATA_CONFIG_NAME] = file_sha256(root / DATA_CONFIG_NAME)
    return dict(sorted(digests.items()))


def compare_corpora(expected_dir: str | Path, actual_dir: str | Path) -> dict[str, Any]:
    """Compare two corpora file by file (see :func:`corpus_digests`).

    Returns:
        ``{"identical": bool, "checked": n, "differ": [...], "missing": [...], "extra": [...]}``
        where ``missing`` are in ``expected_dir`` only and ``extra`` in ``actual_dir`` only.
    """
    expected, actual = corpus_digests(expected_dir), corpus_digests(actual_dir)
    differ = sorted(p for p in expected.keys() & actual.keys() if expected[p] != actual[p])
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    return {
        "identical": bool(expected) and not (differ or missing or extra),
        "checked": len(expected),
        "differ": differ,
        "missing": missing,
        "extra": extra,
    }


def read_build_spec(corpus_dir: str | Path) -> dict[str, Any]:
    """The ``build.json`` of a corpus.

    Raises:
        FileNotFoundError: the corpus was not built by the pipeline flow (no build.json).
    """
    path = Path(corpus_dir) / BUILD_SPEC_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: verify needs a corpus built by `pairforge run` (it records its inputs there)")
    return json.loads(path.read_text(encoding="utf-8"))


@flow(name="pairforge-verify", log_prints=True)
def verify_corpus(corpus_dir: str, work_dir: str | None = None) -> dict[str, Any]:
    """Rebuild ``corpus_dir`` from its build.json into a temporary folder and compare.

    Args:
        corpus_dir: the corpus to check (``OUT/corpus``).
        work_dir: where the temporary rebuild goes (default: the system temp folder).

    Returns:
        The comparison (see :func:`compare_corpora`) plus ``corpus_dir``.
    """
    spec = read_build_spec(corpus_dir)
    with tempfile.TemporaryDirectory(prefix="pairforge-verify-", dir=work_dir) as rebuild:
        pairforge_pipeline(
            sources=spec["sources"],
            out_dir=rebuild,
            ingest=spec.get("ingest"),
            mining=spec.get("mining"),
            mine=spec.get("mine"),
            policy=spec.get("policy"),
            curation=spec.get("curation"),
            stop_after="config",
        )
        result = compare_corpora(corpus_dir, corpus_paths(rebuild)["corpus"])
    verdict = "identical" if result["identical"] else "DIFFERENT"
    lines = [f"# Rebuild of `{corpus_dir}`: {verdict}", "", f"{result['checked']} files checked."]
    for key in ("differ", "missing", "extra"):
        lines += [f"- {key}: `{p}`" for p in result[key]]
    create_markdown_artifact(key="pairforge-verify", markdown="\n".join(lines) + "\n")
    get_run_logger().info("verify %s: %s (%d files checked)", corpus_dir, verdict, result["checked"])
    return result | {"corpus_dir": str(corpus_dir)}
