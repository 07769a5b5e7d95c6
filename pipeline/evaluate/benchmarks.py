"""Benchmark inputs: STSb files, NLI files, a corpus's held-out splits in; texts to score out.

In: the original STS benchmark files (tab separated, quoting off), NLI inputs
(SNLI/MultiNLI JSON lines or the SentEval ``s1/s2/labels`` layout, read by the same
reader the ``nli`` source ingests with, or a corpus dataset folder of triplets) and a
built corpus whose dataset folders carry a ``heldout/`` split. Out: :class:`Benchmarks`:
scored pairs, triplets and the corpus's held-out rows pooled into one retrieval and
one triplet task (:mod:`pipeline.evaluate.heldout`), each with what its reader
dropped, by reason, so every figure traces back to rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.corpus.folders import dataset_folder, discover_datasets
from pipeline.corpus.manifest import MANIFEST_NAME, DropTally
from pipeline.corpus.shards import HELDOUT_DIR, shard_paths
from pipeline.evaluate.config import EvalConfig
from pipeline.evaluate.heldout import PooledHeldout, load_pooled_heldout
from pipeline.ingest.sources import nli
from pipeline.io.errors import InputFileError

STSB_MIN_FIELDS = 7


@dataclass
class ScoredPairs:
    """Sentence pairs with a gold similarity score (STSb), and what the reader dropped."""

    name: str
    path: str
    sentences1: list[str] = field(default_factory=list)
    sentences2: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    rows_read: int = 0
    dropped: DropTally = field(default_factory=DropTally)


@dataclass
class LabelledPairs:
    """NLI premise/hypothesis pairs with their gold labels, and what the reader dropped."""

    premises: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    rows_read: int = 0
    dropped: DropTally = field(default_factory=DropTally)


@dataclass
class Triplets:
    """(anchor, positive, negative) triplets for triplet accuracy."""

    name: str
    path: str
    format: str
    anchors: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    rows_read: int = 0
    pairs: int = 0
    pairs_in_triplets: int = 0
    dropped: DropTally = field(default_factory=DropTally)


@dataclass
class HeldoutPairs:
    """The held-out (anchor, positive) pairs of one corpus dataset."""

    name: str
    path: str
    anchors: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    rows_available: int = 0


def _read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file without their line endings; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    # split on \n only: str.splitlines() would also split on characters such as \x1c
    # and \u2028 that can occur inside a sentence
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_stsb(path: str | os.PathLike[str]) -> ScoredPairs:
    """Read an original STS benchmark file (``sts-train.csv``, ``sts-dev.csv``...).

    Tab separated, no header, quoting off (quote characters occur inside sentences):
    genre, file, year, id, score, sentence1, sentence2, and on some rows two trailing
    source fields, which are ignored.

    Drops, by reason: ``too_few_fields``, ``bad_score`` (not a number in 0..5),
    ``empty_sentence``.
    """
    file = Path(path)
    pairs = ScoredPairs(name=file.name.removesuffix(".csv"), path=str(path))
    for line in _read_text_lines(file):
        pairs.rows_read += 1
        fields = line.split("\t")
        if len(fields) < STSB_MIN_FIELDS:
            pairs.dropped.add("too_few_fields")
            continue
        try:
            score = float(fields[4])
        except ValueError:
            pairs.dropped.add("bad_score")
            continue
        if not 0.0 <= score <= 5.0:
            pairs.dropped.add("bad_score")
            continue
        sentence1, sentence2 = fields[5].strip(), fields[6].strip()
        if not sentence1 or not sentence2:
            pairs.dropped.add("empty_sentence")
            continue
        pairs.sentences1.append(sentence1)
        pairs.sentences2.append(sentence2)
        pairs.scores.append(score)
    if not pairs.scores:
        raise ValueError(f"{file}: no STSb rows could be read ({pairs.dropped.as_dict() or 'empty file'})")
    return pairs


def read_nli_pairs(path: str | os.PathLike[str]) -> LabelledPairs:
    """Labelled (premise, hypothesis) pairs of an NLI input, read as the ``nli`` source reads it.

    ``path`` is SNLI/MultiNLI JSON lines, a SentEval ``s1.X`` file or a folder holding
    one. Lines the reader cannot use are counted by its reasons (``malformed_json``,
    ``missing_field:sentence1``...); then ``no_gold_label`` (``-``: the annotators did
    not agree), ``unknown_label``, ``empty_sentence``.

    Raises:
        ValueError: the SentEval files are missing or differ in length, or the archive is cut short.
    """
    from pipeline.io.context import ReadContext

    file = Path(path)
    ctx = ReadContext(path=file, display_name=str(path))
    pairs = LabelledPairs()
    try:
        for batch in nli.stage_file(file, ctx, nli.Options()):
            for premise, hypothesis, label in batch.select("premise", "hypothesis", "label").iter_rows():
                pairs.rows_read += 1
                _add_labelled_pair(pairs, premise, hypothesis, label)
    except InputFileError as exc:
        raise ValueError(str(exc)) from None
    pairs.rows_read += ctx.bad_rows.total()
    pairs.dropped.update(ctx.bad_rows.as_dict())
    return pairs


def _add_labelled_pair(pairs: LabelledPairs, premise: str, hypothesis: str, label: str) -> None:
    premise, hypothesis, label = premise.strip(), hypothesis.strip(), label.strip()
    if label == "-" or not label:
        pairs.dropped.add("no_gold_label")
    elif label not in nli.LABELS:
        pairs.dropped.add("unknown_label")
    elif not premise or not hypothesis:
        pairs.dropped.add("empty_sentence")
    else:
        pairs.premises.append(premise)
        pairs.hypotheses.append(hypothesis)
        pairs.labels.append(label)


def nli_triplets(pairs: LabelledPairs, name: str, path: str, format: str) -> Triplets:
    """Triplets (premise, entailment, contradiction) from labelled NLI pairs.

    Pairs are grouped by premise text; every entailed hypothesis of a premise is paired
    with every contradicting one, in reading order (SNLI has one of each per caption,
    so this is usually one triplet per premise). Pairs that end up in no triplet are
    counted: ``neutral``, ``no_contradiction`` (an entailment whose premise has no
    contradiction), ``no_entailment`` (the reverse). The reader's drops are carried over,
    so ``rows_read == pairs + reader drops`` and ``pairs == pairs_in_triplets + neutral
    + no_contradiction + no_entailment``.
    """
    entailed: dict[str, list[str]] = {}
    contradicted: dict[str, list[str]] = {}
    triplets = Triplets(name=name, path=path, format=format, rows_read=pairs.rows_read, pairs=len(pairs.labels))
    triplets.dropped.update(pairs.dropped.as_dict())
    for premise, hypothesis, label in zip(pairs.premises, pairs.hypotheses, pairs.labels):
        if label == "entailment":
            entailed.setdefault(premise, []).append(hypothesis)
        elif label == "contradiction":
            contradicted.setdefault(premise, []).append(hypothesis)
        else:
            triplets.dropped.add("neutral")
    for premise, positives in entailed.items():
        negatives = contradicted.get(premise, [])
        if not negatives:
            triplets.dropped.add("no_contradiction", len(positives))
        else:
            triplets.pairs_in_triplets += len(positives) + len(negatives)
        for positive in positives:
            for negative in negatives:
                triplets.anchors.append(premise)
                triplets.positives.append(positive)
                triplets.negatives.append(negative)
    for premise, negatives in contradicted.items():
        if premise not in entailed:
            triplets.dropped.add("no_entailment", len(negatives))
    return triplets


def _heldout_shards(folder: Path) -> list[Path]:
    """The held-out shards of a complete dataset folder; errors say what is missing."""
    if not (folder / MANIFEST_NAME).is_file():
        raise ValueError(f"{folder}: not a complete dataset folder (no {MANIFEST_NAME}; the build did not finish)")
    return shard_paths(folder, HELDOUT_DIR)


def read_heldout_triplets(folder: str | os.PathLike[str], name: str | None = None, max_rows: int | None = None) -> Triplets:
    """Triplets from a corpus dataset folder's ``heldout/`` split (anchor, positive, negative).

    A mined dataset's ``negative_1`` column stands in for ``negative``.

    Raises:
        ValueError: no manifest, no held-out shards, or no negative column.
    """
    import pyarrow.parquet as pq

    base = Path(folder)
    shards = _heldout_shards(base)
    if not shards:
        raise ValueError(f"{base}: no held-out shards (heldout/part-*.parquet) to read triplets from")
    triplets = Triplets(name=name or base.name, path=str(folder), format="corpus-heldout")
    for shard in shards:
        columns = pq.read_schema(shard).names
        negative = "negative" if "negative" in columns else "negative_1" if "negative_1" in columns else None
        if negative is None:
            raise ValueError(f"{shard}: no negative column (columns: {columns}); triplet accuracy needs one")
        table = pq.read_table(shard, columns=["anchor", "positive", negative])
        for anchor, positive, neg in zip(*(table.column(i).to_pylist() for i in range(3))):
            triplets.rows_read += 1
            if max_rows is not None and triplets.pairs >= max_rows:
                triplets.dropped.add("over_max_heldout_rows")
                continue
            triplets.pairs += 1
            triplets.pairs_in_triplets += 1
            triplets.anchors.append(anchor)
            triplets.positives.append(positive)
            triplets.negatives.append(neg)
    return triplets


def read_nli_input(path: str | os.PathLike[str], max_rows: int | None = None) -> Triplets:
    """Triplets from any accepted NLI input, its format told by its shape.

    A folder with ``manifest.json`` is a corpus dataset (held-out triplets); a folder with
    ``s1.*`` or a file named ``s1.*`` is SentEval; any other file is JSON lines.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"NLI input not found: {p}")
    if p.is_dir() and (p / MANIFEST_NAME).exists():
        return read_heldout_triplets(p, name=p.name, max_rows=max_rows)
    if nli.is_senteval(p):
        try:
            first = nli.companion_files(p)[0]
        except InputFileError as exc:
            raise ValueError(str(exc)) from None
        name = f"{first.parent.name}.{first.name.removeprefix('s1.')}"
        return nli_triplets(read_nli_pairs(p), name=name, path=str(path), format="senteval")
    name = p.name
    for suffix in (".jsonl", ".json", ".txt"):
        name = name.removesuffix(suffix)
    return nli_triplets(read_nli_pairs(p), name=name, path=str(path), format="jsonl")


