"""The mining job: a pair dataset folder in, a mined dataset folder out, in three units.

In: a complete dataset folder, an output folder, a
:class:`~pipeline.mining.config.MiningConfig`, an embedding cache root, a device and
an encoder choice. Out: the mined dataset folder (shards, then the manifest), or the
existing one untouched when its manifest already matches.

The units, so a flow can spread them (flows/mine.py) and :func:`mine_negatives` can
run them in this process, with the same bytes:

1. :func:`prepare_mining`: check, read the pairs into the text table, decide whether
   the output is up to date, copy every cached embedding into the run's memory-mapped
   embedding file and plan the encoding of the rest, cut into slices of whole batches;
2. :func:`encode_slice`: encode one slice into the shared embedding cache (any
   process, any machine that sees the output and cache folders);
3. :func:`finish_mining`: gather the slices' embeddings, search once (or reuse a
   cached search), select and write.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from pipeline.corpus.files import atomic_write_bytes, config_hash, relative_input_entries
from pipeline.corpus.folders import check_step_folders
from pipeline.corpus.manifest import SCORE_PLOT_NAME, DropTally, Manifest, library_versions, matching_manifest, source_record
from pipeline.corpus.shards import remove_stale_shards
from pipeline.embed.cache import EmbeddingCache, default_cache_dir, text_keys
from pipeline.embed.embedder import CACHE_FLUSH_ROWS
from pipeline.embed.encoders import (
    EncoderChoice,
    ResolvedEncoder,
    embedding_cache_key,
    encode_in_batches,
    encoder_dimension,
    load_text_encoder,
    plan_encoding,
    resolve_encoder,
    split_plan,
    token_lengths,
)
from pipeline.embed.index import cached_search, gather_rows
from pipeline.embed.models import cached_model_fingerprint, resolve_model_path
from pipeline.memory import release_free_memory
from pipeline.mining.config import MiningConfig
from pipeline.mining.output import output_schema, score_histogram, score_plot, write_output
from pipeline.mining.select import select_negatives
from pipeline.mining.texts import TextTable, build_text_table, read_extra_corpus, read_pairs

Echo = Callable[[str], None]
_WORK_DIR = ".mine-work"


_PLAN_TEXTS = "encode-plan.parquet"
_PLAN_BATCHES = "encode-batches.npy"
_EMBEDDINGS = "embeddings.npy"


@dataclass(frozen=True)
class MiningJob:
    """One dataset's mining run between its steps: small, picklable, passed between tasks.

    :func:`prepare_mining` makes it (and the work folder ``<out_dir>/.mine-work``
    holding the embedding memmap and the encoding plan), :func:`encode_slice` encodes
    one slice of the plan into the shared embedding cache (any process, any machine
    that sees ``out_dir`` and ``cache_dir``), :func:`finish_mining` searches, selects
    and writes. The plan is cut into batches before it is cut into slices, so every
    text is encoded in the same batch however many slices or workers share the work.

    Attributes:
        dataset_dir, out_dir, cache_dir: absolute folders.
        config: the mining settings.
        encoder: the encoder (:func:`~pipeline.embed.encoders.resolve_encoder`).
        cache_key: the embedding cache's key (:func:`~pipeline.embed.encoders.embedding_cache_key`).
        dim: the embedding width.
        slices: ``(first row, end row)`` ranges of the encoding plan, whole batches each.
        cached: texts already in the cache when the job was prepared.
        to_encode: texts the slices encode.
        rows_read: training rows read (before the empty-text drop).
        resolved, resolved_hash, inputs, source_manifest: what the manifest records.
        skipped_manifest: the existing manifest when the output is already up to date.
    """

    dataset_dir: str
    out_dir: str
    config: MiningConfig
    cache_dir: str
    encoder: ResolvedEncoder = ResolvedEncoder("numpy", "cpu", "openblas")
    cache_key: str = ""
    dim: int = 0
    slices: tuple[tuple[int, int], ...] = ()
    cached: int = 0
    to_encode: int = 0
    rows_read: int = 0
    resolved: dict[str, Any] = field(default_factory=dict)
    resolved_hash: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    source_manifest: dict[str, Any] = field(default_factory=dict)
    skipped_manifest: dict[str, Any] | None = None

    @property
    def work_dir(self) -> Path:
        """The run's scratch folder (removed by :func:`finish_mining`)."""
        return Path(self.out_dir) / _WORK_DIR

    @property
    def model_path(self) -> Path:
        return resolve_model_path(self.config.model)

    def load_encoder(self) -> Any:
        """The job's encoder, loaded."""
        return load_text_encoder(self.model_path, self.encoder)


