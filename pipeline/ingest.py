"""Ingest: raw source files in, clean deduplicated Parquet datasets out.

In: a source name (``nli``, ``reddit``...), its input files and an
:class:`IngestConfig`. Out: one folder per dataset under ``out_dir`` holding train
shards, held-out shards, ``quarantine.jsonl`` and ``manifest.json`` (written last),
as docs/corpus-format.md describes.

Two steps, so a flow can run the first once per file and a cluster can spread it:

1. :func:`stage_file` reads ONE input file with its source module and spills the
   source's rows to ``<out>/.staging/<source>/<n>/rows/*.arrow`` with its
   unreadable-row counts and quarantine. A staged file whose input hash and config are
   unchanged is reused, so a killed run resumes.
2. :func:`finalize_source` joins the staged files into candidate pairs per dataset,
   cleans and filters them, removes exact (and optionally near) duplicates across all
   files, splits off the held-out rows, writes shards, and writes the manifest last.
   A dataset whose manifest already matches its inputs and config is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import polars as pl

from pipeline import shards as shard_io
from pipeline import spill
from pipeline.dedup import ExactDeduplicator, NearDuplicateFilter
from pipeline.formats import (
    DEFAULT_MAX_LINE_BYTES, InputDigest, InputFileError, ReadContext, WholeFileReadFailed, is_compressed, ordered_map,
)
from pipeline.memory import heap_reused_while_streaming, release_free_memory
from pipeline.normalize import TextFilters, clean_and_filter, set_reason
from pipeline.records import arrow_schema, shard_columns
from pipeline.sources import DatasetSpec, get_source

STAGING_DIR = ".staging"
STAGED_ROWS = "rows"
STAGED_PARTS = "parts"
_PART_KEPT = "kept"
_PART_HASHES = "hashes.npy"
_PART_TALLY = "part.json"
_HELDOUT = "_heldout"  # kept rows carry their split until the shards are written
_HASH_SEEDS = (0x5EED_0001, 0x5EED_0002)
# At most this many partitions (or streamed batches) are joined and cleaned at once
# (fewer when polars has fewer threads); ordered_map holds twice as many in memory.
_MAX_JOIN_WORKERS = 4


@dataclass(frozen=True)
class IngestConfig:
    """Everything that decides an ingest's output; saved, with its hash, in each manifest.

    Attributes:
        filters: cleaning length bounds and pair rules.
        dedup: remove exact duplicate pairs (after cleaning) across all input files.
        near_dedup: also remove near-duplicates (MinHash LSH on anchor + positive).
        near_dedup_threshold: estimated Jaccard similarity at which a pair is a near-duplicate.
        heldout_fraction: share of rows (by a hash of their id) kept apart for evaluation.
        rows_per_shard: the most rows one Parquet shard holds.
        max_line_bytes: longer input lines are dropped as ``line_too_long``.
        dedup_buckets: hash partitions for exact dedup (bounds its memory).
        source_options: the source's own options, by name.
        datasets: build only these of the source's datasets (None: all). A selection,
            not a transformation: it is not part of the manifests' config, so a
            dataset's files are the same bytes whichever others are built beside it.
    """

    filters: TextFilters = field(default_factory=TextFilters)
    dedup: bool = True
    near_dedup: bool = False
    near_dedup_threshold: float = 0.9
    heldout_fraction: float = 0.05
    rows_per_shard: int = shard_io.DEFAULT_ROWS_PER_SHARD
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    dedup_buckets: int = 64
    source_options: Mapping[str, Any] = field(default_factory=dict)
    datasets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.datasets is not None:
            names = (self.datasets,) if isinstance(self.datasets, str) else tuple(self.datasets)
            if not names:
                raise ValueError("datasets: name at least one dataset, or leave it unset for all")
            object.__setattr__(self, "datasets", names)
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if not 0.0 < self.near_dedup_threshold <= 1.0:
            raise ValueError(f"near_dedup_threshold must be in (0, 1], got {self.near_dedup_threshold}")

    def resolved(self, source: str) -> dict[str, Any]:
        """The config as plain JSON data, with the source's options filled with defaults."""
        data = dataclasses.asdict(self)
        del data["datasets"]
        data["source"] = source
        data["source_options"] = dataclasses.asdict(source_options(source, self.source_options))
        return data


