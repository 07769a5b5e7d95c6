"""data_config.json: dataset sizes and a weight policy in, a validated sampling config out.

In: a corpus root (dataset folders, each with ``manifest.json``; see
docs/corpus-format.md) and a :class:`WeightPolicy`. Out: ``data_config.json``, a JSON
list of ``{name, lines, weight}`` entries in the 1B-pairs project's format (name = the
dataset folder relative to the corpus root, lines = its training rows, weight = a
positive integer), and a sidecar ``data_config.meta.json`` recording the policy, its
hash, each dataset's raw weight and share of batches, and what was left out and why.

:func:`load_data_config` reads and validates such a file, ours or one of the 1B
project's (format only when no corpus root is given; against the manifests when one
is). Every problem found is reported at once, each naming the file and the entry.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Mapping

from pipeline.shards import MANIFEST_NAME, DropTally, atomic_write_bytes, atomic_write_json, config_hash, read_manifest

META_SUFFIX = ".meta.json"
PolicyKind = Literal["proportional", "temperature", "uniform", "explicit"]
POLICY_KINDS: tuple[str, ...] = ("proportional", "temperature", "uniform", "explicit")


@dataclass(frozen=True)
class WeightPolicy:
    """How dataset sizes become integer sampling weights.

    The raw weight of a dataset is ``min(lines, size_cap) ** alpha`` (``alpha`` = 1 for
    ``proportional``, 0 for ``uniform``, the given value for ``temperature``, i.e.
    ``alpha = 1 / T``); raw weights are scaled so the largest becomes ``scale``, rounded,
    then clipped to ``[min_weight, max_weight]``. ``explicit`` takes ``weights`` as given
    (``default_weight`` for datasets it does not name; without one they are an error).

    Attributes:
        kind: ``proportional``, ``temperature``, ``uniform`` or ``explicit``.
        alpha: the size exponent of ``temperature`` (0 < alpha <= 1 flattens the mix).
        size_cap: T5's artificial dataset-size limit K: sizes above it count as K.
        scale: the integer weight of the heaviest dataset before clipping.
        min_weight: the least weight a dataset gets (at least 1).
        max_weight: the most weight a dataset gets, or None for no cap.
        weights: dataset name -> weight for ``explicit``.
        default_weight: the weight of a dataset ``explicit`` does not name, or None.
        exclude: dataset names or shell patterns (``reddit/*``) left out of the config.
        prefer_mined: leave out a pair dataset whose mined version (the same pairs with
            hard negatives, ``pairforge mine``) is in the corpus, so its pairs are not
            sampled twice.
    """

    kind: PolicyKind = "proportional"
    alpha: float = 1.0
    size_cap: int | None = None
    scale: int = 1000
    min_weight: int = 1
    max_weight: int | None = None
    weights: Mapping[str, int] = field(default_factory=dict)
    default_weight: int | None = None
    exclude: tuple[str, ...] = ()
    prefer_mined: bool = True

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"unknown weight policy {self.kind!r}; choose one of {', '.join(POLICY_KINDS)}")
        if self.kind == "temperature" and not 0 < self.alpha <= 1:
            raise ValueError(f"temperature alpha must be in (0, 1], got {self.alpha}")
        if self.scale < 1 or self.min_weight < 1:
            raise ValueError(f"scale and min_weight must be at least 1, got {self.scale} and {self.min_weight}")
        if self.max_weight is not None and self.max_weight < self.min_weight:
            raise ValueError(f"max_weight {self.max_weight} is below min_weight {self.min_weight}")
        if self.size_cap is not None and self.size_cap < 1:
            raise ValueError(f"size_cap must be at least 1, got {self.size_cap}")
        for name, weight in self.weights.items():
            if not _is_positive_int(weight):
                raise ValueError(f"weight of {name!r} must be a positive integer, got {weight!r}")
        if self.default_weight is not None and not _is_positive_int(self.default_weight):
            raise ValueError(f"default_weight must be a positive integer, got {self.default_weight!r}")
        if self.weights and self.kind != "explicit":
            raise ValueError("per-dataset weights are only used by the explicit policy")

    def as_dict(self) -> dict[str, Any]:
        """The policy as plain JSON values (weights sorted by name)."""
        value = asdict(self)
        value["weights"] = {name: int(self.weights[name]) for name in sorted(self.weights)}
        value["exclude"] = list(self.exclude)
        return value

    def exponent(self) -> float:
        """The size exponent this policy applies."""
        return {"proportional": 1.0, "uniform": 0.0, "temperature": self.alpha}.get(self.kind, 1.0)


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


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "heldout")
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


def compute_weights(sizes: Mapping[str, int], policy: WeightPolicy) -> tuple[dict[str, int], dict[str, float]]:
    """Integer weights and raw (unrounded) weights for datasets of the given sizes.

    Args:
        sizes: dataset name -> training rows (all positive).
        policy: the weight policy.

    Returns:
        ``(weights, raw_weights)``, both keyed like ``sizes``.

    Raises:
        ValueError: ``explicit`` without a weight for some dataset and no default.
    """
    if policy.kind == "explicit":
        unknown = sorted(set(policy.weights) - set(sizes))
        if unknown:
            raise ValueError(f"weights given for datasets not in the corpus: {', '.join(unknown)}")
        missing = sorted(n for n in sizes if n not in policy.weights)
        if missing and policy.default_weight is None:
            raise ValueError(f"explicit policy has no weight for: {', '.join(missing)} (give --default-weight)")
        raw = {n: float(policy.weights.get(n, policy.default_weight or 0)) for n in sizes}
        return {n: int(w) for n, w in raw.items()}, raw
    exponent = policy.exponent()
    raw = {}
    for name, lines in sizes.items():
        capped = min(lines, policy.size_cap) if policy.size_cap else lines
        raw[name] = float(capped) ** exponent
    top = max(raw.values())
    weights = {}
    for name, value in raw.items():
        weight = max(policy.min_weight, int(math.floor(policy.scale * value / top + 0.5)))
        weights[name] = min(weight, policy.max_weight) if policy.max_weight else weight
    return weights, raw


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


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
    """
    manifests = discover_datasets(corpus_dir)
    dropped = DropTally()
    sizes: dict[str, int] = {}
    mined_sources = {
        Path(m["mined_from"]["path"]).as_posix()
        for m in manifests.values()
        if m.get("stage") == "mine" and (m.get("mined_from") or {}).get("path")
    }
    for name, manifest in manifests.items():
        if _excluded(name, policy.exclude):
            dropped.add("excluded")
        elif policy.prefer_mined and name in mined_sources:
            dropped.add("replaced_by_mined")
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
        ValueError: every problem found, one per line, each naming the file and entry.
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
        where = f"{config_path}: entry {index}"
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
        if not _is_positive_int(weight):
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
        raise ValueError(f"{config_path}: {len(problems)} problem(s):\n" + "\n".join(problems))
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
