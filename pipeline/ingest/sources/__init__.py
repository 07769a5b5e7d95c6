"""Source modules, registered by hand: one module per source, all with the same shape.

Every source module defines:

``NAME``
    the source's name on the command line.
``Options``
    a frozen dataclass of the source's own options (defaults for all fields).
``dataset_specs(inputs, options) -> list[DatasetSpec]``
    the datasets the source writes for these inputs, each with its unit of input.
``stage_file(path, ctx, options) -> Iterator[pl.DataFrame]``
    read ONE input file (through :mod:`pipeline.io`) and yield batches of the
    source's staged rows: any columns the source needs later, plus ``_line``.
    Unreadable rows go to ``ctx.reject``.
``build_candidates(staged, options) -> dict[str, pl.LazyFrame]``
    from the staged rows of all input files (a LazyFrame with ``_file_index`` and
    ``source_file`` added), one LazyFrame per dataset name, ONE ROW PER UNIT OF INPUT,
    with columns ``anchor``, ``positive``, [``negative``], ``id``, ``source_file``,
    ``source_line``, ``_file_index`` and ``drop_reason`` (null for a candidate pair,
    else why the unit gives no pair). It may be called on a batch or a partition of
    the staged rows when the dataset's spec says that gives the same rows
    (``row_local``, ``partition_key``). Cleaning, length filters, dedup and the
    held-out split happen after, in :mod:`pipeline.ingest.build`.
``candidate_batches(dataset, staged_files, work_dir, options) -> Iterator[pl.DataFrame]``
    (only for datasets whose spec says ``streamed``) the same rows as
    ``build_candidates``, in batches with bounded memory: the source partitions the
    staged files itself (Reddit's two-key parent lookup).
``FIELDS``
    what a row of the source holds (``"paper_id/title/abstract"``), named by the
    error on a file of which no row could be read: ``... has no row with the s2orc
    fields paper_id/title/abstract: is it a s2orc file?``.

and may define:

``FOLDER_INPUTS = True``
    a folder is an input (a SentEval split, SPECTER's pair of files); other sources
    refuse folders.
``check_input(path)``
    raise :class:`~pipeline.io.errors.InputLayoutError` when ``path`` is not laid out
    as the source reads it (a missing companion file, a file name it does not read),
    before anything is read (:func:`pipeline.ingest.plan.check_inputs`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset a source writes.

    Attributes:
        name: the dataset folder name (``nli-pairs``); a single path segment.
        unit: what one unit of input is (``line``, ``comment``, ``citation edge``).
        counts_unreadable: whether unreadable rows of the input count as units of
            this dataset (a bad line is a lost line, but not a lost citation edge).
        with_negative: whether rows carry a ``negative`` column.
        inputs: positions in the input list of the files this dataset is made from
            (a source writing one dataset per file); only their unreadable rows,
            quarantine and failures are the dataset's. None: all inputs.
        row_local: each candidate row depends on its own staged row only, so
            candidates are built batch by batch (bounded memory, input order).
        partition_key: a staged column such that the candidates of rows sharing its
            value depend only on those rows (every join and "first of" rule is within
            it): candidates are built per hash partition of it, one partition in
            memory at a time; output is partition after partition, input order
            within each. None (and not row_local): built over all staged rows at once.
        streamed: the source module defines ``candidate_batches(dataset, staged_files,
            work_dir, options)``, which yields this dataset's candidate rows in
            batches with bounded memory (its own partitioning: a join on two keys).
    """

    name: str
    unit: str
    counts_unreadable: bool = True
    with_negative: bool = False
    inputs: tuple[int, ...] | None = None
    row_local: bool = False
    partition_key: str | None = None
    streamed: bool = False


# Each source's module, imported when the source is first asked for: a command loads
# only the parsers of the source it reads.
SOURCES: tuple[str, ...] = ("nli", "pairs", "qqp", "reddit", "s2orc", "specter")


def get_source(name: str) -> ModuleType:
    """The source module called ``name``.

    Raises:
        ValueError: no such source (the message lists the known ones).
    """
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}")
    return importlib.import_module(f"pipeline.ingest.sources.{name}")
