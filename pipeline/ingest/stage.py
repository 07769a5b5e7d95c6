"""Staging: ONE input file of a source in; its rows spilled to disk, ready to be finalized.

In: a source name, one input path, its position among the source's inputs, the
:class:`~pipeline.ingest.config.IngestConfig` and a work folder. Out:
``<work>/<n>/`` holding ``rows/*.arrow`` (the source's staged rows, when a dataset
still needs them), ``parts/<dataset>/`` (a row-local dataset's part of this file,
already cleaned, filtered and hashed for dedup), ``quarantine.jsonl`` and, written
last, ``stage.json`` (the input's hash, line and row counts, bad rows by reason, a
failure). A staged folder whose input hash and config match is reused, so a killed
run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl

from pipeline.corpus.files import atomic_write_json, config_hash, file_sha256, input_entries
from pipeline.ingest.build import PART_KEPT, KeptRows
from pipeline.ingest.config import IngestConfig, planned_datasets, source_options
from pipeline.ingest.sources import DatasetSpec, get_source
from pipeline.io import spill
from pipeline.io.compression import is_compressed
from pipeline.io.context import ReadContext
from pipeline.io.digest import InputDigest
from pipeline.io.errors import InputFileError
from pipeline.memory import heap_reused_while_streaming

STAGING_DIR = ".staging"
STAGED_ROWS = "rows"
STAGED_PARTS = "parts"
STAGE_RECORD = "stage.json"


@dataclass(frozen=True)
class StagedFile:
    """A staged input: its folder, and what its ``stage.json`` says."""

    folder: Path
    input: dict[str, Any]
    lines: int
    rows: int
    bad_rows: dict[str, int]
    failure: str | None
    parts: tuple[str, ...] = ()
    rows_written: bool = True

    def part(self, dataset: str) -> Path:
        """The folder of the part of ``dataset`` built while this file was staged."""
        return self.folder / STAGED_PARTS / dataset


def stage_file(
    source: str,
    path: Path,
    work_dir: Path,
    config: IngestConfig,
    file_index: int,
    entry: dict[str, Any] | None = None,
    inputs: Sequence[Path] | None = None,
) -> Path:
    """Read one input file with its source and spill its rows to ``work_dir``.

    Returns the staged folder. Reuses a staged folder whose input hash and config
    match. A truncated or corrupt archive does not raise: the rows read before the
    break are kept and ``stage.json`` records the failure. Nor does a file of which
    no row can be read (every row quarantined: another source's file, most likely):
    ``stage.json`` records that failure too (:func:`no_row_read`).

    With ``inputs`` (the source's whole input list), the row-local datasets (see
    :class:`pipeline.ingest.sources.DatasetSpec`) are cleaned, filtered and hashed for
    dedup here, as the rows are read: this file's part of each is written under
    ``parts/<dataset>/`` and :func:`~pipeline.ingest.finalize.finalize_source` only
    merges the parts. The rows themselves are spilled only when a dataset still needs
    them (a join).

    ``entry`` is the input's ``{path, bytes, sha256}`` when the caller has it already.
    Otherwise a plain file is hashed from the blocks its reader reads
    (:class:`pipeline.io.digest.InputDigest`, no second read), and any other input (a
    compressed file, a set of companion files) in a background thread while it is read
    (hashlib releases the GIL, so the hash costs almost no wall time on a second core).
    """
    module = get_source(source)
    options = source_options(source, config.source_options)
    specs = planned_datasets(source, inputs, config) if inputs is not None else None
    in_stage = [
        spec for spec in specs or [] if spec.row_local and (spec.inputs is None or file_index in spec.inputs)
    ]
    write_rows = specs is None or any(not spec.row_local for spec in specs)
    stage_config = {"source": source, "options": dataclasses.asdict(options), "max_line_bytes": config.max_line_bytes}
    if in_stage:
        stage_config.update(
            parts=[spec.name for spec in in_stage], rows=write_rows, filters=dataclasses.asdict(config.filters),
            dedup=config.dedup, heldout_fraction=config.heldout_fraction,
        )
    folder = Path(work_dir) / f"{file_index:05d}"
    marker = folder / STAGE_RECORD
    if marker.exists():
        entry = entry or input_entry(source, Path(path))
        try:
            if json.loads(marker.read_text())["stage_hash"] == _stage_hash(entry, stage_config, file_index):
                return folder
        except (ValueError, KeyError):
            pass
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    hashing = None
    if entry is None and not _is_one_plain_file(module, Path(path)):
        hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pairforge-hash")
        entry_future = hashing.submit(input_entry, source, Path(path))
    stager = _FileStager(folder, Path(path), file_index, module, options, config, in_stage, write_rows)
    # A plain file is hashed by its reader as it reads (InputDigest).
    ctx = ReadContext(
        path=Path(path), display_name=str(path), file_index=file_index, max_line_bytes=config.max_line_bytes,
        input_digest=InputDigest(Path(path)) if entry is None and hashing is None else None,
        jsonl_reader=config.jsonl_reader, on_restart=stager.start_over,
    )
    rows, failure = stager.stage(module.stage_file(Path(path), ctx, options))
    if failure is None and rows == 0 and ctx.bad_rows.as_dict():
        failure = no_row_read(source, str(path), ctx.bad_rows.as_dict())
    if hashing is not None:
        entry = entry_future.result()
        hashing.shutdown()
    if ctx.input_digest is not None:
        sha256 = ctx.input_digest.result()
        # None: the source did not read the file once and whole through its context
        # (ctx.open, or pipeline.io.lines.line_chunks): hash it on its own.
        entry = {"path": str(path), "bytes": ctx.input_digest.bytes, "sha256": sha256} if sha256 else input_entry(source, Path(path))
    assert entry is not None
    parts = stager.close()
    with open(folder / "quarantine.jsonl", "wb") as handle:
        # In line order: readers may find bad rows out of order (chunks are parsed
        # in parallel), and the file must not depend on how many threads did it.
        for record in sorted(ctx.quarantine, key=lambda r: r["line"]):
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    atomic_write_json(
        marker,
        {
            "stage_hash": _stage_hash(entry, stage_config, file_index),
            "input": entry,
            "lines": ctx.lines_seen,
            "rows": rows,
            "bad_rows": ctx.bad_rows.as_dict(),
            "failure": failure,
            "parts": parts,
            "rows_written": write_rows,
            "readers": ctx.readers,
        },
    )
    return folder


class _FileStager:
    """Where one file's rows go while it is read: spill files for the rows, and the
    row-local datasets' parts, in batches of about ``spill.BATCH_ROWS`` rows.

    A reader that starts the file over calls :meth:`start_over` (the context's
    ``on_restart``): what was written so far is dropped and staging begins again.
    """

    def __init__(
        self,
        folder: Path,
        path: Path,
        file_index: int,
        module: Any,
        options: Any,
        config: IngestConfig,
        in_stage: list[DatasetSpec],
        write_rows: bool,
    ) -> None:
        self.folder = folder
        self.path = path
        self.file_index = file_index
        self.module = module
        self.options = options
        self.config = config
        self.in_stage = in_stage
        self.write_rows = write_rows
        self.tmp_rows = folder / ".rows.tmp"
        self.tmp_parts = folder / ".parts.tmp"
        self.start_over()

    def start_over(self) -> None:
        """Drop every row taken so far (a reader is reading the file again from its start)."""
        for tmp in (self.tmp_rows, self.tmp_parts):
            shutil.rmtree(tmp, ignore_errors=True)
        self.writer = spill.FrameFiles(self.tmp_rows)
        self.parts = [
            KeptRows(spec, self.config, self.tmp_parts / spec.name / PART_KEPT, self.tmp_parts / spec.name)
            for spec in self.in_stage
        ]
        self.rows = 0
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = 0

    def stage(self, batches: Iterable[pl.DataFrame]) -> tuple[int, str | None]:
        """Take the source's staged batches; the rows read and the failure (a truncated
        or corrupt archive), if any."""
        failure = None
        try:
            with heap_reused_while_streaming():
                for batch in batches:
                    self.pending.append(batch)
                    self.pending_rows += batch.height
                    self.rows += batch.height
                    if self.pending_rows >= spill.BATCH_ROWS:
                        self._flush()
        except InputFileError as exc:
            failure = str(exc)
        self._flush()
        return self.rows, failure

    def _flush(self) -> None:
        # One file per batch: finalize reads them back without concatenating.
        if not self.pending:
            return
        frame = spill.concat(self.pending).with_columns(
            pl.lit(self.file_index, dtype=pl.Int64).alias("_file_index"), pl.lit(str(self.path)).alias("source_file")
        )
        self.pending, self.pending_rows = [], 0
        if self.write_rows:
            self.writer.write(frame)
        if self.parts:
            candidates = self.module.build_candidates(frame.lazy(), self.options)
            for part in self.parts:
                lazy = candidates.get(part.spec.name)
                if lazy is not None:
                    part.add_and_keep_hashes(lazy.collect())

    def close(self) -> list[str]:
        """Move the rows and parts into place; the names of the parts written."""
        if self.writer.files():
            os.replace(self.tmp_rows, self.folder / STAGED_ROWS)
        else:
            shutil.rmtree(self.tmp_rows)
        for part in self.parts:
            part.close()
        if self.parts:
            os.replace(self.tmp_parts, self.folder / STAGED_PARTS)
        return [part.spec.name for part in self.parts]


def no_row_read(source: str, path: str, bad_rows: dict[str, int]) -> str:
    """The failure of a file of which every row was quarantined: most likely another source's file.

    Its rows stay counted (quarantined, by reason) like any bad row; the file is a
    failure of the ingest, as a truncated archive is (the command exits 1).
    """
    fields = getattr(get_source(source), "FIELDS", "fields")
    reasons = ", ".join(f"{reason}={n:,}" for reason, n in sorted(bad_rows.items(), key=lambda kv: (-kv[1], kv[0]))[:3])
    total = sum(bad_rows.values())
    return (
        f"{path}: has no row with the {source} fields {fields}: is it a {source} file?"
        f" (all {total:,} rows quarantined: {reasons})"
    )


def _stage_hash(entry: dict[str, Any], stage_config: dict[str, Any], file_index: int) -> str:
    return config_hash({"input": entry, "config": stage_config, "file_index": file_index})


def input_entry(source: str, path: Path) -> dict[str, Any]:
    """``{path, bytes, sha256}`` of an input; for an input made of several files (a
    SentEval split, SPECTER's data.json + metadata.json) the bytes and hash cover all of
    them, in the order the source names them (``companion_files``)."""
    files = _companions(get_source(source), path)
    if len(files) == 1 and files[0] == path and path.is_file():
        entry = input_entries([path])[0]
        entry["path"] = str(path)
        return entry
    digest = hashlib.sha256()
    total = 0
    for file in files:
        digest.update(file_sha256(file).encode())
        total += file.stat().st_size
    return {"path": str(path), "bytes": total, "sha256": digest.hexdigest(), "files": [str(f) for f in files]}


def _companions(module: Any, path: Path) -> list[Path]:
    """The files one input consists of (``companion_files``), or the input itself."""
    return module.companion_files(path) if hasattr(module, "companion_files") else [path]


def _is_one_plain_file(module: Any, path: Path) -> bool:
    """Whether an input is one uncompressed file (its hash can come from its reader)."""
    return path.is_file() and not is_compressed(path) and _companions(module, path) == [path]


def read_stage(folder: Path) -> StagedFile:
    """What a staged folder holds (its ``stage.json``)."""
    data = json.loads((folder / STAGE_RECORD).read_text())
    return StagedFile(
        folder, data["input"], data["lines"], data["rows"], data["bad_rows"], data["failure"],
        tuple(data.get("parts", ())), bool(data.get("rows_written", True)),
    )
