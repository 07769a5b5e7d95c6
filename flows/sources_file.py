"""Sources files: the ``[{"source", "inputs"}]`` JSON a run builds its corpus from.

In: a JSON file such as ``examples/sources.json``. Out: the list the parent flow takes,
each input path resolved (see :func:`read_sources_file`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES_FILE = PROJECT_ROOT / "examples" / "sources.json"


def absolute_path(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute against the working folder, ``..`` folded, symlinks kept as given."""
    return os.path.abspath(os.fspath(path))


def absolute_sources(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``sources`` with every input path absolute (:func:`absolute_path`); other keys kept.

    The flows name inputs by absolute path: a flow's tasks may run in other processes
    and on other hosts (Dask workers, deployment runs) whose working folder is not the
    caller's, and the names end up in manifests, shards and build.json, where they must
    mean the same file from any working folder (``pairforge verify`` rebuilds from them).
    """
    return [{**entry, "inputs": [absolute_path(p) for p in entry["inputs"]]} for entry in sources]


def read_sources_file(path: Path) -> list[dict[str, Any]]:
    """The ``[{"source", "inputs"}]`` list of a sources file, each input an absolute path.

    A relative input path is taken from the current folder when it exists there;
    otherwise relative to the folder above the sources file (the project root for
    ``examples/sources.json``). Either way it is returned absolute (see
    :func:`absolute_sources`).

    Raises:
        FileNotFoundError: the file or one of its inputs does not exist.
        ValueError: the file is not a list of ``{"source", "inputs"}`` objects.
    """
    if not path.is_file():
        raise FileNotFoundError(f"sources file not found: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not entries or not all(
        isinstance(e, dict) and {"source", "inputs"} <= e.keys() and isinstance(e["source"], str)
        and isinstance(e["inputs"], list) and all(isinstance(p, str) for p in e["inputs"])
        for e in entries
    ):  # fmt: skip
        raise ValueError(f'{path}: expected a non-empty list of {{"source": NAME, "inputs": [PATH, ...]}} objects')
    base = path.resolve().parent.parent
    resolved = []
    for entry in entries:
        inputs = []
        for raw in entry["inputs"]:
            candidate = Path(raw)
            if not candidate.is_absolute() and not candidate.exists():
                candidate = base / raw
            if not candidate.exists():
                raise FileNotFoundError(f"{path}: input of source {entry['source']!r} not found: {raw}")
            inputs.append(absolute_path(candidate))
        resolved.append({"source": entry["source"], "inputs": inputs})
    return resolved
