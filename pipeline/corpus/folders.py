"""Dataset folders under a corpus root: names that cannot escape it, and discovery.

In: a corpus root and dataset names (paths relative to the root, possibly with
``/``, as in the 1B-pairs project's configs). Out: the folder of a name, refused when
it would resolve outside the root (``..``, absolute paths, symlinks out), every
complete dataset folder of a root with its manifest, a folder's rows as
:class:`~pipeline.corpus.schema.PairRecord` objects, and the check every
folder-to-folder step (mining, curation) makes of its input and output folders
(:func:`check_step_folders`).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from pipeline.corpus.manifest import MANIFEST_NAME, read_manifest
from pipeline.corpus.schema import PairRecord
from pipeline.corpus.shards import HELDOUT_DIR, shard_paths


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a dataset name (relative, inside the root), or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return f"name must be a non-empty string, got {name!r}"
    if "\\" in name or "\x00" in name:
        return f"name {name!r} holds a backslash or NUL"
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("~"):
        return f"name {name!r} is absolute; names are relative to the corpus root"
    if any(part in ("..", ".") for part in path.parts) or name.endswith("/"):
        return f"name {name!r} escapes or is not normalised under the corpus root"
    return None


def dataset_folder(corpus_dir: str | os.PathLike[str], name: str) -> Path:
    """The folder of dataset ``name`` under ``corpus_dir``, refusing names that escape it.

    Raises:
        ValueError: the name is malformed, or it resolves (symlinks included) outside the root.
    """
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    root = Path(corpus_dir).resolve()
    folder = (root / name).resolve()
    if folder != root and root not in folder.parents:
        raise ValueError(f"name {name!r} resolves outside the corpus root {root}")
    return folder


def discover_datasets(corpus_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every complete dataset folder under ``corpus_dir``: name -> manifest, sorted by name.

    A folder counts when it holds ``manifest.json``; hidden folders and ``heldout/``
    folders are not searched.

    Raises:
        FileNotFoundError: ``corpus_dir`` is not a folder.
    """
    root = Path(corpus_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {root}")
    found: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != HELDOUT_DIR)
        if MANIFEST_NAME in filenames:
            name = Path(dirpath).relative_to(root).as_posix()
            if name == ".":
                raise ValueError(f"{root} is a dataset folder, not a corpus root: pass its parent")
            dataset_folder(root, name)
            manifest = read_manifest(dirpath)
            if "rows_train" not in manifest:
                raise ValueError(f"{Path(dirpath) / MANIFEST_NAME}: no rows_train field")
            found[name] = manifest
    return dict(sorted(found.items()))


def check_step_folders(dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The input dataset's manifest, once the input is complete and the output cannot overwrite it.

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder.
        ValueError: the input has no manifest (incomplete), or ``out_dir`` is the input,
            inside it, or holds it.
    """
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {dataset_dir}")
    source_manifest = read_manifest(dataset_dir)
    if source_manifest is None:
        raise ValueError(f"{dataset_dir / MANIFEST_NAME}: missing; the dataset folder is incomplete (rerun its stage)")
    source, out = dataset_dir.resolve(), out_dir.resolve()
    if out == source or source in out.parents:
        raise ValueError(f"--out {out_dir} must not be the input dataset folder or inside it")
    if out in source.parents:
        raise ValueError(f"--out {out_dir} must not contain the input dataset folder {dataset_dir}")
    return source_manifest


def read_records(folder: str | os.PathLike[str], split: str = "train") -> Iterator[PairRecord]:
    """The rows of a dataset folder's ``split`` (``train`` or ``heldout``) as records, in shard order."""
    import pyarrow.parquet as pq

    for path in shard_paths(folder, split):
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                yield PairRecord.from_row(row)