def _read_table(dataset_dir: Path, config: MiningConfig) -> tuple[TextTable, int]:
    pairs, _ = read_pairs(dataset_dir)
    extra, _ = read_extra_corpus(config.extra_corpus)
    table = build_text_table(pairs, extra)
    return table, len(pairs)


def _prepare(
    dataset_dir: Path,
    out_dir: Path,
    config: MiningConfig,
    cache_dir: Path | None,
    device: str | None,
    encoder_choice: str,
    force: bool,
    n_slices: int,
    echo: Echo | None,
) -> tuple[MiningJob, TextTable | None, Any | None]:
    """The job, the text table and the encoder when one had to be loaded to plan."""
    dataset_dir, out_dir = Path(dataset_dir).resolve(), Path(out_dir).resolve()
    source_manifest = check_step_folders(dataset_dir, out_dir)
    cache_root = Path(cache_dir).resolve() if cache_dir else default_cache_dir()

    # 1. inputs, config and the skip check
    model_path = resolve_model_path(config.model)
    fingerprint = cached_model_fingerprint(model_path, cache_root / "fingerprints")
    pairs, train_files = read_pairs(dataset_dir)
    extra, extra_files = read_extra_corpus(config.extra_corpus)
    if len(pairs) == 0:
        raise ValueError(f"{dataset_dir}: no training pairs to mine (no rows in part-*.parquet); nothing to do")
    resolved = {
        **asdict(config),
        "extra_corpus": list(config.extra_corpus),
        "model_fingerprint": fingerprint,
        "source_config_hash": source_manifest.get("config_hash"),
    }
    resolved_hash = config_hash(resolved)
    # Paths relative to the output's parent (the corpus root).
    inputs = relative_input_entries(train_files + extra_files, out_dir.parent)
    job = MiningJob(
        dataset_dir=str(dataset_dir), out_dir=str(out_dir), config=config, cache_dir=str(cache_root),
        rows_read=len(pairs), resolved=resolved, resolved_hash=resolved_hash, inputs=inputs, source_manifest=source_manifest,
    )
    existing = None if force else matching_manifest(out_dir, inputs, resolved_hash, stage="mine")
    if existing is not None:
        if echo is not None:
            echo(f"skipped: {out_dir} already holds this mining run (config {resolved_hash[:12]}); use --force to redo it")
        return replace(job, skipped_manifest=existing), None, None

    table = build_text_table(pairs, extra)
    del pairs, extra
    if len(table.pairs) == 0:
        raise ValueError(f"{dataset_dir}: every pair has an empty anchor or positive after normalization; nothing to mine")
    if echo is not None:
        echo(f"{len(table.pairs):,} pairs, {len(table.texts):,} distinct texts, corpus of {len(table.corpus_tids):,}")

    # 2a. what the cache holds, straight into the run's embedding memmap; a plan for the rest
    resolved_encoder = resolve_encoder(model_path, device, encoder_choice)
    backend = resolved_encoder.backend
    cache_key = embedding_cache_key(fingerprint, resolved_encoder)
    cache = EmbeddingCache(cache_root, cache_key)
    encoder = None
    if not cache.exists and backend != "numpy":
        encoder = load_text_encoder(model_path, resolved_encoder)
    dim = cache.dim if cache.exists else encoder_dimension(model_path, backend, encoder)
    work_dir = job.work_dir
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    embeddings = np.lib.format.open_memmap(work_dir / _EMBEDDINGS, mode="w+", dtype=np.float32, shape=(len(table.texts), dim))
    found = cache.read_into(text_keys(table.texts), embeddings, np.arange(len(table.texts)))
    embeddings.flush()
    del embeddings
    missing = np.flatnonzero(~found)
    slices: list[tuple[int, int]] = []
    if len(missing):
        missing_texts = [table.texts[i] for i in missing]
        if encoder is None and backend != "numpy":
            encoder = load_text_encoder(model_path, resolved_encoder)
        lengths = token_lengths(model_path, backend, encoder, missing_texts)
        order, offsets = plan_encoding(lengths, config.batch_size)
        rows = missing[order]
        pl.DataFrame({"tid": rows, "text": [table.texts[i] for i in rows]}).write_parquet(work_dir / _PLAN_TEXTS)
        np.save(work_dir / _PLAN_BATCHES, offsets, allow_pickle=False)
        sizes = np.diff(offsets)
        padded = sizes * lengths[order[offsets[:-1]]]
        slices = split_plan(offsets, padded, n_slices)
    job = replace(
        job, encoder=resolved_encoder, cache_key=cache_key, dim=int(dim), slices=tuple(slices),
        cached=int(found.sum()), to_encode=len(missing),
    )
    return job, table, encoder


