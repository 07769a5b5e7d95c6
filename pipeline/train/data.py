"""Training data: a corpus and its data_config.json in; each dataset's training rows out.

In: a corpus root and a data_config.json naming datasets of it with integer weights.
Out: :class:`TrainingData`: the validated entries, each dataset's training rows (the
shards its manifest lists, never ``heldout/``) as an Arrow table of its text columns,
and the fingerprints that go into the run's hash.
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


@dataclass
class TrainingData:
    """The datasets of a run, loaded: names, weights, in-memory tables, fingerprints."""

    entries: list[DataConfigEntry]
    tables: list[Any]
    columns: list[list[str]]
    fingerprints: dict[str, Any]

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables)


def load_training_data(corpus_dir: str | os.PathLike[str], data_config_path: str | os.PathLike[str]) -> TrainingData:
    """Validate a data_config.json against the corpus and read each dataset's train shards.

    Shards come from the manifest's list, leaving out ``heldout/``; each must exist with
    its recorded row count, and a dataset's rows must add up to its ``rows_train``.

    Raises:
        FileNotFoundError: the config, the corpus or a shard is missing.
        ValueError: the config does not validate, or a dataset is empty or inconsistent.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    entries = load_data_config(data_config_path, corpus_dir=corpus_dir)
    tables, columns, fingerprints = [], [], {}
    for entry in entries:
        folder = dataset_folder(corpus_dir, entry.name)
        manifest = read_manifest(folder)
        cols = text_columns(manifest.get("columns", []))
        train_shards = [s for s in manifest["shards"] if not s["path"].startswith(HELDOUT_DIR + "/")]
        parts = []
        for shard in train_shards:
            path = folder / shard["path"]
            if not path.is_file():
                raise FileNotFoundError(f"{folder / 'manifest.json'} lists a shard that is missing: {path}")
            table = pq.read_table(path, columns=cols)
            if table.num_rows != shard["rows"]:
                raise ValueError(f"{path}: {table.num_rows} rows but the manifest says {shard['rows']}")
            parts.append(table)
        rows = sum(t.num_rows for t in parts)
        if rows != manifest["rows_train"]:
            raise ValueError(f"{folder}: train shards hold {rows} rows but rows_train is {manifest['rows_train']}")
        if rows == 0:
            raise ValueError(f"dataset {entry.name!r} has no training rows: remove it from {data_config_path}")
        table = pa.concat_tables(parts).combine_chunks()
        tables.append(table.cast(pa.schema([pa.field(c, pa.string()) for c in cols])))
        columns.append(cols)
        fingerprints[entry.name] = {
            "rows_train": rows,
            "config_hash": manifest.get("config_hash"),
            "shards": [{"path": s["path"], "sha256": s["sha256"]} for s in train_shards],
        }
    return TrainingData(entries=entries, tables=tables, columns=columns, fingerprints=fingerprints)
