"""Building one dataset: candidate rows in; cleaned, deduplicated, split shards and a manifest out.

In: a source's candidate rows for one dataset (one row per unit of input, with a
``drop_reason`` where the source already rejected the unit), in input order. Out: the
dataset folder: training shards, ``heldout/`` shards, ``quarantine.jsonl`` and the
manifest, written last.

1. :class:`KeptRows` cleans and filters each batch (every drop counted by reason),
   decides each kept row's split from its id (:func:`heldout_mask`), hashes it for
   dedup and appends it to Arrow files; while a file is staged it does this for that
   file's part of a row-local dataset, and saves the part's hashes and tally;
2. :class:`DatasetBuilder` collects the batches (and staged parts) of a dataset,
   then :meth:`DatasetBuilder.finish` drops exact (and near) duplicates across all
   files, writes the shards, merges the quarantine and writes the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import polars as pl

from pipeline.corpus.files import atomic_write_json
from pipeline.corpus.manifest import QUARANTINE_NAME, DropTally, Manifest, library_versions
from pipeline.corpus.schema import arrow_schema, shard_columns
from pipeline.corpus.shards import HELDOUT_DIR, ShardWriter, remove_stale_shards
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.dedup import ExactDeduplicator, NearDuplicateFilter
from pipeline.ingest.normalize import clean_and_filter, set_reason
from pipeline.ingest.sources import DatasetSpec
from pipeline.io import spill

if TYPE_CHECKING:  # stage.py builds parts with KeptRows: imported only for types here
    from pipeline.ingest.stage import StagedFile

PART_KEPT = "kept"
_PART_HASHES = "hashes.npy"
_PART_TALLY = "part.json"
_HELDOUT = "_heldout"  # kept rows carry their split until the shards are written
_HASH_SEEDS = (0x5EED_0001, 0x5EED_0002)

# ``map`` over the exact-dedup partition files (an executor's map spreads them over a cluster).
MapPartitions = Callable[[Callable[[Path], np.ndarray], list[Path]], Iterable[np.ndarray]]


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
class CleanedBatch:
    """Candidate rows after cleaning: how many came in, the drops by reason, the kept
    rows (None when none) and their dedup hashes (None without dedup)."""

    rows: int
    dropped: DropTally
    kept: pl.DataFrame | None
    hashes: tuple[np.ndarray, np.ndarray] | None


class KeptRows:
    """The cleaning half of building a dataset: candidate rows in, kept rows out.

    ``add`` counts the candidates a source already rejected, cleans and filters the
    rest (counting each drop by reason), appends the kept rows to Arrow files and
    returns their dedup hashes. Used by :class:`DatasetBuilder`, and by
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
        self.dropped = DropTally()
        self.rows_read = 0
        self.kept_rows = 0
        self._hashes: list[tuple[np.ndarray, np.ndarray]] = []

    def clean(self, frame: pl.DataFrame) -> "CleanedBatch":
        """Clean and filter candidate rows; a pure function of ``frame`` (it may run on
        any thread, while :meth:`record` takes the results in order)."""
        dropped = DropTally()
        rows = frame.height
        if not rows:
            return CleanedBatch(0, dropped, None, None)
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
            return CleanedBatch(rows, dropped, None, None)
        # Which split a row goes to depends on its id alone: decided here, where the
        # rows are cleaned (while the input is still being read), not when shards are written.
        kept = kept.with_columns(pl.Series(_HELDOUT, heldout_mask(kept.get_column("id"), self.config.heldout_fraction)))
        return CleanedBatch(rows, dropped, kept, _row_hashes(kept, self.texts) if self.config.dedup else None)

    def record(self, batch: "CleanedBatch") -> tuple[np.ndarray, np.ndarray] | None:
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
        atomic_write_json(self.part_dir / _PART_TALLY, tally)


class DatasetBuilder:
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
        remove_stale_shards(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.cleaned = KeptRows(spec, config, folder / ".kept")
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

    def add_cleaned(self, batch: CleanedBatch) -> None:
        """Take the next candidate rows, already cleaned (:meth:`KeptRows.clean`)."""
        hashes = self.cleaned.record(batch)
        if hashes is not None and self.deduplicator is not None:
            self.deduplicator.add(*hashes)

    def absorb(self, part: Path) -> None:
        """Take a part cleaned while a file was staged (see :class:`KeptRows`)."""
        tally = json.loads((part / _PART_TALLY).read_text())
        self.cleaned.rows_read += tally["rows_read"]
        self.dropped.update(tally["dropped"])
        self.absorbed_files += spill.FrameFiles(part / PART_KEPT, create=False).files()
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
        train = ShardWriter(folder, schema, config.rows_per_shard, background=True)
        heldout = ShardWriter(folder, schema, config.rows_per_shard, prefix=HELDOUT_DIR, background=True)
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
        train_shards, heldout_shards = train.close(), heldout.close()
        shutil.rmtree(self.cleaned.kept.folder, ignore_errors=True)
        quarantine_rows = (
            _merge_quarantine(self.stages, folder / QUARANTINE_NAME) if spec.counts_unreadable else 0
        )
        rows_train = sum(s.rows for s in train_shards)
        rows_heldout = sum(s.rows for s in heldout_shards)
        manifest = Manifest(
            dataset=spec.name,
            source=source,
            stage="ingest",
            unit=spec.unit,
            rows_read=self.rows_read,
            rows_kept=rows_train + rows_heldout,
            rows_train=rows_train,
            rows_heldout=rows_heldout,
            dropped=self.dropped.as_dict(),
            columns=shard_columns(spec.with_negative),
            shards=[s.as_dict() for s in train_shards + heldout_shards],
            inputs=entries,
            failures=failures,
            quarantine={"path": QUARANTINE_NAME, "rows": quarantine_rows},
            config=resolved,
            config_hash=hash_,
            versions=library_versions("orjson", "xxhash", "zstandard", "datasketch"),
        )
        return manifest.write(folder)


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