def source_options(source: str, values: Mapping[str, Any]) -> Any:
    """Build a source's ``Options`` from ``values``, converting strings to the field types.

    Raises:
        ValueError: an option the source does not have, or a value of the wrong type.
    """
    module = get_source(source)
    fields = {f.name: f for f in dataclasses.fields(module.Options)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ValueError(f"source {source!r} has no option {', '.join(unknown)} (its options: {known})")
    converted = {}
    for name, value in values.items():
        converted[name] = _convert_option(name, value, fields[name].type)
    return module.Options(**converted)


def _convert_option(name: str, value: Any, annotation: Any) -> Any:
    if not isinstance(value, str):
        return value
    kind = str(annotation)
    try:
        if "int" in kind:
            return None if value.lower() == "none" else int(value)
        if "float" in kind:
            return None if value.lower() == "none" else float(value)
        if "bool" in kind:
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError(value)
    except ValueError:
        raise ValueError(f"option {name}: cannot read {value!r} as {kind}") from None
    return value


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
    break are kept and ``stage.json`` records the failure.

    With ``inputs`` (the source's whole input list), the row-local datasets (see
    :class:`pipeline.sources.DatasetSpec`) are cleaned, filtered and hashed for dedup
    here, as the rows are read: this file's part of each is written under
    ``parts/<dataset>/`` and :func:`finalize_source` only merges the parts. The rows
    themselves are spilled only when a dataset still needs them (a join).

    ``entry`` is the input's ``{path, bytes, sha256}`` when the caller has it already.
    Otherwise a plain file is hashed from the blocks its reader reads
    (:class:`pipeline.formats.InputDigest`, no second read), and any other input (a
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
    marker = folder / "stage.json"
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
    tmp_rows = folder / ".rows.tmp"
    tmp_parts = folder / ".parts.tmp"
    # First with the one-pass reader where a source offers it; if that meets a line it
    # leaves to the chunked readers, the file is read again from the start.
    for whole_file in (True, False):
        # A plain file is hashed by its reader as it reads (InputDigest), a fresh digest
        # for each attempt.
        digest = InputDigest(Path(path)) if entry is None and hashing is None else None
        ctx = ReadContext(
            path=Path(path), display_name=str(path), file_index=file_index, max_line_bytes=config.max_line_bytes,
            input_digest=digest, whole_file=whole_file,
        )
        for tmp in (tmp_rows, tmp_parts):
            shutil.rmtree(tmp, ignore_errors=True)
        writer = spill.FrameFiles(tmp_rows)
        parts = [_KeptRows(spec, config, tmp_parts / spec.name / _PART_KEPT, tmp_parts / spec.name) for spec in in_stage]
        try:
            rows, failure = _stage_rows(module, options, path, ctx, file_index, writer if write_rows else None, parts)
            break
        except WholeFileReadFailed:
            continue
    if hashing is not None:
        entry = entry_future.result()
        hashing.shutdown()
    if digest is not None:
        sha256 = digest.result()
        # None: the source did not read the file once and whole through its context
        # (ctx.open, or formats.line_chunks): hash it on its own.
        entry = {"path": str(path), "bytes": digest.bytes, "sha256": sha256} if sha256 else input_entry(source, Path(path))
    assert entry is not None
    if writer.files():
        os.replace(tmp_rows, folder / STAGED_ROWS)
    else:
        shutil.rmtree(tmp_rows)
    for part in parts:
        part.close()
    if parts:
        os.replace(tmp_parts, folder / STAGED_PARTS)
    with open(folder / "quarantine.jsonl", "wb") as handle:
        # In line order: readers may find bad rows out of order (chunks are parsed
        # in parallel), and the file must not depend on how many threads did it.
        for record in sorted(ctx.quarantine, key=lambda r: r["line"]):
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    shard_io.atomic_write_json(
        marker,
        {
            "stage_hash": _stage_hash(entry, stage_config, file_index),
            "input": entry,
            "lines": ctx.lines_seen,
            "rows": rows,
            "bad_rows": ctx.bad_rows.as_dict(),
            "failure": failure,
            "parts": [part.spec.name for part in parts],
            "rows_written": write_rows,
        },
    )
    return folder


def _stage_rows(
    module: Any,
    options: Any,
    path: str | os.PathLike[str],
    ctx: ReadContext,
    file_index: int,
    writer: spill.FrameFiles | None,
    parts: list["_KeptRows"],
) -> tuple[int, str | None]:
    """Read one input with its source: spill its rows to ``writer`` and clean the
    row-local datasets' ``parts``, in batches of about ``spill.BATCH_ROWS`` rows.
    Returns the rows read and the failure (a truncated or corrupt archive), if any.
    ``path`` is recorded as given (``source_file``).

    Raises:
        WholeFileReadFailed: the one-pass reader gave up (``ctx.whole_file``).
    """
    rows = 0
    failure = None
    pending: list[pl.DataFrame] = []
    pending_rows = 0

    def flush() -> None:
        # One file per batch: finalize reads them back without concatenating.
        nonlocal pending, pending_rows
        if not pending:
            return
        frame = spill.concat(pending).with_columns(
            pl.lit(file_index, dtype=pl.Int64).alias("_file_index"), pl.lit(str(path)).alias("source_file")
        )
        pending, pending_rows = [], 0
        if writer is not None:
            writer.write(frame)
        if parts:
            candidates = module.build_candidates(frame.lazy(), options)
            for part in parts:
                lazy = candidates.get(part.spec.name)
                if lazy is not None:
                    part.add_and_keep_hashes(lazy.collect())

    try:
        with heap_reused_while_streaming():
            for batch in module.stage_file(Path(path), ctx, options):
                pending.append(batch)
                pending_rows += batch.height
                rows += batch.height
                if pending_rows >= spill.BATCH_ROWS:
                    flush()
    except InputFileError as exc:
        failure = str(exc)
    flush()
    return rows, failure


def _stage_hash(entry: dict[str, Any], stage_config: dict[str, Any], file_index: int) -> str:
    return shard_io.config_hash({"input": entry, "config": stage_config, "file_index": file_index})


def input_entry(source: str, path: Path) -> dict[str, Any]:
    """``{path, bytes, sha256}`` of an input; for an input made of several files (a
    SentEval split, SPECTER's data.json + metadata.json) the bytes and hash cover all of
    them, in the order the source names them (``companion_files``)."""
    files = _companions(get_source(source), path)
    if len(files) == 1 and files[0] == path and path.is_file():
        entry = shard_io.input_entries([path])[0]
        entry["path"] = str(path)
        return entry
    digest = hashlib.sha256()
    total = 0
    for file in files:
        digest.update(shard_io.file_sha256(file).encode())
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
    data = json.loads((folder / "stage.json").read_text())
    return StagedFile(
        folder, data["input"], data["lines"], data["rows"], data["bad_rows"], data["failure"],
        tuple(data.get("parts", ())), bool(data.get("rows_written", True)),
    )


def _dataset_manifest_matches(folder: Path, inputs: list[dict[str, Any]], hash_: str) -> dict[str, Any] | None:
    manifest = shard_io.read_manifest(folder)
    if manifest and manifest.get("inputs") == inputs and manifest.get("config_hash") == hash_:
        if shard_io.shards_intact(folder, manifest):
            return manifest
    return None


def planned_datasets(source: str, inputs: Sequence[Path], config: IngestConfig) -> list[DatasetSpec]:
    """The datasets ``ingest`` would write for these inputs (those of ``config.datasets``).

    Raises:
        ValueError: ``config.datasets`` names a dataset these inputs do not make.
    """
    module = get_source(source)
    specs = module.dataset_specs([Path(p) for p in inputs], source_options(source, config.source_options))
    if config.datasets is None:
        return specs
    unknown = sorted(set(config.datasets) - {spec.name for spec in specs})
    if unknown:
        known = ", ".join(spec.name for spec in specs)
        raise ValueError(f"source {source!r} makes no dataset {', '.join(unknown)} from these inputs (it makes: {known})")
    return [spec for spec in specs if spec.name in config.datasets]


@dataclass(frozen=True)
class UpToDateCheck:
    """What :func:`up_to_date` found.

    Attributes:
        manifests: every dataset's manifest when all match their inputs and config, else None.
        entries: the inputs' ``{path, bytes, sha256}`` when they were hashed for the
            comparison (every dataset had a manifest), else None. Staging reuses them,
            so a rebuild (say, after a config change) does not hash every input twice.
    """

    manifests: list[dict[str, Any]] | None
    entries: list[dict[str, Any]] | None


def up_to_date(source: str, inputs: Sequence[Path], out_dir: Path, config: IngestConfig) -> UpToDateCheck:
    """Whether every dataset already matches its inputs and config.

    Inputs are hashed only when every dataset has a manifest to compare them with (a
    first build hashes each file while staging it instead).
    """
    specs = planned_datasets(source, inputs, config)
    if not all((Path(out_dir) / spec.name / shard_io.MANIFEST_NAME).exists() for spec in specs):
        return UpToDateCheck(None, None)
    entries = [input_entry(source, Path(p)) for p in inputs]
    hash_ = shard_io.config_hash(config.resolved(source))
    manifests = []
    for spec in specs:
        manifest = _dataset_manifest_matches(Path(out_dir) / spec.name, entries, hash_)
        if manifest is None:
            return UpToDateCheck(None, entries)
        manifests.append(manifest)
    return UpToDateCheck(manifests, entries)


def finalize_source(
    source: str,
    staged: Sequence[Path],
    inputs: Sequence[Path],
    out_dir: Path,
    config: IngestConfig,
    progress: bool = True,
    map_partitions: MapPartitions = map,
) -> list[dict[str, Any]]:
    """Turn the staged files of a source into finished datasets; return their manifests.

    Candidates are built three ways, as each dataset's spec allows (see
    :class:`pipeline.sources.DatasetSpec`), so memory stays bounded where it can:

    * ``row_local``: batch by batch over the staged rows, in input order; every such
      dataset of the source is fed from the same pass;
    * ``partition_key``: the staged rows are spread over hash partitions of that
      column on disk, and each partition's candidates are built on their own
      (partition after partition, input order within one);
    * ``streamed``: the source's own ``candidate_batches`` (a join on two keys, as
      Reddit's parent lookup, partitioned by the source);
    * otherwise the whole source at once (a polars join over all staged rows).

    ``map_partitions`` runs the exact-dedup partitions (an executor's map spreads
    them over a cluster; :meth:`pipeline.dedup.ExactDeduplicator.keep_mask`).
    """
    from tqdm import tqdm

    module = get_source(source)
    options = source_options(source, config.source_options)
    stages = [read_stage(Path(f)) for f in staged]
    entries = [dict(s.input) for s in stages]
    resolved = config.resolved(source)
    hash_ = shard_io.config_hash(resolved)
    staged_files = [file for s in stages for file in spill.FrameFiles(s.folder / STAGED_ROWS, create=False).files()]
    failures = [{"path": s.input["path"], "error": s.failure} for s in stages if s.failure]
    specs = planned_datasets(source, inputs, config)
    manifests: dict[str, dict[str, Any]] = {}
    builders: dict[str, _DatasetBuilder] = {}
    for spec in specs:
        folder = Path(out_dir) / spec.name
        existing = _dataset_manifest_matches(folder, entries, hash_)
        if existing is not None:
            manifests[spec.name] = existing
        else:
            builders[spec.name] = _DatasetBuilder(spec, stages, folder, config)
    total_rows = sum(s.rows for s in stages)
    for builder in builders.values():
        # Cleaned while its files were staged: merge the parts, in input order.
        if builder.spec.row_local and all(builder.spec.name in s.parts for s in builder.stages):
            for stage in builder.stages:
                builder.absorb(stage.part(builder.spec.name))
            builder.absorbed = True
    row_local = [b for b in builders.values() if b.spec.row_local and not b.absorbed]
    streamed = [b for b in builders.values() if b.spec.streamed]
    partitioned = [b for b in builders.values() if b.spec.partition_key and not b.spec.streamed]
    whole = [b for b in builders.values() if not (b.spec.row_local or b.spec.partition_key or b.spec.streamed)]
    if (row_local or streamed or partitioned or whole) and not all(s.rows_written for s in stages):
        unstaged = ", ".join(str(s.folder) for s in stages if not s.rows_written)
        raise RuntimeError(
            f"{source}: {unstaged} staged no rows (only the parts of row-local datasets), but"
            f" {', '.join(b.spec.name for b in row_local + streamed + partitioned + whole)} need them:"
            " stage with the same datasets that finalize builds"
        )

    def build_row_local() -> None:
        bar = tqdm(total=total_rows, desc=f"{source}: clean", unit="row", disable=not progress, leave=False)
        for batch in spill.read_batches(staged_files):
            candidates = module.build_candidates(batch.lazy(), options)
            for builder in row_local:
                lazy = candidates.get(builder.spec.name)
                if lazy is not None:
                    builder.add(lazy.collect())
            bar.update(batch.height)
            release_free_memory()
        bar.close()

    def build_partitioned(builder: _DatasetBuilder) -> None:
        # Partitions are independent: several are joined and cleaned at once on worker
        # threads (_join_workers), and taken in order here.
        def join_and_clean(part: pl.DataFrame) -> _CleanedBatch:
            return builder.cleaned.clean(module.build_candidates(part.lazy(), options)[builder.spec.name].collect())

        bar = tqdm(total=total_rows, desc=f"{builder.spec.name}: join", unit="row", disable=not progress, leave=False)
        partitions = _key_partitions(staged_files, builder.spec.partition_key, builder.folder)
        for part, cleaned in ordered_map(join_and_clean, partitions, workers=_join_workers()):
            builder.add_cleaned(cleaned)
            bar.update(part.height)
            release_free_memory()
        bar.close()

    def build_streamed(builder: _DatasetBuilder) -> None:
        bar = tqdm(total=total_rows, desc=f"{builder.spec.name}: join", unit="row", disable=not progress, leave=False)
        batches = module.candidate_batches(builder.spec.name, staged_files, builder.folder, options)
        for frame, cleaned in ordered_map(builder.cleaned.clean, batches, workers=_join_workers()):
            builder.add_cleaned(cleaned)
            bar.update(frame.height)
            release_free_memory()
        bar.close()

    # The passes read the same staged files and write to different datasets: they run
    # side by side (polars releases the GIL), each dataset's rows in its own order.
    passes: list[Callable[[], None]] = [build_row_local] if row_local else []
    passes += [functools.partial(build_partitioned, builder) for builder in partitioned]
    passes += [functools.partial(build_streamed, builder) for builder in streamed]
    if len(passes) > 1 and pl.thread_pool_size() > 1:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pairforge-finalize") as pool:
            for future in [pool.submit(run) for run in passes]:
                future.result()
    else:
        for run in passes:
            run()
    if whole and staged_files:
        candidates = module.build_candidates(pl.scan_ipc([str(f) for f in staged_files]), options)
        for builder in whole:
            lazy = candidates.get(builder.spec.name)
            if lazy is not None:
                spill_path = builder.folder / ".candidates.arrow"
                builder.folder.mkdir(parents=True, exist_ok=True)
                _spill_in_input_order(lazy, spill_path)
                for batch in pl.scan_ipc(spill_path).collect_batches(chunk_size=spill.BATCH_ROWS):
                    builder.add(batch)
                spill_path.unlink()
    finish = functools.partial(
        _DatasetBuilder.finish,
        entries=entries, failures=failures, resolved=resolved, hash_=hash_, source=source, progress=progress,
        map_partitions=map_partitions,
    )
    # Each dataset's shards are its own: written side by side (Parquet encoding and
    # zstd release the GIL). Not when dedup partitions go to a cluster: its client
    # belongs to this thread.
    if len(builders) > 1 and pl.thread_pool_size() > 1 and map_partitions is map:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pairforge-write") as pool:
            done = dict(zip(builders, pool.map(finish, builders.values())))
    else:
        done = {name: finish(builder) for name, builder in builders.items()}
    manifests.update(done)
    return [manifests[spec.name] for spec in specs]


MapPartitions = Callable[[Callable[[Path], np.ndarray], list[Path]], Iterable[np.ndarray]]


def _join_workers() -> int:
    return max(1, min(_MAX_JOIN_WORKERS, pl.thread_pool_size()))


def _key_partitions(paths: Sequence[Path], key: str, work_dir: Path) -> Iterator[pl.DataFrame]:
    """The staged rows split by a hash of column ``key``, one partition at a time
    (:func:`pipeline.spill.key_partitions`; the count follows the staged size)."""
    n_parts = spill.partition_count(paths)
    for _, rows in spill.key_partitions(paths, pl.col(key), n_parts, work_dir):
        yield rows


def heldout_mask(ids: Sequence[str] | pl.Series, fraction: float) -> np.ndarray:
    """True for ids in the held-out split: ``xxh64(utf-8 bytes of id) / 2**64 < fraction``."""
    import xxhash

    limit = int(fraction * 2**64)
    encoded = ids.cast(pl.Binary).to_list() if isinstance(ids, pl.Series) else [i.encode("utf-8") for i in ids]
    digests = np.fromiter(map(xxhash.xxh64_intdigest, encoded), dtype=np.uint64, count=len(encoded))
    return digests < np.uint64(limit) if limit < 2**64 else np.ones(len(encoded), dtype=bool)


def _row_hashes(frame: pl.DataFrame, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    key = pl.struct([pl.col(c) for c in texts])
    hashed = frame.select(key.hash(_HASH_SEEDS[0]).alias("h1"), key.hash(_HASH_SEEDS[1]).alias("h2"))
    return hashed.get_column("h1").to_numpy(), hashed.get_column("h2").to_numpy()


def _reason_counts(reasons: pl.Series) -> dict[str, int]:
    """How many rows carry each drop reason (null, a kept row, is not counted)."""
    counts = reasons.drop_nulls().value_counts()
    return dict(zip(counts.get_column(reasons.name).to_list(), counts.get_column("count").to_list()))


@dataclass
class _CleanedBatch:
    """Candidate rows after cleaning: how many came in, the drops by reason, the kept
    rows (None when none) and their dedup hashes (None without dedup)."""

    rows: int
    dropped: shard_io.DropTally
    kept: pl.DataFrame | None
    hashes: tuple[np.ndarray, np.ndarray] | None


class _KeptRows:
    """The cleaning half of building a dataset: candidate rows in, kept rows out.

    ``add`` counts the candidates a source already rejected, cleans and filters the
    rest (counting each drop by reason), appends the kept rows to Arrow files and
    returns their dedup hashes. Used by :class:`_DatasetBuilder`, and by
    :func:`stage_file` for a row-local dataset's part of one file (``close`` then saves
    the hashes and the tally beside the rows).
    """

    def __init__(self, spec: DatasetSpec, config: IngestConfig, kept_dir: Path, part_dir: Path | None = None) -> None:
        self.spec = spec
        self.config = config
        self.texts = ["anchor", "positive"] + (["negative"] if spec.with_negative else [])
        self.kept_columns = self.texts + ["id", "source_file", "source_line"]
        self.part_dir = part_dir
        self.kept = spill.FrameFiles(kept_dir, fresh=True)
        self.dropped = shard_io.DropTally()
        self.rows_read = 0
        self.kept_rows = 0
        self._hashes: list[tuple[np.ndarray, np.ndarray]] = []

    def clean(self, frame: pl.DataFrame) -> "_CleanedBatch":
        """Clean and filter candidate rows; a pure function of ``frame`` (it may run on
        any thread, while :meth:`record` takes the results in order)."""
        dropped = shard_io.DropTally()
        rows = frame.height
        if not rows:
            return _CleanedBatch(0, dropped, None, None)
        reasons = frame.get_column("drop_reason")
        if reasons.null_count() < rows:  # rows the source already rejected: counted, set aside
            dropped.update(_reason_counts(reasons))
            frame = frame.filter(reasons.is_null())
        if self.spec.with_negative:
            frame = set_reason(frame, pl.col("negative").is_null(), "missing_negative")
        frame = clean_and_filter(frame, self.config.filters)
        dropped.update(_reason_counts(frame.get_column("drop_reason")))
        kept = frame.filter(pl.col("drop_reason").is_null()).select(self.kept_columns)
        if not kept.height:
            return _CleanedBatch(rows, dropped, None, None)
        # Which split a row goes to depends on its id alone: decided here, where the
        # rows are cleaned (while the input is still being read), not when shards are written.
        kept = kept.with_columns(pl.Series(_HELDOUT, heldout_mask(kept.get_column("id"), self.config.heldout_fraction)))
        return _CleanedBatch(rows, dropped, kept, _row_hashes(kept, self.texts) if self.config.dedup else None)

    def record(self, batch: "_CleanedBatch") -> tuple[np.ndarray, np.ndarray] | None:
        """Count a cleaned batch and append its kept rows; their dedup hashes."""
        self.rows_read += batch.rows
        self.dropped.update(batch.dropped.as_dict())
        if batch.kept is None:
            return None
        self.kept.write(batch.kept)
        self.kept_rows += batch.kept.height
        return batch.hashes

    def add(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """Take the next candidate rows (one per unit of input); the kept rows' hashes."""
        return self.record(self.clean(frame))

    def add_and_keep_hashes(self, frame: pl.DataFrame) -> None:
        hashes = self.add(frame)
        if hashes is not None:
            self._hashes.append(hashes)

    def close(self) -> None:
        """Save the hashes and the tally of a staged part (``hashes.npy``, ``part.json``)."""
        assert self.part_dir is not None, "only a staged part is closed"
        if self._hashes:
            stacked = np.stack([np.concatenate([h[0] for h in self._hashes]), np.concatenate([h[1] for h in self._hashes])])
            np.save(self.part_dir / _PART_HASHES, stacked.astype(np.uint64), allow_pickle=False)
        tally = {"rows_read": self.rows_read, "rows_kept": self.kept_rows, "dropped": self.dropped.as_dict()}
        shard_io.atomic_write_json(self.part_dir / _PART_TALLY, tally)


class _DatasetBuilder:
    """One dataset in the making: fed candidate batches, then :meth:`finish` writes it.

    ``add`` counts the candidates a source already rejected, cleans and filters the
    rest, hashes the kept rows for exact dedup and appends them to a temporary Arrow
    file; ``finish`` drops the duplicates, splits off the held-out rows, writes the
    shards, the quarantine and (last) the manifest.
    """

    def __init__(self, spec: DatasetSpec, stages: list[StagedFile], folder: Path, config: IngestConfig) -> None:
        if spec.inputs is not None:
            # A dataset made from some of the inputs owns only their bad rows and failures.
            stages = [stages[i] for i in spec.inputs]
        self.spec = spec
        self.stages = stages
        self.folder = folder
        self.config = config
        shard_io.remove_stale_shards(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.cleaned = _KeptRows(spec, config, folder / ".kept")
        self.dropped = self.cleaned.dropped
        if spec.counts_unreadable:
            for stage in stages:
                self.dropped.update(stage.bad_rows)
                self.cleaned.rows_read += sum(stage.bad_rows.values())
        self.absorbed = False
        self.absorbed_files: list[Path] = []
        self.absorbed_rows = 0
        self.deduplicator = ExactDeduplicator(n_buckets=config.dedup_buckets, work_dir=folder) if config.dedup else None

    @property
    def rows_read(self) -> int:
        return self.cleaned.rows_read

    @property
    def kept_rows(self) -> int:
        return self.absorbed_rows + self.cleaned.kept_rows

    def add(self, frame: pl.DataFrame) -> None:
        """Take the next candidate rows (one per unit of input)."""
        self.add_cleaned(self.cleaned.clean(frame))

    def add_cleaned(self, batch: _CleanedBatch) -> None:
        """Take the next candidate rows, already cleaned (:meth:`_KeptRows.clean`)."""
        hashes = self.cleaned.record(batch)
        if hashes is not None and self.deduplicator is not None:
            self.deduplicator.add(*hashes)

    def absorb(self, part: Path) -> None:
        """Take a part cleaned while a file was staged (see :class:`_KeptRows`)."""
        tally = json.loads((part / _PART_TALLY).read_text())
        self.cleaned.rows_read += tally["rows_read"]
        self.dropped.update(tally["dropped"])
        self.absorbed_files += spill.FrameFiles(part / _PART_KEPT, create=False).files()
        self.absorbed_rows += tally["rows_kept"]
        if self.deduplicator is not None and tally["rows_kept"]:
            hashes = np.load(part / _PART_HASHES, allow_pickle=False)
            self.deduplicator.add(hashes[0], hashes[1])

    def finish(
        self,
        entries: list[dict[str, Any]],
        failures: list[dict[str, Any]],
        resolved: dict[str, Any],
        hash_: str,
        source: str,
        progress: bool,
        map_partitions: MapPartitions = map,
    ) -> dict[str, Any]:
        """Dedup, split, write the shards and the manifest; return the manifest."""
        spec, config, folder = self.spec, self.config, self.folder
        if spec.inputs is not None:
            failures = [{"path": s.input["path"], "error": s.failure} for s in self.stages if s.failure]
        if self.deduplicator is not None:
            keep = self.deduplicator.keep_mask(map_partitions=map_partitions)
        else:
            keep = np.ones(self.kept_rows, dtype=bool)
        self.dropped.add("duplicate", int((~keep).sum()))
        schema = arrow_schema(spec.with_negative)
        train = shard_io.ShardWriter(folder, schema, config.rows_per_shard, background=True)
        heldout = shard_io.ShardWriter(folder, schema, config.rows_per_shard, prefix="heldout", background=True)
        near_filter = NearDuplicateFilter(config.near_dedup_threshold) if config.near_dedup else None
        offset = 0
        for frame in spill.read_batches(self.absorbed_files + self.cleaned.kept.files(), batch_rows=1):
            rows = frame.height
            frame = frame.filter(pl.Series(keep[offset : offset + rows]))
            offset += rows
            if near_filter is not None and frame.height:
                mask = near_filter.keep([f"{a} {p}" for a, p in zip(frame["anchor"], frame["positive"])])
                self.dropped.add("near_duplicate", int((~mask).sum()))
                frame = frame.filter(pl.Series(mask))
            is_heldout = frame.get_column(_HELDOUT)
            frame = frame.drop(_HELDOUT)
            train.write(frame.filter(~is_heldout).to_arrow())
            heldout.write(frame.filter(is_heldout).to_arrow())
            release_free_memory()
        train_shards, heldout_shards = train.close(), heldout.close()
        shutil.rmtree(self.cleaned.kept.folder, ignore_errors=True)
        quarantine_rows = (
            _merge_quarantine(self.stages, folder / shard_io.QUARANTINE_NAME) if spec.counts_unreadable else 0
        )
        rows_train = sum(s.rows for s in train_shards)
        rows_heldout = sum(s.rows for s in heldout_shards)
        manifest = {
            "dataset": spec.name,
            "source": source,
            "stage": "ingest",
            "unit": spec.unit,
            "rows_read": self.rows_read,
            "rows_kept": rows_train + rows_heldout,
            "rows_train": rows_train,
            "rows_heldout": rows_heldout,
            "dropped": self.dropped.as_dict(),
            "columns": shard_columns(spec.with_negative),
            "shards": [s.as_dict() for s in train_shards + heldout_shards],
            "inputs": entries,
            "failures": failures,
            "quarantine": {"path": shard_io.QUARANTINE_NAME, "rows": quarantine_rows},
            "config": resolved,
            "config_hash": hash_,
            "versions": shard_io.library_versions("orjson", "xxhash", "zstandard", "datasketch"),
        }
        shard_io.check_accounting(manifest)
        shard_io.atomic_write_json(folder / shard_io.MANIFEST_NAME, manifest)
        return manifest


def _spill_in_input_order(candidates: pl.LazyFrame, path: Path) -> int:
    """Write a source's candidate rows to an Arrow file in input order; return the row count.

    Sources mostly produce rows in (file, line) order already; the sort, which holds
    every row, is paid only when they do not.
    """
    candidates.sink_ipc(path)
    keys = pl.scan_ipc(path).select(
        (pl.col("_file_index").cast(pl.Int64) * (1 << 40) + pl.col("source_line").cast(pl.Int64)).alias("key")
    ).collect()
    total = keys.height
    if total and not keys.get_column("key").is_sorted():
        ordered = path.with_name(path.name + ".sorted")
        pl.scan_ipc(path).sort(["_file_index", "source_line"], maintain_order=True).sink_ipc(ordered)
        os.replace(ordered, path)
    return total


def _merge_quarantine(stages: list[StagedFile], path: Path) -> int:
    rows = 0
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as out:
        for stage in stages:
            source = stage.folder / "quarantine.jsonl"
            if source.exists():
                data = source.read_bytes()
                out.write(data)
                rows += data.count(b"\n")
    os.replace(tmp, path)
    return rows


@dataclass
class IngestResult:
    """What :func:`ingest` did: the manifests written, and the inputs that failed."""

    manifests: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    skipped: bool = False


def ingest(
    source: str,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: IngestConfig | None = None,
    progress: bool = True,
) -> IngestResult:
    """Stage every input file of a source, then finalize its datasets (see the module doc).

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: an unknown source or option.
    """
    from tqdm import tqdm

    config = config or IngestConfig()
    get_source(source)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError(f"no input files given for source {source!r}")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    out = Path(out_dir)
    check = up_to_date(source, paths, out, config)
    if check.manifests is not None:
        return IngestResult(check.manifests, _all_failures(check.manifests), skipped=True)
    entries = check.entries
    work_dir = out / STAGING_DIR / source
    staged = []
    for index, path in enumerate(tqdm(paths, desc=f"{source}: read", unit="file", disable=not progress)):
        staged.append(stage_file(source, path, work_dir, config, index, entries[index] if entries else None, paths))
    manifests = finalize_source(source, staged, paths, out, config, progress=progress)
    shutil.rmtree(work_dir, ignore_errors=True)
    if work_dir.parent.exists() and not any(work_dir.parent.iterdir()):
        work_dir.parent.rmdir()
    return IngestResult(manifests, _all_failures(manifests))


def _all_failures(manifests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The failed inputs named in any manifest, once each (a dataset may own some inputs only)."""
    failures: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        for failure in manifest["failures"]:
            failures.setdefault(failure["path"], failure)
    return list(failures.values())


def summary_table(manifests: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of each dataset: read, kept (train / held out), dropped by reason."""
    lines = []
    width = max([len("dataset")] + [len(m["dataset"]) for m in manifests])
    header = f"{'dataset':<{width}} {'unit':<14} {'read':>10} {'kept':>10} {'train':>10} {'heldout':>8}  dropped by reason"
    lines.append(header)
    lines.append("-" * len(header))
    for m in manifests:
        reasons = ", ".join(f"{r}={n:,}" for r, n in sorted(m["dropped"].items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(
            f"{m['dataset']:<{width}} {m['unit']:<14} {m['rows_read']:>10,} {m['rows_kept']:>10,}"
            f" {m['rows_train']:>10,} {m['rows_heldout']:>8,}  {reasons or '-'}"
        )
    return "\n".join(lines)


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pairforge ingest``."""
    from pipeline.sources import SOURCES

    parser.add_argument("source", choices=sorted(SOURCES), help="the source format of the inputs")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="input files (or SentEval folders)")
    parser.add_argument("--out", required=True, type=Path, help="corpus folder: one subfolder per dataset")
    defaults = IngestConfig()
    parser.add_argument("--min-chars", type=int, default=defaults.filters.min_chars, help="drop texts shorter than this")
    parser.add_argument("--max-chars", type=int, default=defaults.filters.max_chars, help="drop texts longer than this")
    parser.add_argument("--keep-equal-pairs", action="store_true", help="keep pairs whose anchor equals the positive")
    parser.add_argument("--no-dedup", action="store_true", help="keep exact duplicate pairs")
    parser.add_argument("--near-dedup", action="store_true", help="also drop near-duplicate pairs (MinHash)")
    parser.add_argument("--near-dedup-threshold", type=float, default=defaults.near_dedup_threshold)
    parser.add_argument("--heldout-fraction", type=float, default=defaults.heldout_fraction)
    parser.add_argument("--rows-per-shard", type=int, default=defaults.rows_per_shard)
    parser.add_argument("--max-line-bytes", type=int, default=defaults.max_line_bytes)
    parser.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="a source option, e.g. -o min_score=2"
    )
    parser.add_argument(
        "--datasets",
        default=None,
        metavar="NAME[,NAME...]",
        help="build only these of the source's datasets (default: all), e.g. --datasets nli-pairs",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    """An :class:`IngestConfig` from parsed ``pairforge ingest`` arguments."""
    options = {}
    for item in args.option:
        if "=" not in item:
            raise ValueError(f"--option takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    config = IngestConfig(
        filters=TextFilters(args.min_chars, args.max_chars, not args.keep_equal_pairs),
        dedup=not args.no_dedup,
        near_dedup=args.near_dedup,
        near_dedup_threshold=args.near_dedup_threshold,
        heldout_fraction=args.heldout_fraction,
        rows_per_shard=args.rows_per_shard,
        max_line_bytes=args.max_line_bytes,
        source_options=options,
        datasets=tuple(n.strip() for n in args.datasets.split(",") if n.strip()) if args.datasets else None,
    )
    source_options(args.source, options)
    return config


def ingest_command(args: argparse.Namespace) -> int:
    """Run ``pairforge ingest``; exit 1 when an input file failed, else 0."""
    config = config_from_args(args)
    result = ingest(args.source, args.inputs, args.out, config, progress=not args.quiet)
    if result.skipped:
        print(f"{args.source}: inputs and config unchanged since the last build; nothing to do.")
    print(summary_table(result.manifests))
    quarantined = sum(m["quarantine"]["rows"] for m in result.manifests)
    print(f"\nwritten to {args.out}/ ({len(result.manifests)} datasets; {quarantined:,} quarantined rows)")
    for failure in result.failures:
        print(f"FAILED: {failure['error']}", file=sys.stderr)
    return 1 if result.failures else 0
