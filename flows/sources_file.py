"""Sources files: the ``[{"source", "inputs"}]`` JSON a run builds its corpus from.

In: a JSON file such as ``examples/sources.json``. Out: the list the parent flow takes,
each input path resolved (see :func:`read_sources_file`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES_FILE = PROJECT_ROOT / "examples" / "sources.json"


def read_sources_file(path: Path) -> list[dict[str, Any]]:
    """The ``[{"source", "inputs"}]`` list of a sources file, inputs resolved.

    A relative input path is kept as written when it exists from the current folder
    (so manifests name it as the user did); otherwise it is taken relative to the
    folder above the sources file (the project root for ``examples/sources.json``).

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
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"source", "inputs"} <= e.keys() for e in entries):
        raise ValueError(f'{path}: expected a list of {{"source": NAME, "inputs": [PATH, ...]}} objects')
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
            inputs.append(str(candidate))
        resolved.append({"source": entry["source"], "inputs": inputs})
    return resolved