def corpus_datasets(corpus: str | os.PathLike[str], names: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    """(name, folder) of the dataset folders of a corpus, sorted by name.

    Without ``names``, every complete dataset folder of the corpus
    (:func:`pipeline.corpus.folders.discover_datasets`). A name must stay inside the
    corpus root and be a complete dataset folder.

    Raises:
        FileNotFoundError: the corpus or a named dataset does not exist.
        ValueError: a name escapes the corpus root.
    """
    root = Path(corpus).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {corpus}")
    if names is None:
        return [(name, root / name) for name in discover_datasets(root)]
    datasets = []
    for name in names:
        folder = dataset_folder(root, name)
        if not (folder / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"{folder}: no such complete dataset in {corpus} (no {MANIFEST_NAME})")
        datasets.append((name, folder))
    return sorted(datasets)


def read_heldout_pairs(folder: Path, name: str, max_rows: int | None = None) -> HeldoutPairs:
    """The first ``max_rows`` held-out (anchor, positive) pairs of a dataset, in shard order."""
    import pyarrow.parquet as pq

    pairs = HeldoutPairs(name=name, path=str(folder))
    for shard in _heldout_shards(folder):
        table = pq.read_table(shard, columns=["anchor", "positive"])
        pairs.rows_available += table.num_rows
        room = table.num_rows if max_rows is None else max(0, max_rows - len(pairs.anchors))
        if room:
            pairs.anchors += table.column("anchor").slice(0, room).to_pylist()
            pairs.positives += table.column("positive").slice(0, room).to_pylist()
    return pairs


@dataclass
class Benchmarks:
    """Everything read from disk once, scored for both models."""

    stsb: list[ScoredPairs]
    nli: list[Triplets]
    heldout: PooledHeldout | None = None


def load_benchmarks(config: EvalConfig) -> Benchmarks:
    """Read every benchmark input the config names; fail early, before any model loads.

    Raises:
        FileNotFoundError: a benchmark file (or the corpus) does not exist; the message says which kind.
    """
    for kind, paths in (("STSb file", config.stsb), ("NLI benchmark input", config.nli)):
        missing = [str(p) for p in paths if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"{kind} not found: {', '.join(missing)}")
    stsb = [read_stsb(path) for path in config.stsb]
    triplets = [read_nli_input(path, max_rows=config.max_heldout_rows) for path in config.nli]
    heldout = None
    if config.corpus:
        datasets = corpus_datasets(config.corpus, config.datasets)
        heldout = load_pooled_heldout(config.corpus, datasets, config.max_heldout_rows, config.max_distractors)
    for group in (stsb, triplets):
        _make_names_unique(group)
    return Benchmarks(stsb=stsb, nli=triplets, heldout=heldout)


def _make_names_unique(items: Sequence[Any]) -> None:
    seen: dict[str, int] = {}
    for item in items:
        count = seen.get(item.name, 0)
        seen[item.name] = count + 1
        if count:
            item.name = f"{item.name}#{count + 1}"
