"""What decides an ingest's output: :class:`IngestConfig`, a source's options, the datasets planned.

In: config values (from the command line, a flow's JSON parameters, or code). Out: a
frozen :class:`IngestConfig` whose resolved form (with the source's options filled
in) and hash go into every manifest, the source's ``Options``, and the datasets a
source makes of its inputs under that config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.corpus.shards import DEFAULT_ROWS_PER_SHARD
from pipeline.ingest.normalize import TextFilters
from pipeline.ingest.sources import DatasetSpec, get_source
from pipeline.io.context import DEFAULT_MAX_LINE_BYTES, JSONL_READERS, JsonlReader


@dataclass(frozen=True)
class IngestConfig:
    """Everything that decides an ingest's output; saved, with its hash, in each manifest.

    Attributes:
        filters: cleaning length bounds and pair rules.
        dedup: remove exact duplicate pairs (after cleaning) across all input files.
        near_dedup: also remove near-duplicates (MinHash LSH on anchor + positive).
        near_dedup_threshold: estimated Jaccard similarity at which a pair is a near-duplicate.
        heldout_fraction: share of rows (by a hash of their id) kept apart for evaluation.
        rows_per_shard: the most rows one Parquet shard holds.
        max_line_bytes: longer input lines are dropped as ``line_too_long``.
        dedup_buckets: hash partitions for exact dedup (bounds its memory).
        source_options: the source's own options, by name.
        datasets: build only these of the source's datasets (None: all). A selection,
            not a transformation: it is not part of the manifests' config, so a
            dataset's files are the same bytes whichever others are built beside it.
        jsonl_reader: how JSON lines are read: ``auto`` (a clean plain file of text
            fields in one pass by DuckDB, about half the CPU; a file it meets a bad
            line in is read again chunked) or ``chunked`` (always 16 MiB chunks through
            polars). The same rows and bytes either way, so, like ``datasets``, it is
            not part of the manifests' config.
    """

    filters: TextFilters = field(default_factory=TextFilters)
    dedup: bool = True
    near_dedup: bool = False
    near_dedup_threshold: float = 0.9
    heldout_fraction: float = 0.05
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    dedup_buckets: int = 64
    source_options: Mapping[str, Any] = field(default_factory=dict, metadata={"flag": ("-o", "--option"), "pairs": True})
    datasets: tuple[str, ...] | None = field(default=None, metadata={"split": ",", "metavar": "NAME[,NAME...]"})
    jsonl_reader: JsonlReader = "auto"

    # Fields that choose what is built or how fast, never what a dataset holds.
    UNRECORDED = ("datasets", "jsonl_reader")

    def __post_init__(self) -> None:
        if self.jsonl_reader not in JSONL_READERS:
            raise ValueError(f"jsonl_reader must be one of {', '.join(JSONL_READERS)}, got {self.jsonl_reader!r}")
        if self.datasets is not None:
            names = (self.datasets,) if isinstance(self.datasets, str) else tuple(self.datasets)
            if not names:
                raise ValueError("datasets: name at least one dataset, or leave it unset for all")
            object.__setattr__(self, "datasets", names)
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if not 0.0 < self.near_dedup_threshold <= 1.0:
            raise ValueError(f"near_dedup_threshold must be in (0, 1], got {self.near_dedup_threshold}")

    def resolved(self, source: str) -> dict[str, Any]:
        """The config as plain JSON data, with the source's options filled with defaults."""
        data = dataclasses.asdict(self)
        for name in self.UNRECORDED:
            del data[name]
        if data["filters"]["clean_text"]:
            # recorded only when off: cleaning is the default every manifest assumes
            del data["filters"]["clean_text"]
        data["source"] = source
        data["source_options"] = dataclasses.asdict(source_options(source, self.source_options))
        return data


def source_options(source: str, values: Mapping[str, Any]) -> Any:
    """Build a source's ``Options`` from ``values``, converting strings to the field types.

    Raises:
        ValueError: an option the source does not have, or a value of the wrong type.
    """
    module = get_source(source)
    fields = {f.name: f for f in dataclasses.fields(module.Options)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ValueError(f"source {source!r} has no option {', '.join(unknown)} (its options: {known})")
    converted = {}
    for name, value in values.items():
        converted[name] = _convert_option(name, value, fields[name].type)
    return module.Options(**converted)


def _convert_option(name: str, value: Any, annotation: Any) -> Any:
    if not isinstance(value, str):
        return value
    kind = str(annotation)
    try:
        if "int" in kind:
            return None if value.lower() == "none" else int(value)
        if "float" in kind:
            return None if value.lower() == "none" else float(value)
        if "bool" in kind:
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError(value)
    except ValueError:
        raise ValueError(f"option {name}: cannot read {value!r} as {kind}") from None
    return value


def planned_datasets(source: str, inputs: Sequence[Path], config: IngestConfig) -> list[DatasetSpec]:
    """The datasets ``ingest`` would write for these inputs (those of ``config.datasets``).

    Raises:
        ValueError: ``config.datasets`` names a dataset these inputs do not make.
    """
    module = get_source(source)
    specs = module.dataset_specs([Path(p) for p in inputs], source_options(source, config.source_options))
    if config.datasets is None:
        return specs
    unknown = sorted(set(config.datasets) - {spec.name for spec in specs})
    if unknown:
        known = ", ".join(spec.name for spec in specs)
        raise ValueError(f"source {source!r} makes no dataset {', '.join(unknown)} from these inputs (it makes: {known})")
    return [spec for spec in specs if spec.name in config.datasets]
