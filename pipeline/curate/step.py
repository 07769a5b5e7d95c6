"""What every curation step shares: a dataset folder in; its judged rows, quarantine and manifest out.

In: a complete dataset folder (training shards ``part-*.parquet``; ``heldout/`` is never
read), an output folder, the step's name and frozen config, and the step's judgement of
the rows (:class:`Verdict`: a drop reason or None per row, quarantine details, the
step's statistics). Out, in the output folder: shards of the kept rows (the input's
columns, in input order), ``quarantine.jsonl`` (one line per dropped row: ``id``,
``source_file``, ``source_line``, ``reason`` and the step's details), an optional PNG,
and ``manifest.json`` last, with ``stage`` = the step, ``rows_read == rows_kept +
sum(dropped)``, the step's section and ``curated_from`` (the input dataset).

The steps of :mod:`pipeline.curate` run as (:func:`run_step`):

1. :func:`prepare_step`: check the folders, hash the inputs (shards relative to the
   corpus root, like mining; evaluation files as given), resolve the config and decide
   whether the output is already up to date (then nothing else runs);
2. the step reads :func:`read_step_pairs` and judges them (its own module);
3. :func:`write_step_output`: shards, quarantine, plot, then the manifest.

Every step's function takes the same arguments: ``dataset_dir`` (a complete dataset
folder), ``out_dir`` (the output dataset folder, created; a previous output
replaced), ``config`` (the step's frozen config), ``force`` (run even when the
output's manifest already matches), ``echo`` (where the ``skipped:`` line goes; None
for silence) and ``progress`` (progress bars); the model steps also ``cache_dir`` (the
embedding cache root, mining's by default), ``device`` (None: a GPU when one is
visible) and ``encoder`` (``auto``, ``numpy``, ``numpy-mkl``, ``numpy-openblas`` or
``torch``). Each returns the manifest it wrote, or the existing one with ``skipped``
added (in the returned dict, not the file), and raises FileNotFoundError for a
missing folder, model or input, ValueError for an incomplete or empty dataset or an
output that would overwrite the input.

:func:`embed_rows` is the one call the model steps make for embeddings: through
:class:`~pipeline.embed.embedder.Embedder`, so a text that mining (or another step)
embedded with the same model is read from the cache, not encoded again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.corpus.files import atomic_write_bytes, config_hash, input_entries, relative_input_entries
from pipeline.corpus.folders import check_step_folders
from pipeline.corpus.manifest import QUARANTINE_NAME, DropTally, Manifest, library_versions, matching_manifest, source_record
from pipeline.corpus.schema import PROVENANCE_COLUMNS, negative_columns
from pipeline.corpus.shards import DEFAULT_ROWS_PER_SHARD, ShardWriter, remove_stale_shards, shard_paths

Echo = Callable[[str], None]
WORK_DIR = ".curate-work"


@dataclass(frozen=True)
class StepRun:
    """One step on one dataset, between its checks and its output.

    Attributes:
        stage: the step's name (``decontaminate``, ``consistency``, ``semantic_dedup``, ``rescore``).
        dataset_dir, out_dir: absolute folders.
        source_manifest: the input dataset's manifest.
        resolved: the resolved config (the step's fields plus what else decides its output).
        resolved_hash: its hash.
        inputs: ``{path, bytes, sha256}`` of every input (shards and evaluation files).
        skipped_manifest: the existing manifest when the output is already up to date.
    """

    stage: str
    dataset_dir: Path
    out_dir: Path
    source_manifest: dict[str, Any]
    resolved: dict[str, Any]
    resolved_hash: str
    inputs: list[dict[str, Any]]
    skipped_manifest: dict[str, Any] | None = None

    @property
    def work_dir(self) -> Path:
        """The step's scratch folder (removed when the output is written)."""
        return self.out_dir / WORK_DIR

    def fresh_work_dir(self) -> Path:
        """The scratch folder, emptied (a killed run's leftovers go)."""
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        return self.work_dir


@dataclass
class Verdict:
    """A step's judgement of the rows it read.

    Attributes:
        reasons: one entry per row read: the drop reason, or None to keep the row.
        details: quarantine columns per row (only dropped rows' values are written);
            None for none.
        section: the step's statistics, written in the manifest under the step's section name.
        plot: PNG bytes written beside the manifest (the section names it), or None.
    """

    reasons: pl.Series
    details: pl.DataFrame | None = None
    section: dict[str, Any] = field(default_factory=dict)
    plot: bytes | None = None


def config_values(config: Any) -> dict[str, Any]:
    """A frozen config as JSON-ready values (tuples as lists)."""
    values = asdict(config) if is_dataclass(config) else dict(config)
    return json.loads(json.dumps(values, default=list))


def prepare_step(
    stage: str,
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: Any,
    resolved_extra: dict[str, Any] | None = None,
    corpus_files: Sequence[Path] = (),
    outside_files: Sequence[str] = (),
    force: bool = False,
    echo: Echo | None = print,
) -> StepRun:
    """Check the folders, hash the inputs, resolve the config, and decide whether to skip.

    Args:
        stage: the step's name (the manifest's ``stage``).
        dataset_dir: the input dataset folder.
        out_dir: the output dataset folder.
        config: the step's frozen config.
        resolved_extra: what else decides the output (model fingerprints...).
        corpus_files: further input shards (an extra corpus), recorded relative to the corpus root.
        outside_files: files outside the corpus (evaluation sets), recorded as given.
        force: run even when the output's manifest matches.
        echo: where the ``skipped:`` line goes.

    Raises:
        FileNotFoundError: the input folder is missing.
        ValueError: the input is incomplete or has no training rows, or ``out_dir`` would overwrite it.
    """
    source, out = Path(dataset_dir).resolve(), Path(out_dir).resolve()
    source_manifest = check_step_folders(Path(dataset_dir), Path(out_dir))
    train_files = shard_paths(source, "train")
    if not train_files:
        raise ValueError(f"{dataset_dir}: no training shards (part-*.parquet) to curate")
    resolved = {**config_values(config), **(resolved_extra or {}), "source_config_hash": source_manifest.get("config_hash")}
    inputs = relative_input_entries([*train_files, *corpus_files], out.parent) + input_entries(outside_files)
    run = StepRun(stage, source, out, source_manifest, resolved, config_hash(resolved), inputs)
    existing = None if force else matching_manifest(out, inputs, run.resolved_hash, stage=stage)
    if existing is not None and echo is not None:
        echo(f"skipped: {out} already holds this {stage} run (config {run.resolved_hash[:12]}); use --force to redo it")
    return replace(run, skipped_manifest=existing)


def read_step_pairs(run: StepRun) -> pl.DataFrame:
    """The input's training rows: ``anchor, positive[, negatives], id, source_file, source_line``, in order."""
    from pipeline.mining.texts import read_pairs

    pairs, _ = read_pairs(run.dataset_dir)
    if len(pairs) == 0:
        raise ValueError(f"{run.dataset_dir}: no training rows to curate")
    return pairs


def _schema(columns: Sequence[str]) -> pa.Schema:
    """The shards' schema: the input's text columns, then provenance, as the corpus writes them."""
    texts = ["anchor", "positive", *negative_columns(columns)]
    fields = [pa.field(name, pa.string(), nullable=False) for name in [*texts, "id", "source_file"]]
    return pa.schema([*fields, pa.field("source_line", pa.int64(), nullable=False)])


def _write_quarantine(path: Path, dropped: pl.DataFrame) -> int:
    """``quarantine.jsonl``: one key-sorted JSON object per dropped row, in row order."""
    lines = [json.dumps(row, sort_keys=True, ensure_ascii=False) for row in dropped.iter_rows(named=True)]
    atomic_write_bytes(path, ("\n".join(lines) + "\n" if lines else "").encode("utf-8"))
    return len(lines)


def write_step_output(
    run: StepRun,
    pairs: pl.DataFrame,
    verdict: Verdict,
    section_name: str,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    plot_name: str | None = None,
) -> dict[str, Any]:
    """Write the kept rows, the quarantine, the plot and (last) the manifest; return the manifest.

    Raises:
        AccountingError: the verdict does not cover every row read (cannot happen by design).
    """
    if len(verdict.reasons) != len(pairs):
        raise ValueError(f"{run.stage}: {len(verdict.reasons)} verdicts for {len(pairs)} rows")
    out = run.out_dir
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_shards(out)
    reasons = verdict.reasons.cast(pl.String).alias("reason")
    keep = reasons.is_null()
    schema = _schema(pairs.columns)
    with ShardWriter(out, schema, rows_per_shard=rows_per_shard) as writer:
        writer.write(pairs.filter(keep).select(schema.names))
    dropped = DropTally()
    dropped.update(dict(reasons.drop_nulls().value_counts().iter_rows()))
    quarantined = pairs.select(PROVENANCE_COLUMNS).with_columns(reasons)
    if verdict.details is not None:
        quarantined = pl.concat([quarantined, verdict.details], how="horizontal")
    quarantine_rows = _write_quarantine(out / QUARANTINE_NAME, quarantined.filter(~keep))
    section = dict(verdict.section)
    if verdict.plot is not None and plot_name:
        atomic_write_bytes(out / plot_name, verdict.plot)
        section["plot"] = plot_name
    shutil.rmtree(run.work_dir, ignore_errors=True)
    source = run.source_manifest
    return Manifest(
        dataset=out.name,
        source=source.get("source"),
        stage=run.stage,
        unit="row",
        rows_read=len(pairs),
        rows_kept=writer.rows,
        rows_train=writer.rows,
        rows_heldout=0,
        dropped=dropped.as_dict(),
        columns=schema.names,
        shards=[s.as_dict() for s in writer.shards],
        inputs=run.inputs,
        failures=[],
        quarantine={"path": QUARANTINE_NAME, "rows": quarantine_rows},
        config=run.resolved,
        config_hash=run.resolved_hash,
        versions=library_versions("faiss-cpu", "sentence-transformers", "torch", "numpy"),
        sections={
            "curated_from": source_record(source, run.dataset_dir, out),
            section_name: section,
        },
    ).write(out)


def run_step(
    stage: str,
    section_name: str,
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: Any,
    judge: Callable[[pl.DataFrame, Path], Verdict],
    resolved_extra: dict[str, Any] | None = None,
    corpus_files: Sequence[Path] = (),
    outside_files: Sequence[str] = (),
    force: bool = False,
    echo: Echo | None = print,
    plot_name: str | None = None,
) -> dict[str, Any]:
    """One step on one dataset: prepare, skip when up to date, read, ``judge(pairs, work_dir)``, write.

    Returns:
        The manifest written, or the existing one with ``skipped`` added.
    """
    run = prepare_step(stage, dataset_dir, out_dir, config, resolved_extra, corpus_files, outside_files, force, echo)
    if run.skipped_manifest is not None:
        return {**run.skipped_manifest, "skipped": True}
    pairs = read_step_pairs(run)
    verdict = judge(pairs, run.fresh_work_dir())
    return write_step_output(run, pairs, verdict, section_name, config.rows_per_shard, plot_name)


def normalized(series: pl.Series) -> pl.Series:
    """Texts through the one normalization of the corpus (:func:`pipeline.ingest.normalize.normalize_column`)."""
    from pipeline.ingest.normalize import normalize_column

    return normalize_column(pl.DataFrame({"t": series.cast(pl.String)}), "t").get_column("t")


def distinct_texts(series: pl.Series) -> tuple[list[str], np.ndarray]:
    """The distinct values of a text column in order of first appearance, and each row's index among them."""
    frame = pl.DataFrame({"t": series})
    distinct = frame.unique(subset="t", keep="first", maintain_order=True).with_row_index("i")
    index = frame.join(distinct, on="t", how="left", maintain_order="left").get_column("i").to_numpy().astype(np.int64)
    return distinct.get_column("t").to_list(), index


def embed_rows(texts: list[str], embedder: Any, work_dir: Path, progress: bool) -> np.ndarray:
    """Unit vectors of ``texts`` in a memory-mapped file of the work folder, through the embedding cache."""
    out = np.lib.format.open_memmap(
        work_dir / f"embeddings-{len(os.listdir(work_dir))}.npy", mode="w+", dtype=np.float32,
        shape=(len(texts), embedder.dimension),
    )  # fmt: skip
    embedder.embed(texts, out=out, progress=progress)
    out.flush()
    return out


def encoder_record(embedder: Any, texts: int) -> dict[str, Any]:
    """What a manifest says of a step's encoder: backend, device kind, texts read from the cache and encoded."""
    return {
        "backend": embedder.resolved.backend,
        "device": embedder.resolved.device.split(":", 1)[0],
        "texts": texts,
    }
