"""Finalizing: the staged files of a source in; its finished dataset folders out.

In: the staged folders of every input file of a source (:mod:`pipeline.ingest.stage`),
the input list, the corpus folder and the :class:`~pipeline.ingest.config.IngestConfig`.
Out: one dataset folder per dataset the source makes (shards, ``heldout/``,
``quarantine.jsonl``, ``manifest.json`` written last), and their manifests. A dataset
whose manifest already matches its inputs (by SHA-256) and config is left as it is.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import polars as pl

from pipeline.corpus.files import config_hash
from pipeline.corpus.manifest import matching_manifest
from pipeline.ingest.build import CleanedBatch, DatasetBuilder, MapPartitions
from pipeline.ingest.config import IngestConfig, planned_datasets, source_options
from pipeline.ingest.sources import get_source
from pipeline.ingest.stage import STAGED_ROWS, read_stage
from pipeline.io import spill
from pipeline.io.parallel import ordered_map
from pipeline.memory import trimmed

# At most this many partitions (or streamed batches) are joined and cleaned at once
# (fewer when polars has fewer threads); ordered_map holds twice as many in memory.
_MAX_JOIN_WORKERS = 4


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
    :class:`pipeline.ingest.sources.DatasetSpec`), so memory stays bounded where it can:

    * ``row_local``: batch by batch over the staged rows, in input order; every such
      dataset of the source is fed from the same pass;
    * ``partition_key``: the staged rows are spread over hash partitions of that
      column on disk, and each partition's candidates are built on their own
      (partition after partition, input order within one);
    * ``streamed``: the source's own ``candidate_batches`` (a join on two keys, as
      Reddit's parent lookup, partitioned by the source);
    * otherwise the whole source at once (a polars join over all staged rows).

    ``map_partitions`` runs the exact-dedup partitions (an executor's map spreads
    them over a cluster; :meth:`pipeline.ingest.dedup.ExactDeduplicator.keep_mask`).
    """
    from tqdm import tqdm

    module = get_source(source)
    options = source_options(source, config.source_options)
    stages = [read_stage(Path(f)) for f in staged]
    entries = [dict(s.input) for s in stages]
    resolved = config.resolved(source)
    hash_ = config_hash(resolved)
    staged_files = [file for s in stages for file in spill.FrameFiles(s.folder / STAGED_ROWS, create=False).files()]
    failures = [{"path": s.input["path"], "error": s.failure} for s in stages if s.failure]
    specs = planned_datasets(source, inputs, config)
    manifests: dict[str, dict[str, Any]] = {}
    builders: dict[str, DatasetBuilder] = {}
    for spec in specs:
        folder = Path(out_dir) / spec.name
        existing = matching_manifest(folder, entries, hash_)
        if existing is not None:
            manifests[spec.name] = existing
        else:
            builders[spec.name] = DatasetBuilder(spec, stages, folder, config)
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
        bar.close()

    def build_partitioned(builder: DatasetBuilder) -> None:
        # Partitions are independent: several are joined and cleaned at once on worker
        # threads (_join_workers), and taken in order here.
        def join_and_clean(part: pl.DataFrame) -> CleanedBatch:
            return builder.cleaned.clean(module.build_candidates(part.lazy(), options)[builder.spec.name].collect())

        bar = tqdm(total=total_rows, desc=f"{builder.spec.name}: join", unit="row", disable=not progress, leave=False)
        partitions = _key_partitions(staged_files, builder.spec.partition_key, builder.folder)
        for part, cleaned in trimmed(ordered_map(join_and_clean, partitions, workers=_join_workers())):
            builder.add_cleaned(cleaned)
            bar.update(part.height)
        bar.close()

    def build_streamed(builder: DatasetBuilder) -> None:
        bar = tqdm(total=total_rows, desc=f"{builder.spec.name}: join", unit="row", disable=not progress, leave=False)
        batches = module.candidate_batches(builder.spec.name, staged_files, builder.folder, options)
        for frame, cleaned in trimmed(ordered_map(builder.cleaned.clean, batches, workers=_join_workers())):
            builder.add_cleaned(cleaned)
            bar.update(frame.height)
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
        DatasetBuilder.finish,
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


def _join_workers() -> int:
    return max(1, min(_MAX_JOIN_WORKERS, pl.thread_pool_size()))


def _key_partitions(paths: Sequence[Path], key: str, work_dir: Path) -> Iterator[pl.DataFrame]:
    """The staged rows split by a hash of column ``key``, one partition at a time
    (:func:`pipeline.io.spill.key_partitions`; the count follows the staged size)."""
    n_parts = spill.partition_count(paths)
    for _, rows in spill.key_partitions(paths, pl.col(key), n_parts, work_dir):
        yield rows


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