def prepare_mining(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: MiningConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    encoder: EncoderChoice = "auto",
    force: bool = False,
    n_slices: int = 1,
    echo: Echo | None = print,
) -> MiningJob:
    """Step one of a mining run split over workers: check, read, plan the encoding.

    Reads the pairs and the extra corpus, decides whether the output is already up to
    date (``job.skipped_manifest``), copies every cached embedding into the work
    folder and plans the encoding of the rest, cut into at most ``n_slices`` slices
    for :func:`encode_slice`. Then :func:`finish_mining`. :func:`mine_negatives` runs
    the same three steps in one process; the output is byte-identical.

    Raises:
        The errors of :func:`mine_negatives`.
    """
    job, _, _ = _prepare(
        Path(dataset_dir), Path(out_dir), config, Path(cache_dir) if cache_dir else None, device, encoder, force,
        n_slices, echo,
    )
    return job


def encode_slice(job: MiningJob, slice_index: int, echo: Echo | None = None, encoder: Any | None = None) -> dict[str, Any]:
    """Encode slice ``slice_index`` of a job's plan into the shared embedding cache.

    Any process may run any slice, in any order, at the same time as others: each
    writes its own cache segments (atomic files named by content). Runs in a Dask
    worker, one slice per task (one worker per GPU where there are GPUs).

    Args:
        job: from :func:`prepare_mining`.
        slice_index: which of ``job.slices``.
        echo: where the rate line goes (None for silence).
        encoder: an already loaded encoder of the job's backend (else loaded here).

    Returns:
        ``{"slice", "texts", "seconds"}``.
    """
    first, end = job.slices[slice_index]
    work_dir = job.work_dir
    offsets = np.load(work_dir / _PLAN_BATCHES, allow_pickle=False)
    plan = pl.scan_parquet(work_dir / _PLAN_TEXTS).slice(first, end - first).collect()
    texts = plan.get_column("text").to_list()
    bounds = offsets[(offsets >= first) & (offsets <= end)] - first
    if encoder is None:
        encoder = job.load_encoder()
    cache = EmbeddingCache(job.cache_dir, job.cache_key, job.dim)
    keys = text_keys(texts)
    started = time.perf_counter()
    pending: list[np.ndarray] = []
    pending_start = 0
    done = 0
    batch_texts = (texts[a:b] for a, b in pairwise(bounds))
    for vectors in encode_in_batches(encoder, batch_texts):
        pending.append(vectors)
        done += len(vectors)
        if done - pending_start >= CACHE_FLUSH_ROWS:
            cache.append(keys[pending_start:done], np.concatenate(pending))
            pending, pending_start = [], done
    if pending:
        cache.append(keys[pending_start:done], np.concatenate(pending))
    elapsed = time.perf_counter() - started
    if echo is not None:
        echo(f"slice {slice_index}: encoded {done:,} texts in {elapsed:.1f}s ({done / max(elapsed, 1e-9):,.0f} texts/s, {job.encoder.backend})")
    return {"slice": slice_index, "texts": done, "seconds": elapsed}


