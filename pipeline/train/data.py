"""Training data: a corpus and its data_config.json in; each dataset's training shards out.

In: a corpus root and a data_config.json naming datasets of it with integer weights.
Out: :func:`training_datasets`, one :class:`TrainingDataset` per entry (the shards its
manifest lists, never ``heldout/``, with their rows and hashes; its text columns),
validated against the manifests without reading a row, and the fingerprints that go
into the run's hash (:func:`training_fingerprints`). Two loaders read the rows:

* ``stream`` (:mod:`pipeline.train.stream`): a window of rows at a time, memory bounded
  whatever the corpus size;
* ``memory`` (:func:`load_training_data` here): every shard of every dataset into one
  Arrow table per dataset, for sentence-transformers' stock map-style trainer path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pipeline.corpus.folders import dataset_folder
from pipeline.corpus.manifest import read_manifest
from pipeline.corpus.schema import text_columns
from pipeline.corpus.shards import HELDOUT_DIR
from pipeline.sampling.data_config import DataConfigEntry, load_data_config
from pipeline.train.verify import ShardRef, ShardVerifier, VerifyMode, check_shards_present


@dataclass(frozen=True)
class TrainingDataset:
    """One dataset of a run: its config entry, text columns and training shards (manifest order)."""

    entry: DataConfigEntry
    columns: list[str]
    shards: list[ShardRef]
    config_hash: str | None

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


@dataclass
class TrainingData:
    """The datasets of a run, loaded into memory: names, weights, tables, fingerprints."""

    entries: list[DataConfigEntry]
    tables: list[Any]
    columns: list[list[str]]
    fingerprints: dict[str, Any]
    verify: dict[str, Any] | None = None

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables)


def training_datasets(
    corpus_dir: str | os.PathLike[str], data_config_path: str | os.PathLike[str]
) -> list[TrainingDataset]:
    """Validate a data_config.json against the corpus; each entry's training shards, from its manifest.

    Shards come from the manifest's list, leaving out ``heldout/``; their rows must add
    up to the manifest's ``rows_train``. No shard is opened here.

    Raises:
        FileNotFoundError: the config or the corpus is missing.
        ValueError: the config does not validate, or a dataset is empty or inconsistent.
    """
    datasets = []
    for entry in load_data_config(data_config_path, corpus_dir=corpus_dir):
        folder = dataset_folder(corpus_dir, entry.name)
        manifest = read_manifest(folder)
        listed = [s for s in manifest["shards"] if not s["path"].startswith(HELDOUT_DIR + "/")]
        shards = [ShardRef(folder / s["path"], int(s["rows"]), s["sha256"], folder / "manifest.json") for s in listed]
        rows = sum(s.rows for s in shards)
        if rows != manifest["rows_train"]:
            raise ValueError(f"{folder}: train shards hold {rows} rows but rows_train is {manifest['rows_train']}")
        if rows == 0:
            raise ValueError(f"dataset {entry.name!r} has no training rows: remove it from {data_config_path}")
        datasets.append(TrainingDataset(entry, text_columns(manifest.get("columns", [])), shards, manifest.get("config_hash")))
    return datasets


def training_fingerprints(datasets: list[TrainingDataset]) -> dict[str, Any]:
    """What identifies each dataset's training rows: its row count, config hash and shard hashes."""
    return {
        d.entry.name: {
            "rows_train": d.rows,
            "config_hash": d.config_hash,
            "shards": [{"path": str(s.path.relative_to(s.manifest.parent)), "sha256": s.sha256} for s in d.shards],
        }
        for d in datasets
    }


def load_training_data(
    corpus_dir: str | os.PathLike[str], data_config_path: str | os.PathLike[str], verify: VerifyMode = "upfront"
) -> TrainingData:
    """Validate a data_config.json against the corpus and read each dataset's train shards into memory.

    Args:
        corpus_dir: the corpus root.
        data_config_path: a data_config.json naming datasets of that corpus.
        verify: ``off`` to skip the shards' SHA-256 check; otherwise every shard is
            hashed before it is read (reading everything first, this loader has no
            use for a background check).

    Raises:
        FileNotFoundError: the config or the corpus is missing.
        ValueError: the config does not validate, a dataset is empty or inconsistent,
            or a shard is missing, truncated or not the file its manifest describes
            (:class:`~pipeline.train.verify.ShardError`).
    """
    return read_training_tables(training_datasets(corpus_dir, data_config_path), verify)


def read_training_tables(datasets: list[TrainingDataset], verify: VerifyMode = "upfront") -> TrainingData:
    """Every training row of ``datasets`` in memory, one Arrow table of text columns per dataset.

    Shards are checked first (present, whole, and unless ``verify`` is ``off`` their
    SHA-256), then read. Raises as :func:`load_training_data`.
    """
    import pyarrow as pa

    from pipeline.train.verify import open_shard

    every_shard = [s for d in datasets for s in d.shards]
    check_shards_present(every_shard)
    with ShardVerifier(every_shard, "off" if verify == "off" else "upfront") as verifier:
        tables = []
        for dataset in datasets:
            parts = [open_shard(s).read(columns=dataset.columns) for s in dataset.shards]
            table = pa.concat_tables(parts).combine_chunks()
            tables.append(table.cast(pa.schema([pa.field(c, pa.string()) for c in dataset.columns])))
    return TrainingData(
        entries=[d.entry for d in datasets],
        tables=tables,
        columns=[d.columns for d in datasets],
        fingerprints=training_fingerprints(datasets),
        verify=verifier.report(),
    )
