"""A dataset folder's manifest: what went in, what came out, what was dropped and why.

In: a finished stage's counts, shards, inputs and resolved config. Out:
``manifest.json`` in the dataset folder, written last (a folder with a manifest is
complete), by :meth:`Manifest.write`, which refuses a manifest whose rows do not add
up: ``rows_read == rows_kept + sum(dropped.values())``, always.

Every stage (ingest, mine, the curation steps) writes the same core fields; a stage's
own statistics go in :attr:`Manifest.sections` (mining's ``mining`` and
``mined_from``), written beside the core fields. docs/corpus-format.md describes each.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from pipeline.corpus.files import atomic_write_json, file_sha256

MANIFEST_NAME = "manifest.json"
QUARANTINE_NAME = "quarantine.jsonl"
# Histograms of a step's scores drawn beside its manifest (mining, rescoring).
SCORE_PLOT_NAME = "scores.png"


class AccountingError(ValueError):
    """A stage's rows do not add up: rows read != rows kept + rows dropped."""


@dataclass
class DropTally:
    """Counts of rows dropped, by reason; the accounting every step reports."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n

    def update(self, other: Mapping[str, int]) -> None:
        for reason, n in other.items():
            self.add(reason, int(n))

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """Reason → count, sorted by reason (stable bytes in manifests)."""
        return {reason: int(self.counts[reason]) for reason in sorted(self.counts) if self.counts[reason]}


@dataclass
class Manifest:
    """The record a stage writes into each dataset folder it finishes.

    Attributes:
        dataset: the dataset's folder name.
        source: the source module the rows came from (``nli``, ``reddit``...).
        stage: the stage that wrote the folder (``ingest``, ``mine``...).
        unit: what one row read is (``line``, ``comment``, ``pair``...).
        rows_read: units read.
        rows_kept: rows written (train + held out).
        rows_train: rows in the training shards.
        rows_heldout: rows in ``heldout/``.
        dropped: units dropped, by reason.
        columns: the shards' columns, in order.
        shards: ``{path, rows, sha256}`` of every shard, training shards first.
        inputs: ``{path, bytes, sha256}`` of every input.
        failures: ``{path, error}`` of inputs that could not be read to their end.
        quarantine: ``{path, rows}`` of the quarantine file (path None when there is none).
        config: the resolved config of the stage.
        config_hash: the SHA-256 of ``config``'s canonical JSON.
        versions: library versions.
        sections: the stage's own statistics, written as top-level keys beside the
            fields above (mining's ``mining`` and ``mined_from``).
    """

    dataset: str
    source: str | None
    stage: str
    unit: str
    rows_read: int
    rows_kept: int
    rows_train: int
    rows_heldout: int
    dropped: dict[str, int]
    columns: list[str]
    shards: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    quarantine: dict[str, Any]
    config: dict[str, Any]
    config_hash: str
    versions: dict[str, str]
    sections: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The manifest as the JSON object written (sections beside the core fields)."""
        core = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sections"}
        clash = sorted(set(core) & set(self.sections))
        if clash:
            raise ValueError(f"manifest sections may not reuse core field names: {', '.join(clash)}")
        return core | self.sections

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """A manifest read back: the core fields, and every other key as a section."""
        names = {f.name for f in fields(cls)} - {"sections"}
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"manifest lacks field(s) {', '.join(missing)}")
        return cls(**{name: data[name] for name in names}, sections={k: v for k, v in data.items() if k not in names})

    def write(self, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """Check the accounting, then write ``manifest.json`` into ``folder``; return what was written.

        Raises:
            AccountingError: the rows do not add up.
        """
        value = self.as_dict()
        check_accounting(value)
        atomic_write_json(Path(folder) / MANIFEST_NAME, value)
        return value


def check_accounting(manifest: Mapping[str, Any]) -> None:
    """Raise :class:`AccountingError` unless ``rows_read == rows_kept + sum(dropped)``."""
    dropped = sum(manifest["dropped"].values())
    if manifest["rows_read"] != manifest["rows_kept"] + dropped:
        raise AccountingError(
            f"accounting broken: rows_read={manifest['rows_read']} but rows_kept={manifest['rows_kept']}"
            f" + dropped={dropped}"
        )


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a dataset folder, or None when the folder has none (incomplete).

    Raises:
        ValueError: ``manifest.json`` is not valid JSON (the message names it).
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid manifest ({exc})") from None


def shards_intact(folder: str | os.PathLike[str], manifest: Mapping[str, Any]) -> bool:
    """True when every shard the manifest lists exists with the recorded hash."""
    base = Path(folder)
    for shard in manifest.get("shards", []):
        path = base / shard["path"]
        if not path.exists() or file_sha256(path) != shard["sha256"]:
            return False
    return True


def matching_manifest(
    folder: str | os.PathLike[str], inputs: list[dict[str, Any]], hash_: str, stage: str | None = None
) -> dict[str, Any] | None:
    """The folder's manifest when it records these inputs and config hash (and
    ``stage``) and its shards are intact: the step that wrote it need not run again."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("inputs") != inputs or manifest.get("config_hash") != hash_:
        return None
    if stage is not None and manifest.get("stage") != stage:
        return None
    return manifest if shards_intact(folder, manifest) else None


def source_record(source_manifest: Mapping[str, Any], source_dir: Path, out_dir: Path) -> dict[str, Any]:
    """What a derived dataset's manifest says of the dataset it was made from (``mined_from``, ``curated_from``):
    its name, its path relative to the output's corpus root, its stage and config hash."""
    return {
        "dataset": source_manifest.get("dataset"),
        "path": os.path.relpath(source_dir, out_dir.parent),
        "stage": source_manifest.get("stage"),
        "config_hash": source_manifest.get("config_hash"),
    }


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``pairforge`` always included)."""
    from importlib import metadata

    from pipeline import __version__

    versions = {"pairforge": __version__}
    for name in sorted(set(names) | {"pyarrow", "polars"}):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
