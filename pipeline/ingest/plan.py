"""An ingest as a plan of units: stage each input file, then finalize the source.

In: a source name, its input files, the corpus folder and an
:class:`~pipeline.ingest.config.IngestConfig`. Out: an :class:`IngestPlan` whose units
any runner executes: :func:`ingest_source` runs them in this process, one after the other;
the ``build-corpus`` flow (flows/ingest.py) runs each :class:`StageUnit` as a task
(on threads or a Dask cluster) and :meth:`IngestPlan.finalize` as the source's last
task. Same units, same bytes, whichever runner.

A plan whose datasets all match their inputs (by SHA-256) and config is already done
(:attr:`IngestPlan.done`): nothing runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.corpus.files import config_hash
from pipeline.corpus.manifest import MANIFEST_NAME, matching_manifest
from pipeline.ingest.build import MapPartitions
from pipeline.ingest.config import IngestConfig, planned_datasets
from pipeline.ingest.finalize import finalize_source
from pipeline.ingest.sources import get_source
from pipeline.ingest.stage import STAGING_DIR, input_entry, stage_file


@dataclass(frozen=True)
class StageUnit:
    """Stage one input file (:func:`~pipeline.ingest.stage.stage_file`).

    Attributes:
        file_index: the file's position among the source's inputs.
        path: the input, as given.
        entry: its ``{path, bytes, sha256}`` when planning hashed it already (a rebuild),
            else None (staging hashes it while reading).
    """

    file_index: int
    path: str
    entry: dict[str, Any] | None = None


@dataclass(frozen=True)
class IngestPlan:
    """One source's ingest: its :class:`StageUnit` objects, then :meth:`finalize`.

    Small and picklable: a flow passes it between tasks and processes.

    Attributes:
        source: the source name.
        inputs: the input paths, as given.
        out_dir: the corpus folder.
        config: the ingest config.
        done: every dataset's manifest when all already match (nothing to run), else None.
        stages: one unit per input file (empty when done).
    """

    source: str
    inputs: tuple[str, ...]
    out_dir: str
    config: IngestConfig
    done: tuple[dict[str, Any], ...] | None = None
    stages: tuple[StageUnit, ...] = field(default_factory=tuple)

    @property
    def work_dir(self) -> Path:
        """Where the source's files are staged: ``<out>/.staging/<source>``."""
        return Path(self.out_dir) / STAGING_DIR / self.source

    def stage(self, unit: StageUnit) -> str:
        """Run one stage unit; the staged folder (a folder that matches is reused)."""
        inputs = [Path(p) for p in self.inputs]
        folder = stage_file(self.source, Path(unit.path), self.work_dir, self.config, unit.file_index, unit.entry, inputs)
        return str(folder)

    def finalize(self, staged: Sequence[str], progress: bool = True, map_partitions: MapPartitions = map) -> list[dict[str, Any]]:
        """Finalize the source from its staged folders (in input order); the manifests.

        The staged files are removed once the manifests exist.
        """
        manifests = finalize_source(
            self.source, [Path(p) for p in staged], [Path(p) for p in self.inputs], Path(self.out_dir), self.config,
            progress=progress, map_partitions=map_partitions,
        )  # fmt: skip
        shutil.rmtree(self.work_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # other sources may still be staging beside it
            self.work_dir.parent.rmdir()
        return manifests


def check_inputs(source: str, inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Check that ``inputs`` are inputs ``source`` can read, before anything is read or written.

    Each input must exist, be readable, be a file (a folder only for a source with
    ``FOLDER_INPUTS``), not be empty, and pass the source's own ``check_input`` (its
    companion files, its file names). What a file holds is only known once it is
    read: a file of which no row can be read fails on its own (the command exits 1).

    Returns:
        The inputs as paths, in the order given.

    Raises:
        FileNotFoundError: an input does not exist (the message names every one).
        PermissionError: an input cannot be read.
        ValueError: an unknown source, no inputs, a folder or an empty file, or an
            input laid out otherwise than the source reads (:class:`~pipeline.io.errors.InputLayoutError`).
    """
    module = get_source(source)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError(f"no input files given for source {source!r}")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    for path in paths:
        if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
            raise PermissionError(f"input not readable: {path} (permission denied)")
        if path.is_dir():
            if not getattr(module, "FOLDER_INPUTS", False):
                raise ValueError(f"{path} is a folder: the {source} source reads files (give the files in it)")
        elif path.is_file() and path.stat().st_size == 0:
            raise ValueError(f"input is empty: {path} (0 bytes): expected a file of {source} rows")
        check = getattr(module, "check_input", None)
        if check is not None:
            check(path)
    return paths


def plan_ingest(
    source: str, inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], config: IngestConfig | None = None
) -> IngestPlan:
    """The plan of an ingest: done already, or one stage unit per input file.

    Inputs are hashed here only when every dataset has a manifest to compare them with
    (a rebuild); the hashes then travel with the units, so staging does not hash again.

    Raises:
        FileNotFoundError: an input does not exist.
        PermissionError: an input cannot be read.
        ValueError: an unknown source or option, no inputs, an input the source does not
            read (:func:`check_inputs`), or a ``datasets`` selection the inputs do not make.
    """
    config = config or IngestConfig()
    paths = check_inputs(source, inputs)
    names = tuple(str(p) for p in paths)
    specs = planned_datasets(source, paths, config)
    entries: list[dict[str, Any]] | None = None
    if all((Path(out_dir) / spec.name / MANIFEST_NAME).exists() for spec in specs):
        entries = [input_entry(source, p) for p in paths]
        hash_ = config_hash(config.resolved(source))
        manifests = [matching_manifest(Path(out_dir) / spec.name, entries, hash_) for spec in specs]
        if all(m is not None for m in manifests):
            return IngestPlan(source, names, str(out_dir), config, done=tuple(manifests))  # type: ignore[arg-type]
    units = tuple(StageUnit(i, path, entries[i] if entries else None) for i, path in enumerate(names))
    return IngestPlan(source, names, str(out_dir), config, stages=units)


@dataclass
class IngestResult:
    """What :func:`ingest_source` did: the manifests written, and the inputs that failed."""

    manifests: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    skipped: bool = False


def ingest_source(
    source: str,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: IngestConfig | None = None,
    progress: bool = True,
) -> IngestResult:
    """Read a source's raw files into clean, deduplicated, split dataset folders.

    Stages every input file, then finalizes the source's datasets (see
    :mod:`pipeline.ingest`), in this process. A rerun skips what is up to date and
    reuses what was staged, so a killed run resumes. It takes no lock on ``out_dir``:
    ``pairforge ingest`` and the flows hold it (:func:`pipeline.corpus.locks.writer_lock`).

    Args:
        source: a source name (``nli``, ``qqp``, ``reddit``, ``s2orc``, ``specter``, ``pairs``).
        inputs: the source's files, as distributed.
        out_dir: the corpus folder; each dataset gets a folder in it.
        config: cleaning, dedup, split and source options (default: :class:`IngestConfig`).
        progress: show progress bars.

    Returns:
        The manifests (one per dataset), the inputs that failed (a truncated archive:
        its rows up to the break are kept), and whether everything was up to date.

    Raises:
        FileNotFoundError: an input does not exist.
        PermissionError: an input cannot be read.
        ValueError: an unknown source or option, or an input the source does not read
            (a folder, an empty file, a missing companion file: :func:`check_inputs`).

    Example::

        from pipeline import ingest_source

        result = ingest_source("nli", ["snli_1.0_dev.jsonl"], "corpus/")
        print(result.manifests[0]["rows_kept"])
    """
    from tqdm import tqdm

    plan = plan_ingest(source, inputs, out_dir, config)
    if plan.done is not None:
        return IngestResult(list(plan.done), all_failures(plan.done), skipped=True)
    staged = [plan.stage(unit) for unit in tqdm(plan.stages, desc=f"{source}: read", unit="file", disable=not progress)]
    manifests = plan.finalize(staged, progress=progress)
    return IngestResult(manifests, all_failures(manifests))


def all_failures(manifests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The failed inputs named in any manifest, once each (a dataset may own some inputs only)."""
    failures: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        for failure in manifest["failures"]:
            failures.setdefault(failure["path"], failure)
    return list(failures.values())
