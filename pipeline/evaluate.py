"""The evaluation task: is the new model better than the one it started from?

In: a model folder, a baseline model folder (by default the model the training run
started from), and benchmark inputs: the original STS benchmark files, NLI files
(SNLI/MultiNLI JSON lines, the SentEval ``s1/s2/labels`` layout, or a corpus dataset
folder of triplets) and a built corpus whose dataset folders carry a ``heldout/``
split. Out: a report folder with ``report.json`` (deterministic: no timings),
``report.md`` (model, baseline and delta per metric), ``metrics.png`` and
``heatmap.png``, plus ``timings.json`` (wall-clock seconds, kept apart because they
change from run to run). ``report.json`` is written last: its presence means the
report is complete.

Metrics, all "higher is better":

* ``stsb/<file>/spearman_cosine``: Spearman rank correlation between the cosine
  similarity of the two sentences and the gold score (0-5).
* ``nli/<name>/triplet_accuracy``: share of (anchor, entailment, contradiction)
  triplets with cos(anchor, entailment) > cos(anchor, contradiction).
* ``retrieval/<dataset>/{mrr@10, ndcg@10, recall@1, recall@10}``: each held-out
  anchor searches a FAISS inner-product index of the dataset's held-out positives.

torch, faiss, scipy and sentence-transformers are imported inside the functions that
need them.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.shards import DropTally, MANIFEST_NAME, config_hash, library_versions, shard_paths

TRAIN_CONFIG_NAME = "train_config.json"
REPORT_NAME = "report.json"
TIMINGS_NAME = "timings.json"
NLI_LABELS = ("entailment", "neutral", "contradiction")
STSB_MIN_FIELDS = 7
RETRIEVAL_KS = (1, 10)
_METRIC_DIGITS = 6


# --- configuration ---------------------------------------------------------------------
@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on and how; saved, resolved, inside ``report.json``.

    Attributes:
        stsb: STSb files (original tab-separated distribution), e.g. ``sts-dev.csv``.
        nli: NLI inputs: ``.jsonl`` files, SentEval folders (or their ``s1.*`` file),
            or corpus dataset folders holding triplets in their ``heldout/`` split.
        corpus: a built corpus folder; every dataset folder in it with a held-out split
            is evaluated for retrieval.
        datasets: only these dataset names of ``corpus`` (default: all).
        max_heldout_rows: read at most this many held-out rows per dataset (the first in
            shard order, so the choice is deterministic); None reads them all.
        batch_size: encoding batch size.
        device: ``cpu``, ``cuda``... (default: a GPU when one is visible).
        heatmap_pairs: how many held-out pairs the similarity heatmap shows.
        regression_tolerance: a metric that drops by more than this counts as worse.
        show_progress: show progress bars while encoding.
    """

    stsb: tuple[str, ...] = ()
    nli: tuple[str, ...] = ()
    corpus: str | None = None
    datasets: tuple[str, ...] | None = None
    max_heldout_rows: int | None = 10_000
    batch_size: int = 64
    device: str | None = None
    heatmap_pairs: int = 8
    regression_tolerance: float = 0.01
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_heldout_rows is not None and self.max_heldout_rows < 1:
            raise ValueError(f"max_heldout_rows must be at least 1 or None, got {self.max_heldout_rows}")
        if self.heatmap_pairs < 0:
            raise ValueError(f"heatmap_pairs must not be negative, got {self.heatmap_pairs}")
        if not (self.stsb or self.nli or self.corpus):
            raise ValueError("nothing to evaluate: give an STSb file, an NLI file or a corpus folder")

    def as_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (device and progress left out: they do not change results)."""
        values = asdict(self)
        for key in ("device", "show_progress"):
            values.pop(key)
        values["stsb"] = list(self.stsb)
        values["nli"] = list(self.nli)
        values["datasets"] = None if self.datasets is None else list(self.datasets)
        return values


# --- benchmark data ----------------------------------------------------------------------
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


def read_nli_jsonl(path: str | os.PathLike[str]) -> LabelledPairs:
    """Read SNLI/MultiNLI JSON lines (``sentence1``, ``sentence2``, ``gold_label``).

    Drops, by reason: ``blank_line``, ``bad_json``, ``missing_field``, ``empty_sentence``,
    ``no_gold_label`` (``-``: the annotators did not agree), ``unknown_label``.
    """
    file = Path(path)
    pairs = LabelledPairs()
    for line in _read_text_lines(file):
        pairs.rows_read += 1
        if not line.strip():
            pairs.dropped.add("blank_line")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            pairs.dropped.add("bad_json")
            continue
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("sentence1", "sentence2", "gold_label")):
            pairs.dropped.add("missing_field")
            continue
        _add_labelled_pair(pairs, row["sentence1"], row["sentence2"], row["gold_label"])
    return pairs


def _senteval_files(path: Path) -> tuple[Path, Path, Path]:
    """The parallel ``s1.X``, ``s2.X``, ``labels.X`` files named by a folder or by its ``s1.X`` file."""
    if path.is_dir():
        firsts = sorted(path.glob("s1.*"))
        if len(firsts) != 1:
            raise ValueError(
                f"{path}: a SentEval folder needs exactly one s1.* file, found {[p.name for p in firsts]};"
                " name the s1.* file itself"
            )
        first = firsts[0]
    else:
        first = path
    if not first.name.startswith("s1."):
        raise ValueError(f"{path}: not a SentEval s1.* file")
    suffix = first.name.removeprefix("s1.")
    second, labels = first.with_name(f"s2.{suffix}"), first.with_name(f"labels.{suffix}")
    for needed in (second, labels):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: missing SentEval file (next to {first.name})")
    return first, second, labels


def read_nli_senteval(path: str | os.PathLike[str]) -> LabelledPairs:
    """Read the SentEval/InferSent NLI layout: parallel ``s1.X``, ``s2.X``, ``labels.X`` files.

    ``path`` is the folder or its ``s1.X`` file. The lines are tokenized text ending with
    a space, which is stripped. Drops as :func:`read_nli_jsonl`.

    Raises:
        ValueError: the three files do not have the same number of lines.
    """
    first, second, labels_file = _senteval_files(Path(path))
    premises, hypotheses, labels = (_read_text_lines(p) for p in (first, second, labels_file))
    if not len(premises) == len(hypotheses) == len(labels):
        raise ValueError(
            f"{first.parent}: SentEval files differ in length: {first.name} {len(premises)},"
            f" {second.name} {len(hypotheses)}, {labels_file.name} {len(labels)} lines"
        )
    pairs = LabelledPairs()
    for premise, hypothesis, label in zip(premises, hypotheses, labels):
        pairs.rows_read += 1
        _add_labelled_pair(pairs, premise, hypothesis, label)
    return pairs


def _add_labelled_pair(pairs: LabelledPairs, premise: str, hypothesis: str, label: str) -> None:
    premise, hypothesis, label = premise.strip(), hypothesis.strip(), label.strip()
    if label == "-" or not label:
        pairs.dropped.add("no_gold_label")
    elif label not in NLI_LABELS:
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
    return shard_paths(folder, "heldout")


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
    if p.is_dir() or p.name.startswith("s1."):
        first, _, _ = _senteval_files(p)
        name = f"{first.parent.name}.{first.name.removeprefix('s1.')}"
        return nli_triplets(read_nli_senteval(p), name=name, path=str(path), format="senteval")
    name = p.name
    for suffix in (".jsonl", ".json", ".txt"):
        name = name.removesuffix(suffix)
    return nli_triplets(read_nli_jsonl(p), name=name, path=str(path), format="jsonl")


def corpus_datasets(corpus: str | os.PathLike[str], names: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    """(name, folder) of the dataset folders of a corpus, sorted by name.

    Without ``names``, every folder under ``corpus`` holding a ``manifest.json``. A name
    must stay inside the corpus root.
    """
    root = Path(corpus).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {corpus}")
    if names is None:
        found = sorted(p.parent for p in root.rglob(MANIFEST_NAME))
        return [(p.relative_to(root).as_posix(), p) for p in found if p != root]
    datasets = []
    for name in names:
        folder = (root / name).resolve()
        if not folder.is_relative_to(root) or folder == root:
            raise ValueError(f"dataset name {name!r} leaves the corpus folder {corpus}")
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


# --- metrics -----------------------------------------------------------------------------
def encode_texts(model: Any, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``; each distinct text is encoded once."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    embeddings = model.encode(
        unique,
        batch_size=batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    ).astype(np.float32)
    position = {text: i for i, text in enumerate(unique)}
    return embeddings[[position[t] for t in texts]]


def pairwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped embedding matrices."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def triplet_accuracy(anchors: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """Share of rows with cos(anchor, positive) strictly above cos(anchor, negative)."""
    if len(anchors) == 0:
        return float("nan")
    return float(np.mean(pairwise_cosine(anchors, positives) > pairwise_cosine(anchors, negatives)))


def retrieval_metrics(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    relevant: Sequence[set[int]],
    ks: Sequence[int] = RETRIEVAL_KS,
    cutoff: int = 10,
) -> dict[str, float]:
    """MRR@cutoff, nDCG@cutoff and Recall@k of exact inner-product search (FAISS ``IndexFlatIP``).

    Args:
        query_embeddings: (queries, dim) unit vectors.
        doc_embeddings: (docs, dim) unit vectors.
        relevant: for each query, the row numbers of its relevant docs (binary relevance).
        ks: the k of each Recall@k.
        cutoff: the depth of MRR and nDCG.

    Returns:
        ``{"mrr@10": ..., "ndcg@10": ..., "recall@1": ..., "recall@10": ...}``, means over
        queries, with the definitions of sentence-transformers' InformationRetrievalEvaluator:
        reciprocal rank of the first relevant doc (0 past the cutoff); DCG with
        1/log2(rank + 1) gains over the ideal DCG; relevant docs found / relevant docs.
    """
    import faiss

    if len(query_embeddings) != len(relevant):
        raise ValueError(f"{len(query_embeddings)} queries but {len(relevant)} relevance sets")
    if len(query_embeddings) == 0:
        raise ValueError("retrieval needs at least one query")
    depth = max(cutoff, *ks)
    index = faiss.IndexFlatIP(doc_embeddings.shape[1])
    index.add(np.ascontiguousarray(doc_embeddings, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(query_embeddings, dtype=np.float32), min(depth, index.ntotal))
    sums = {f"mrr@{cutoff}": 0.0, f"ndcg@{cutoff}": 0.0, **{f"recall@{k}": 0.0 for k in ks}}
    for ranked, wanted in zip(found.tolist(), relevant):
        if not wanted:
            raise ValueError("every query needs at least one relevant document")
        hits = [doc in wanted for doc in ranked if doc >= 0]
        first = next((rank for rank, hit in enumerate(hits[:cutoff], start=1) if hit), None)
        sums[f"mrr@{cutoff}"] += 1.0 / first if first else 0.0
        dcg = sum(1.0 / math.log2(rank + 1) for rank, hit in enumerate(hits[:cutoff], start=1) if hit)
        ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(wanted), cutoff) + 1))
        sums[f"ndcg@{cutoff}"] += dcg / ideal
        for k in ks:
            sums[f"recall@{k}"] += sum(hits[:k]) / len(wanted)
    return {name: total / len(relevant) for name, total in sums.items()}


def retrieval_task(anchors: Sequence[str], positives: Sequence[str]) -> tuple[list[str], list[str], list[set[int]]]:
    """Queries (distinct anchors), documents (distinct positives) and each query's relevant docs.

    An anchor seen with several positives has them all as relevant documents; a positive
    shared by several anchors is one document.
    """
    queries = list(dict.fromkeys(anchors))
    docs = list(dict.fromkeys(positives))
    query_row = {q: i for i, q in enumerate(queries)}
    doc_row = {d: i for i, d in enumerate(docs)}
    relevant: list[set[int]] = [set() for _ in queries]
    for anchor, positive in zip(anchors, positives):
        relevant[query_row[anchor]].add(doc_row[positive])
    return queries, docs, relevant


# --- the task ----------------------------------------------------------------------------
@dataclass
class Benchmarks:
    """Everything read from disk once, scored for both models."""

    stsb: list[ScoredPairs]
    nli: list[Triplets]
    heldout: list[HeldoutPairs]


def load_benchmarks(config: EvalConfig) -> Benchmarks:
    """Read every benchmark input the config names; fail early, before any model loads."""
    stsb = [read_stsb(path) for path in config.stsb]
    nli = [read_nli_input(path, max_rows=config.max_heldout_rows) for path in config.nli]
    heldout = []
    if config.corpus:
        for name, folder in corpus_datasets(config.corpus, config.datasets):
            heldout.append(read_heldout_pairs(folder, name, config.max_heldout_rows))
    for group in (stsb, nli, heldout):
        _make_names_unique(group)
    return Benchmarks(stsb=stsb, nli=nli, heldout=heldout)


def _make_names_unique(items: Sequence[Any]) -> None:
    seen: dict[str, int] = {}
    for item in items:
        count = seen.get(item.name, 0)
        seen[item.name] = count + 1
        if count:
            item.name = f"{item.name}#{count + 1}"


def score_model(model: Any, benchmarks: Benchmarks, config: EvalConfig) -> dict[str, float | None]:
    """Every metric of one model on the benchmarks, as ``{metric_name: value}``."""
    batch, progress = config.batch_size, config.show_progress
    metrics: dict[str, float] = {}
    for pairs in benchmarks.stsb:
        first = encode_texts(model, pairs.sentences1, batch, progress)
        second = encode_texts(model, pairs.sentences2, batch, progress)
        metrics[f"stsb/{pairs.name}/spearman_cosine"] = spearman(pairwise_cosine(first, second), pairs.scores)
    for triplets in benchmarks.nli:
        if not triplets.anchors:
            continue
        texts = (triplets.anchors, triplets.positives, triplets.negatives)
        embedded = [encode_texts(model, column, batch, progress) for column in texts]
        metrics[f"nli/{triplets.name}/triplet_accuracy"] = triplet_accuracy(*embedded)
    for pairs in benchmarks.heldout:
        if not pairs.anchors:
            continue
        queries, docs, relevant = retrieval_task(pairs.anchors, pairs.positives)
        query_embeddings = encode_texts(model, queries, batch, progress)
        scores = retrieval_metrics(query_embeddings, encode_texts(model, docs, batch, progress), relevant)
        metrics.update({f"retrieval/{pairs.name}/{metric}": value for metric, value in scores.items()})
    # NaN (e.g. Spearman of constant similarities) becomes None: JSON has no NaN
    return {name: None if math.isnan(value) else round(value, _METRIC_DIGITS) for name, value in metrics.items()}


def resolve_baseline(model_dir: str | os.PathLike[str], baseline_dir: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The baseline model folder and where that choice came from.

    ``baseline_dir`` when given; else the ``base_model`` of the training run's
    ``train_config.json`` in ``model_dir``, or failing that key its ``config.model``
    (null or ``"default"`` meaning the packaged default; a relative path is tried from
    the working directory, then from ``model_dir``); else the packaged default model.

    Raises:
        FileNotFoundError: the chosen folder does not exist (the message names where it came from).
        ValueError: ``train_config.json`` is not a JSON object.
    """
    from pipeline.models import default_model_path, resolve_model_path

    if baseline_dir not in (None, ""):
        return resolve_model_path(baseline_dir), "--baseline"
    train_config = Path(model_dir) / TRAIN_CONFIG_NAME
    if not train_config.is_file():
        return default_model_path(), "packaged default (no train_config.json)"
    try:
        values = json.loads(train_config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{train_config}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{train_config}: expected a JSON object")
    key = "base_model"
    if key not in values and isinstance(values.get("config"), dict) and "model" in values["config"]:
        # pipeline.train also records the starting model as config.model
        key = "config.model"
        base = values["config"]["model"]
    else:
        base = values.get(key)
    if base in (None, "", "default"):
        return default_model_path(), f"{TRAIN_CONFIG_NAME} {key}={base!r} (packaged default)"
    candidate = Path(str(base))
    if not candidate.is_absolute() and not candidate.is_dir():
        candidate = Path(model_dir) / candidate
    if not candidate.is_dir():
        raise FileNotFoundError(f"{train_config}: {key} folder not found: {base}")
    return candidate, f"{TRAIN_CONFIG_NAME} {key}"


def _heatmap_texts(benchmarks: Benchmarks, n: int) -> tuple[str, list[str], list[str]]:
    """A few pairs to draw: the first held-out pairs, else NLI anchors/entailments, else STSb pairs."""
    for pairs in benchmarks.heldout:
        if pairs.anchors:
            return f"held-out pairs of {pairs.name}", pairs.anchors[:n], pairs.positives[:n]
    for triplets in benchmarks.nli:
        if triplets.anchors:
            # one pair per anchor: a premise with several contradictions repeats its entailment
            first_positive: dict[str, str] = {}
            for anchor, positive in zip(triplets.anchors, triplets.positives):
                first_positive.setdefault(anchor, positive)
            anchors = list(first_positive)[:n]
            return f"NLI {triplets.name} anchor/entailment", anchors, [first_positive[a] for a in anchors]
    for scored in benchmarks.stsb:
        return f"STSb {scored.name}", scored.sentences1[:n], scored.sentences2[:n]
    return "", [], []


def _similarity_matrix(model: Any, anchors: list[str], positives: list[str], batch_size: int) -> list[list[float]]:
    if not anchors:
        return []
    matrix = encode_texts(model, anchors, batch_size) @ encode_texts(model, positives, batch_size).T
    return np.round(matrix.astype(np.float64), 4).tolist()


def compare_metrics(
    model: dict[str, float | None], baseline: dict[str, float | None], tolerance: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows ``{name, model, baseline, delta}`` and a verdict.

    The verdict is ``better`` when some metric improved and none dropped by more than
    ``tolerance``, ``worse`` when one dropped by more than ``tolerance``, else ``same``.
    """
    rows = []
    for name in model:
        ours, theirs = model[name], baseline.get(name)
        delta = None if ours is None or theirs is None else round(ours - theirs, _METRIC_DIGITS)
        rows.append({"name": name, "model": ours, "baseline": theirs, "delta": delta})
    improved = [r["name"] for r in rows if r["delta"] is not None and r["delta"] > 0]
    regressed = [r["name"] for r in rows if r["delta"] is not None and r["delta"] < -tolerance]
    verdict = "worse" if regressed else "better" if improved else "same"
    return rows, {"verdict": verdict, "improved": improved, "regressed": regressed, "tolerance": tolerance}


def _benchmark_summary(benchmarks: Benchmarks) -> dict[str, Any]:
    """What was read and dropped, per input; makes the numbers traceable to rows."""
    return {
        "stsb": [
            {"name": p.name, "path": p.path, "rows_read": p.rows_read, "rows_scored": len(p.scores), "dropped": p.dropped.as_dict()}
            for p in benchmarks.stsb
        ],
        "nli": [
            {
                "name": t.name,
                "path": t.path,
                "format": t.format,
                "rows_read": t.rows_read,
                "pairs": t.pairs,
                "pairs_in_triplets": t.pairs_in_triplets,
                "triplets": len(t.anchors),
                "dropped": t.dropped.as_dict(),
            }
            for t in benchmarks.nli
        ],
        "retrieval": [
            {
                "name": h.name,
                "path": h.path,
                "heldout_rows": h.rows_available,
                "pairs_used": len(h.anchors),
                "queries": len(dict.fromkeys(h.anchors)),
                "documents": len(dict.fromkeys(h.positives)),
            }
            for h in benchmarks.heldout
        ],
    }


def evaluate_model(
    model_dir: str | os.PathLike[str],
    baseline_dir: str | os.PathLike[str] | None,
    config: EvalConfig,
    out_dir: str | os.PathLike[str],
) -> dict[str, Any]:
    """Score a model and its baseline on the configured benchmarks and write the report.

    Steps: 1. read the benchmarks; 2. resolve the baseline; 3. score the model;
    4. score the baseline (reusing the model's scores when it is the same folder);
    5. compare; 6. write ``report.md``, the plots, ``timings.json`` and, last,
    ``report.json``.

    Args:
        model_dir: the trained model folder.
        baseline_dir: the model to compare with; None for the training run's base model.
        config: benchmarks and options.
        out_dir: the report folder (created).

    Returns:
        The report, exactly as written to ``report.json``.
    """
    from pipeline import report as report_files
    from pipeline.models import load_encoder, model_fingerprint, resolve_model_path

    timings: dict[str, float] = {}
    started = time.perf_counter()
    out = Path(out_dir)

    # 1. benchmarks
    benchmarks = load_benchmarks(config)
    timings["read_benchmarks"] = time.perf_counter() - started

    # 2. models
    model_path = resolve_model_path(model_dir)
    baseline_path, baseline_source = resolve_baseline(model_dir, baseline_dir)
    same_model = model_path.resolve() == baseline_path.resolve()
    heatmap_title, heat_anchors, heat_positives = _heatmap_texts(benchmarks, config.heatmap_pairs)

    # 3. the model
    tick = time.perf_counter()
    model = load_encoder(model_path, device=config.device)
    model_metrics = score_model(model, benchmarks, config)
    model_heat = _similarity_matrix(model, heat_anchors, heat_positives, config.batch_size)
    del model
    timings["score_model"] = time.perf_counter() - tick

    # 4. the baseline
    tick = time.perf_counter()
    if same_model:
        baseline_metrics, baseline_heat = dict(model_metrics), model_heat
    else:
        baseline = load_encoder(baseline_path, device=config.device)
        baseline_metrics = score_model(baseline, benchmarks, config)
        baseline_heat = _similarity_matrix(baseline, heat_anchors, heat_positives, config.batch_size)
        del baseline
    timings["score_baseline"] = time.perf_counter() - tick

    # 5. comparison
    rows, verdict = compare_metrics(model_metrics, baseline_metrics, config.regression_tolerance)
    resolved_config = config.as_dict()
    report: dict[str, Any] = {
        "model": {"path": str(model_dir), "fingerprint": model_fingerprint(model_path)},
        "baseline": {
            "path": str(baseline_path),
            "fingerprint": model_fingerprint(baseline_path),
            "source": baseline_source,
            "same_as_model": same_model,
        },
        "metrics": rows,
        "summary": verdict,
        "benchmarks": _benchmark_summary(benchmarks),
        "heatmap": {"title": heatmap_title, "anchors": heat_anchors, "positives": heat_positives,
                    "model": model_heat, "baseline": baseline_heat},
        "config": resolved_config,
        "config_hash": config_hash(resolved_config),
        "versions": library_versions("sentence-transformers", "transformers", "torch", "faiss-cpu", "numpy", "scipy"),
    }

    # 6. files, report.json last
    tick = time.perf_counter()
    report_files.write_report_files(report, out)
    timings["write_report"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    report_files.write_timings(out / TIMINGS_NAME, timings)
    report_files.write_report_json(out / REPORT_NAME, report)
    return report