def finish_mining(job: MiningJob, echo: Echo | None = print, table: TextTable | None = None, plot: bool = True) -> dict[str, Any]:
    """Last step: gather the slices' embeddings, search once, select, write shards, plot and manifest.

    Texts a slice did not deliver (a lost worker, a corrupt cache entry) are encoded
    here, with the same batch plan. The work folder is removed at the end. With
    ``plot``, the histograms of positive scores, chosen-negative scores and margins are
    drawn into ``scores.png`` beside the manifest (matplotlib: about a second).

    Returns:
        The manifest written (with ``embedding_counts`` added to the returned dict);
        for a skipped job, the existing manifest with ``skipped`` added.
    """
    if job.skipped_manifest is not None:
        return {**job.skipped_manifest, "skipped": True}
    config = job.config
    out_dir, dataset_dir, work_dir = Path(job.out_dir), Path(job.dataset_dir), job.work_dir
    try:
        if table is None:
            table, _ = _read_table(dataset_dir, config)
        embeddings = np.load(work_dir / _EMBEDDINGS, mmap_mode="r+", allow_pickle=False)
        # 2b. the slices' embeddings, from the cache
        if job.to_encode:
            _gather_encoded(job, table, embeddings, echo)
        embeddings.flush()
        embed_counts = {"texts": len(table.texts), "cached": job.cached, "encoded": job.to_encode}

        # 3. distinct anchors, positive scores, one search
        search = _search(job, table, embeddings, progress=echo is not None)

        # 4. selection
        selection = select_negatives(
            search.candidate_tids, search.scores, search.anchor_tids, search.pair_anchor, search.positive_tids,
            search.positive_scores, table.guard_group, config, search.range_max, text_seeds=search.text_keys[:, 1],
        )  # fmt: skip
        del embeddings

        # 5. output
        remove_stale_shards(out_dir)
        per_row = config.num_negatives if _one_row_per_negative(config) else 1
        dropped = DropTally()
        dropped.update({reason: n * per_row for reason, n in table.dropped.items()})
        shards, rows_written, negative_scores, margins = write_output(
            out_dir, table, selection, config, dropped, search.positive_scores
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    manifest = _mined_manifest(job, table, search, selection, dropped, shards, rows_written, negative_scores, margins)
    if plot:
        stats = manifest.sections["mining"]
        atomic_write_bytes(out_dir / SCORE_PLOT_NAME, score_plot(stats, f"{out_dir.name}: mined negatives"))
        stats["plot"] = SCORE_PLOT_NAME
    manifest = manifest.write(out_dir)
    if echo is not None:
        echo(
            f"embeddings: {embed_counts['cached']:,} from cache, {embed_counts['encoded']:,} encoded;"
            f" index {search.index_info['kind']} over {search.index_info['corpus_size']:,} texts"
        )
    return {**manifest, "embedding_counts": embed_counts}


def _gather_encoded(job: MiningJob, table: TextTable, embeddings: np.ndarray, echo: Echo | None) -> None:
    """Copy the slices' embeddings from the cache into ``embeddings``; encode what is missing."""
    plan_tids = pl.read_parquet(job.work_dir / _PLAN_TEXTS, columns=["tid"]).get_column("tid").to_numpy().astype(np.int64)
    cache = EmbeddingCache(job.cache_dir, job.cache_key, job.dim)
    found = cache.read_into(text_keys([table.texts[i] for i in plan_tids]), embeddings, plan_tids)
    if found.all():
        return
    lost = plan_tids[~found]
    if echo is not None:
        echo(f"{len(lost):,} texts of the encoding plan are not in the cache; encoding them here")
    encoder = job.load_encoder()
    lost_texts = [table.texts[i] for i in lost]
    lengths = token_lengths(job.model_path, job.encoder.backend, encoder, lost_texts)
    order, offsets = plan_encoding(lengths, job.config.batch_size)
    batch_texts = ([lost_texts[i] for i in order[a:b]] for a, b in pairwise(offsets))
    vectors = np.concatenate(list(encode_in_batches(encoder, batch_texts)))
    embeddings[lost[order]] = vectors
    cache.append(text_keys([lost_texts[i] for i in order]), vectors)


@dataclass
class _Search:
    """Step 3's results: distinct anchors, positive scores, ranked candidates."""

    anchor_tids: np.ndarray  # (n_anchors,) text id of each distinct anchor
    pair_anchor: np.ndarray  # (n_pairs,) the anchor index of each pair
    positive_tids: np.ndarray  # (n_pairs,) the positive's text id of each pair
    positive_scores: np.ndarray  # (n_pairs,) anchor-positive scores
    max_positives: int
    range_max: int
    candidate_tids: np.ndarray  # (n_anchors, k) best first, -1 for padding
    scores: np.ndarray  # (n_anchors, k)
    index_info: dict[str, Any]
    text_keys: np.ndarray  # (n_texts, 2) the texts' cache keys


def _search(job: MiningJob, table: TextTable, embeddings: np.ndarray, progress: bool) -> _Search:
    config = job.config
    anchor_tid_per_pair = table.pairs.get_column("anchor_tid").to_numpy().astype(np.int64)
    positive_tid_per_pair = table.pairs.get_column("positive_tid").to_numpy().astype(np.int64)
    anchor_tids, pair_anchor = np.unique(anchor_tid_per_pair, return_inverse=True)
    table.pairs = table.pairs.with_columns(pl.Series("_anchor_index", pair_anchor))
    positive_scores = np.empty(len(pair_anchor), dtype=np.float32)
    for start in range(0, len(pair_anchor), 65_536):
        a = gather_rows(embeddings, anchor_tid_per_pair[start : start + 65_536])
        p = gather_rows(embeddings, positive_tid_per_pair[start : start + 65_536])
        positive_scores[start : start + len(a)] = np.einsum("ij,ij->i", a, p)
    positives_per_anchor = np.bincount(
        np.unique(pair_anchor.astype(np.int64) * len(table.texts) + positive_tid_per_pair) // len(table.texts),
        minlength=len(anchor_tids),
    )
    max_positives = int(positives_per_anchor.max())
    range_max = config.resolved_range_max(max_positives)
    if config.num_negatives > range_max - config.range_min:
        raise ValueError(f"range_max={range_max} leaves fewer than num_negatives={config.num_negatives} candidates")
    k = range_max + max_positives
    all_keys = text_keys(table.texts)
    index_config = config.index_config()
    scores, positions, index_info = cached_search(
        embeddings, all_keys, table.corpus_tids, anchor_tids, k, index_config, job.cache_dir, job.cache_key, job.work_dir,
        progress=progress,
    )  # fmt: skip
    candidate_tids = np.where(positions >= 0, table.corpus_tids[np.maximum(positions, 0)], -1)
    return _Search(
        anchor_tids, pair_anchor, positive_tid_per_pair, positive_scores, max_positives, int(range_max), candidate_tids,
        scores, index_info, all_keys,
    )  # fmt: skip


def _one_row_per_negative(config: MiningConfig) -> bool:
    """Whether each (pair, negative) is a unit of its own: triplet output with several negatives."""
    return config.output_format == "triplet" and config.num_negatives > 1


def _mined_manifest(
    job: MiningJob,
    table: TextTable,
    search: _Search,
    selection: Any,
    dropped: DropTally,
    shards: list[dict[str, Any]],
    rows_written: int,
    negative_scores: np.ndarray,
    margins: np.ndarray,
) -> Manifest:
    config = job.config
    source_manifest = job.source_manifest
    out_dir, dataset_dir = Path(job.out_dir), Path(job.dataset_dir)
    unit_slots = _one_row_per_negative(config)
    return Manifest(
        dataset=out_dir.name,
        source=source_manifest.get("source"),
        stage="mine",
        unit="pair_negative_slot" if unit_slots else "pair",
        rows_read=job.rows_read * (config.num_negatives if unit_slots else 1),
        rows_kept=rows_written,
        rows_train=rows_written,
        rows_heldout=0,
        dropped=dropped.as_dict(),
        columns=output_schema(config.num_negatives, config.output_format).names,
        shards=shards,
        inputs=job.inputs,
        failures=[],
        quarantine={"path": None, "rows": 0},
        config=job.resolved,
        config_hash=job.resolved_hash,
        versions=library_versions("faiss-cpu", "sentence-transformers", "torch", "numpy"),
        sections={
            "mined_from": source_record(source_manifest, dataset_dir, out_dir),
            "mining": {
                "pairs": len(table.pairs),
                "anchors": len(search.anchor_tids),
                "distinct_texts": len(table.texts),
                "corpus_size": len(table.corpus_tids),
                "max_positives_per_anchor": search.max_positives,
                "range_max": search.range_max,
                "encoder": {"backend": job.encoder.backend, "device": job.encoder.device.split(":", 1)[0]},
                "index": search.index_info,
                "candidates_retrieved": selection.candidates,
                "candidates_skipped": selection.skipped,
                "candidates_beyond_range_max": selection.beyond_range_max,
                "anchors_short_of_negatives": int((selection.counts < config.num_negatives).sum()),
                "anchors_without_negative": int((selection.counts == 0).sum()),
                "positive_scores": score_histogram(search.positive_scores),
                "negative_scores": score_histogram(negative_scores),
                "margins": score_histogram(margins),
            },
        },
    )


def mine_negatives(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: MiningConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    force: bool = False,
    echo: Echo | None = print,
    encoder: EncoderChoice = "auto",
    plot: bool = True,
) -> dict[str, Any]:
    """Mine hard negatives for a pair dataset and write a triplet dataset, in this process.

    The same steps as :func:`prepare_mining`, :func:`encode_slice` and
    :func:`finish_mining` run on a cluster, with the same output bytes.

    Args:
        dataset_dir: a complete dataset folder (with ``manifest.json``).
        out_dir: the output dataset folder (created; previous shards replaced).
        config: the mining settings.
        cache_dir: the embedding cache root; None for :func:`default_cache_dir`.
        device: the encoder's device; None: a GPU when one is visible, else the CPU.
        force: mine even when the output manifest already matches.
        echo: where progress lines go (None for silence).
        encoder: ``auto`` (numpy on a CPU for plain BERT models, else torch),
            ``numpy``, ``numpy-mkl``, ``numpy-openblas`` or ``torch``
            (:func:`~pipeline.embed.encoders.resolve_encoder`).
        plot: draw the score histograms into ``scores.png`` beside the manifest.

    Returns:
        The manifest written (or the existing one, when the step was skipped; then
        ``skipped`` is added to the returned dict, not to the file).

    Raises:
        FileNotFoundError: the dataset folder, a shard or the model is missing.
        ValueError: the dataset is incomplete, empty or malformed, or ``out_dir``
            would overwrite the input.

    Example::

        from pipeline import MiningConfig, mine_negatives

        config = MiningConfig(num_negatives=4, range_max=10, relative_margin=0.05, sampling_strategy="random")
        manifest = mine_negatives("corpus/nli-pairs", "corpus/nli-pairs-mined", config)
        print(manifest["rows_kept"], manifest["mining"]["negative_scores"]["mean"])
    """
    job, table, loaded = _prepare(
        Path(dataset_dir), Path(out_dir), config, Path(cache_dir) if cache_dir else None, device, encoder, force, 1, echo
    )
    if job.skipped_manifest is None and job.slices:
        if loaded is None:
            loaded = job.load_encoder()
        for index in range(len(job.slices)):
            encode_slice(job, index, echo=echo, encoder=loaded)
    # The model's weights and buffers are not needed for the search: free them first,
    # and hand the freed heap back (glibc keeps it otherwise, and it would count in
    # the peak the index and the search add to).
    del loaded
    release_free_memory()
    return finish_mining(job, echo=echo, table=table, plot=plot)
