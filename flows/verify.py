"""Reproducibility check: a built corpus in; a rebuild in a temporary folder and a verdict out.

In: a corpus folder written by the ``pairforge-pipeline`` flow (it holds
``build.json``: the sources, inputs and configs it was built from). Out: the
``pairforge-verify`` flow rebuilds the corpus into a temporary folder and returns
``{"identical", "checked", "differ", "missing", "extra"}``, comparing every shard, every
``manifest.json`` and ``data_config.json`` by SHA-256; a markdown artifact says the same.

Manifests name the folders they were built in (a mined dataset records the path of
the dataset it was mined from), so each manifest is compared with its corpus root
replaced by ``<corpus>``; every other byte must match. Inputs are another matter:
manifests and shards name them as the build was given them, and the pipeline flow
gives them as absolute paths (:func:`flows.sources_file.absolute_sources`), which
build.json records, so the rebuild names them identically from any working folder. An
input that is no longer where build.json says makes :func:`read_build_spec` fail with
``input not found: <path>``: a rebuild needs the very files.

The corpus is held (:mod:`flows.locking`) while it is rebuilt and compared: no writer
changes it under the comparison, and verify waits or fails when one is writing it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.locking import flow_lock
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
    """The ``build.json`` of a corpus, every input it names checked to be where it says.

    Raises:
        FileNotFoundError: the corpus folder does not exist, it was not built by the
            pipeline flow (no build.json), or an input is not found (the message names it).
        ValueError: build.json is not what the pipeline flow writes.
    """
    folder = Path(corpus_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {folder}")
    path = folder / BUILD_SPEC_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: verify needs a corpus built by `pairforge run` (it records its inputs there)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        inputs = [str(p) for entry in spec["sources"] for p in entry["inputs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a build record of `pairforge run` ({type(exc).__name__}: {exc})") from None
    for raw in inputs:
        if not Path(raw).exists():
            where = "" if Path(raw).is_absolute() else f", relative to {Path.cwd()}"
            raise FileNotFoundError(f"input not found: {raw}{where} (named in {path}; a rebuild needs the inputs it was built from)")
    return spec


@flow(name="pairforge-verify", log_prints=True)
def verify_corpus(corpus_dir: str, work_dir: str | None = None, wait_for_lock: bool = False) -> dict[str, Any]:
    """Rebuild ``corpus_dir`` from its build.json into a temporary folder and compare.

    Args:
        corpus_dir: the corpus to check (``OUT/corpus``).
        work_dir: where the temporary rebuild goes (default: the system temp folder).
        wait_for_lock: when another process writes the corpus, wait for it instead of failing.

    Returns:
        The comparison (see :func:`compare_corpora`) plus ``corpus_dir``.
    """
    spec = read_build_spec(corpus_dir)
    with flow_lock(corpus_dir, wait_for_lock):
        result = _rebuild_and_compare(corpus_dir, spec, work_dir)
    verdict = "identical" if result["identical"] else "DIFFERENT"
    lines = [f"# Rebuild of `{corpus_dir}`: {verdict}", "", f"{result['checked']} files checked."]
    for key in ("differ", "missing", "extra"):
        lines += [f"- {key}: `{p}`" for p in result[key]]
    create_markdown_artifact(key="pairforge-verify", markdown="\n".join(lines) + "\n")
    get_run_logger().info("verify %s: %s (%d files checked)", corpus_dir, verdict, result["checked"])
    return result | {"corpus_dir": str(corpus_dir)}


def _rebuild_and_compare(corpus_dir: str, spec: dict[str, Any], work_dir: str | None) -> dict[str, Any]:
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
        return compare_corpora(corpus_dir, corpus_paths(rebuild)["corpus"])
