"""data_config.json: dataset sizes and a weight policy in, a validated sampling config out.

In: a corpus root (dataset folders, each with ``manifest.json``; see
docs/corpus-format.md) and a :class:`~pipeline.sampling.policies.WeightPolicy`. Out:
``data_config.json``, a JSON list of ``{name, lines, weight}`` entries in the 1B-pairs
project's format (name = the dataset folder relative to the corpus root, lines = its
training rows, weight = a positive integer), and a sidecar ``data_config.meta.json``
recording the policy, its hash, each dataset's raw weight and share of batches, and
what was left out and why.

:func:`load_data_config` reads and validates such a file, ours or one of the 1B
project's (format only when no corpus root is given; against the manifests when one
is). Every problem found is reported at once, each naming the file and the entry.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.corpus.files import atomic_write_bytes, atomic_write_json, config_hash
from pipeline.corpus.folders import dataset_folder, discover_datasets, name_problem
from pipeline.corpus.manifest import MANIFEST_NAME, DropTally, read_manifest
from pipeline.sampling.policies import WeightPolicy, compute_weights, is_positive_int

DATA_CONFIG_NAME = "data_config.json"
META_SUFFIX = ".meta.json"


@dataclass(frozen=True)
class DataConfigEntry:
    """One validated entry of a data_config.json.

    Attributes:
        name: the dataset's path relative to the corpus root (may contain ``/``).
        lines: its training rows, or None when the file leaves them out (some 1B configs do).
        weight: its positive integer sampling weight.
        extra: any further keys the entry carried, kept as they were.
    """

    name: str
    lines: int | None
    weight: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The entry in the 1B key order: name, lines, weight, then extras."""
        value: dict[str, Any] = {"name": self.name}
        if self.lines is not None:
            value["lines"] = self.lines
        value["weight"] = self.weight
        value.update(self.extra)
        return value


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _derived_sources(manifests: Mapping[str, Mapping[str, Any]], key: str) -> set[str]:
    """The names of the datasets another dataset of the corpus was made from (``mined_from`` / ``curated_from``)."""
    return {Path(m[key]["path"]).as_posix() for m in manifests.values() if (m.get(key) or {}).get("path")}


def write_data_config(
    corpus_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], policy: WeightPolicy
) -> list[dict[str, Any]]:
    """Write ``data_config.json`` for every dataset of a corpus, and its ``.meta.json`` sidecar.

    Datasets with no training rows and those the policy excludes are left out and
    counted by reason in the sidecar. Entries are sorted by name; the file is
    indented like the 1B project's and written atomically, the sidecar last.

    Args:
        corpus_dir: the corpus root.
        out_path: where to write the config (the sidecar goes next to it).
        policy: how weights are computed.

    Returns:
        The entries written, ``[{name, lines, weight}, ...]``.

    Raises:
        FileNotFoundError: the corpus root does not exist.
        ValueError: no dataset is left to sample, or the policy does not fit the corpus.

    Example::

        from pipeline import WeightPolicy, write_data_config

        entries = write_data_config("corpus/", "corpus/data_config.json", WeightPolicy(kind="temperature", alpha=0.5))
        print(entries)  # [{"name": "nli-pairs", "lines": 3564, "weight": 1000}, ...]
    """
    manifests = discover_datasets(corpus_dir)
    dropped = DropTally()
    sizes: dict[str, int] = {}
    mined_sources = _derived_sources(manifests, "mined_from")
    curated_sources = _derived_sources(manifests, "curated_from")
    for name, manifest in manifests.items():
        if _excluded(name, policy.exclude):
            dropped.add("excluded")
        elif policy.prefer_mined and name in mined_sources:
            dropped.add("replaced_by_mined")
        elif policy.prefer_curated and name in curated_sources:
            dropped.add("replaced_by_curated")
        elif int(manifest["rows_train"]) <= 0:
            dropped.add("no_train_rows")
        else:
            sizes[name] = int(manifest["rows_train"])
    if not sizes:
        raise ValueError(f"no dataset with training rows under {corpus_dir} ({len(manifests)} found, {dropped.as_dict()})")
    weights, raw = compute_weights(sizes, policy)
    entries = [{"name": n, "lines": sizes[n], "weight": weights[n]} for n in sizes]
    out = Path(out_path)
    text = json.dumps(entries, indent=4, ensure_ascii=False) + "\n"
    atomic_write_bytes(out, text.encode("utf-8"))
    total = sum(weights.values())
    policy_dict = policy.as_dict()
    meta = {
        "corpus_dir": str(corpus_dir),
        "data_config": out.name,
        "policy": policy_dict,
        "policy_hash": config_hash(policy_dict),
        "datasets_found": len(manifests),
        "datasets_written": len(entries),
        "dropped": dropped.as_dict(),
        "datasets": [
            {
                "name": n,
                "lines": sizes[n],
                "weight": weights[n],
                "raw_weight": round(raw[n], 6),
                "batch_share": round(weights[n] / total, 6),
                "manifest_config_hash": manifests[n].get("config_hash"),
            }
            for n in sizes
        ],
    }
    atomic_write_json(meta_path(out), meta)
    return entries


def meta_path(config_path: str | os.PathLike[str]) -> Path:
    """The sidecar of a config: ``data_config.json`` -> ``data_config.meta.json``."""
    path = Path(config_path)
    stem = path.name[:-5] if path.name.endswith(".json") else path.name
    return path.with_name(stem + META_SUFFIX)


def load_data_config(
    path: str | os.PathLike[str], corpus_dir: str | os.PathLike[str] | None = None
) -> list[DataConfigEntry]:
    """Read and validate a data_config.json (ours or the 1B project's).

    Without ``corpus_dir`` only the format is checked: a non-empty JSON list of objects
    with a safe relative ``name``, a positive integer ``weight``, an optional
    non-negative integer ``lines``, no duplicate names. With it, each name must also be
    a complete dataset folder inside the root whose manifest's ``rows_train`` equals
    ``lines`` (a missing ``lines`` is taken from the manifest).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: every problem found, in one line naming the file, then each entry and its problem.
    """
    config_path = Path(path)
    if not config_path.is_file():
        raise FileNotFoundError(f"data config not found: {config_path}")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{config_path}: expected a non-empty JSON list of {{name, lines, weight}} entries")
    problems: list[str] = []
    entries: list[DataConfigEntry] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"entry {index}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, got {type(item).__name__}")
            continue
        name = item.get("name")
        where = f"{where} ({name!r})"
        entry_problems = []
        if problem := name_problem(name):
            entry_problems.append(problem)
        elif name in seen:
            entry_problems.append("duplicate name")
        weight = item.get("weight")
        if not is_positive_int(weight):
            entry_problems.append(f"weight must be a positive integer, got {weight!r}")
        lines = item.get("lines")
        if lines is not None and (not isinstance(lines, int) or isinstance(lines, bool) or lines < 0):
            entry_problems.append(f"lines must be a non-negative integer, got {lines!r}")
        if not entry_problems and corpus_dir is not None:
            lines, problem = _check_against_corpus(corpus_dir, name, lines)
            if problem:
                entry_problems.append(problem)
        if entry_problems:
            problems.extend(f"{where}: {p}" for p in entry_problems)
            continue
        seen.add(name)
        extra = {k: v for k, v in item.items() if k not in ("name", "lines", "weight")}
        entries.append(DataConfigEntry(name=name, lines=lines, weight=weight, extra=extra))
    if problems:
        raise ValueError(f"{config_path}: {len(problems)} problem(s): " + "; ".join(problems))
    return entries


def _check_against_corpus(
    corpus_dir: str | os.PathLike[str], name: str, lines: int | None
) -> tuple[int | None, str | None]:
    try:
        folder = dataset_folder(corpus_dir, name)
    except ValueError as exc:
        return lines, str(exc)
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        return lines, f"missing dataset: no {MANIFEST_NAME} in {folder}"
    rows_train = manifest.get("rows_train")
    if lines is None:
        return rows_train, None
    if rows_train != lines:
        return lines, f"lines {lines} does not match rows_train {rows_train} in {folder / MANIFEST_NAME}"
    return lines, None
