"""Decontamination: a dataset folder and the evaluation sets a user names in; the rows free of test text out.

In: a dataset folder and a :class:`DecontaminationConfig` naming evaluation sets: STSb
files (read by :func:`pipeline.evaluate.benchmarks.read_stsb`), NLI inputs (read by
:func:`pipeline.evaluate.benchmarks.read_nli_input`: the premises and hypotheses the
evaluation scores), BEIR-style folders (``corpus.jsonl`` with ``_id``, ``title``,
``text``; ``queries.jsonl`` with ``_id``, ``text``) and optionally the dataset's own
held-out split. Out: a dataset folder (:mod:`pipeline.curate.step`) without the
training rows whose anchor, positive or any negative matches an evaluation text,
dropped as ``contaminated``, each quarantined with the column that matched, how
(``exact`` or ``ngram``) and the evaluation set.

Matching, in this order:

1. **exact**: the texts equal after the corpus' normalization
   (:func:`pipeline.ingest.normalize.normalize_column`) and lower-casing;
2. **ngram** (``ngram_overlap = n``): the texts share a run of ``n`` words (words:
   ``\\w+`` runs of the lower-cased normalized text; 13 is GPT-3's choice). A text
   shorter than ``n`` words has no n-gram: it can only match exactly.

No model, no embedding: this step reads text only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.corpus.manifest import MANIFEST_NAME
from pipeline.corpus.schema import negative_columns
from pipeline.corpus.shards import DEFAULT_ROWS_PER_SHARD, HELDOUT_DIR, shard_paths
from pipeline.curate.step import Echo, Verdict, normalized, run_step
from pipeline.progress import progress_bar

STAGE = "decontaminate"
SECTION = "decontamination"
BEIR_FILES = ("corpus.jsonl", "queries.jsonl")
_WORD = re.compile(r"\w+")
_TEXTS_PER_BLOCK = 65_536


@dataclass(frozen=True)
class DecontaminationConfig:
    """Which evaluation texts no training row may hold, and how they are matched (saved in the manifest).

    Attributes:
        stsb: STS benchmark files (tab separated, quoting off) whose sentences are evaluation texts.
        nli: NLI evaluation inputs: SNLI/MultiNLI JSON lines, SentEval s1.* files or folders, or
            corpus dataset folders (their held-out triplets); the texts the evaluation scores.
        beir: BEIR-style folders holding corpus.jsonl (_id, title, text) and/or queries.jsonl (_id, text).
        heldout: also check against the held-out split of the dataset itself (what held-out retrieval scores).
        ngram_overlap: also drop a row sharing a run of this many words with an evaluation text (13 as in
            GPT-3's decontamination); None or 0: exact matches only.
        rows_per_shard: the most rows an output shard holds.
    """

    stsb: tuple[str, ...] = ()
    nli: tuple[str, ...] = ()
    beir: tuple[str, ...] = ()
    heldout: bool = False
    ngram_overlap: int | None = field(default=None, metadata={"zero_is_none": True, "metavar": "N"})
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD

    def __post_init__(self) -> None:
        for name in ("stsb", "nli", "beir"):
            object.__setattr__(self, name, tuple(str(p) for p in getattr(self, name)))
        if self.ngram_overlap == 0:
            object.__setattr__(self, "ngram_overlap", None)
        if self.ngram_overlap is not None and self.ngram_overlap < 1:
            raise ValueError(f"ngram_overlap must be a positive number of words (or 0 for none), got {self.ngram_overlap}")

    @property
    def names_evaluation_sets(self) -> bool:
        """Whether the config names anything to check against."""
        return bool(self.stsb or self.nli or self.beir or self.heldout)


@dataclass
class EvaluationSet:
    """The texts of one evaluation input and the files they came from."""

    kind: str
    path: str
    texts: list[str]
    files: list[str]


# --- 1. the evaluation texts ---------------------------------------------------------


def _nli_files(path: Path) -> list[str]:
    from pipeline.ingest.sources import nli

    if path.is_dir() and (path / MANIFEST_NAME).exists():
        return [str(p) for p in shard_paths(path, HELDOUT_DIR)]
    return [str(p) for p in nli.companion_files(path)] if nli.is_senteval(path) else [str(path)]


def _read_beir_file(path: Path) -> list[str]:
    """``text`` (and a non-empty ``title``) of each line of a BEIR corpus or queries file."""
    texts: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{number}: expected a JSON object with a string 'text' (and '_id')")
            texts.append(row["text"])
            if isinstance(row.get("title"), str) and row["title"].strip():
                texts.append(row["title"])
    return texts


def read_evaluation_sets(config: DecontaminationConfig) -> list[EvaluationSet]:
    """Every evaluation set the config names, read by the evaluation's own readers.

    Raises:
        FileNotFoundError: a named file or folder does not exist.
        ValueError: a file cannot be read (the message names it and where).
    """
    from pipeline.evaluate.benchmarks import read_nli_input, read_stsb

    sets: list[EvaluationSet] = []
    for path in config.stsb:
        if not Path(path).is_file():
            raise FileNotFoundError(f"STSb file not found: {path}")
        pairs = read_stsb(path)
        sets.append(EvaluationSet("stsb", path, pairs.sentences1 + pairs.sentences2, [path]))
    for path in config.nli:
        triplets = read_nli_input(path)
        sets.append(EvaluationSet("nli", path, triplets.anchors + triplets.positives + triplets.negatives, _nli_files(Path(path))))
    for path in config.beir:
        files = [Path(path) / name for name in BEIR_FILES if (Path(path) / name).is_file()]
        if not files:
            raise FileNotFoundError(f"BEIR folder {path}: holds neither {' nor '.join(BEIR_FILES)}")
        sets.append(EvaluationSet("beir", path, [t for f in files for t in _read_beir_file(f)], [str(f) for f in files]))
    return sets


def _heldout_set(dataset_dir: Path) -> EvaluationSet:
    texts: list[str] = []
    files = shard_paths(dataset_dir, HELDOUT_DIR)
    for path in files:
        frame = pl.read_parquet(path)
        for column in ["anchor", "positive", *negative_columns(frame.columns)]:
            texts += frame.get_column(column).drop_nulls().to_list()
    return EvaluationSet("heldout", f"{dataset_dir.name}/{HELDOUT_DIR}", texts, [str(p) for p in files])


def match_keys(series: pl.Series) -> pl.Series:
    """What two texts must share to match exactly: the normalized text, lower-cased."""
    return normalized(series).str.to_lowercase()


def ngram_hashes(key: str, n: int) -> np.ndarray:
    """64-bit hashes of the runs of ``n`` words of a match key (none when it has fewer words)."""
    import xxhash

    words = _WORD.findall(key)
    return np.array([xxhash.xxh64_intdigest(" ".join(words[i : i + n]).encode("utf-8")) for i in range(len(words) - n + 1)], dtype=np.uint64)


@dataclass
class _Index:
    """The evaluation texts' exact keys and n-gram hashes, each with the first set holding it."""

    exact: pl.DataFrame  # key, set
    ngrams: np.ndarray  # sorted distinct hashes
    ngram_sets: np.ndarray  # the first set of each hash


def _build_index(sets: list[EvaluationSet], n: int | None) -> _Index:
    frames = [pl.DataFrame({"key": match_keys(pl.Series(s.texts, dtype=pl.String)), "set": i}) for i, s in enumerate(sets)]
    exact = pl.concat(frames).filter(pl.col("key") != "").unique(subset="key", keep="first", maintain_order=True)
    hashes, owners = [np.empty(0, dtype=np.uint64)], [np.empty(0, dtype=np.int64)]
    if n is not None:
        for key, owner in exact.iter_rows():
            found = ngram_hashes(key, n)
            hashes.append(found)
            owners.append(np.full(len(found), owner, dtype=np.int64))
    every, sets_of = np.concatenate(hashes), np.concatenate(owners)
    order = np.lexsort((sets_of, every))
    distinct, first = np.unique(every[order], return_index=True)
    return _Index(exact.with_columns(pl.col("set").cast(pl.Int64)), distinct, sets_of[order][first])


# --- 2. the training texts -----------------------------------------------------------


def _ngram_match_sets(keys: list[str], index: _Index, n: int) -> np.ndarray:
    """For each key, the first evaluation set sharing one of its n-grams, or -1."""
    result = np.full(len(keys), -1, dtype=np.int64)
    if not len(index.ngrams):
        return result
    for start in range(0, len(keys), _TEXTS_PER_BLOCK):
        block = keys[start : start + _TEXTS_PER_BLOCK]
        hashes = [ngram_hashes(k, n) for k in block]
        every = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        owner = np.repeat(np.arange(len(block)), [len(h) for h in hashes])
        position = np.minimum(np.searchsorted(index.ngrams, every), len(index.ngrams) - 1)
        hit = index.ngrams[position] == every
        sets = np.full(len(block), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(sets, owner[hit], index.ngram_sets[position[hit]])
        result[start : start + len(block)] = np.where(sets == np.iinfo(np.int64).max, -1, sets)
    return result


def judge_contamination(pairs: pl.DataFrame, sets: list[EvaluationSet], ngram: int | None, progress: bool) -> Verdict:
    """Mark the rows holding an evaluation text as ``contaminated``, with where and how they matched."""
    index = _build_index(sets, ngram)
    columns = ["anchor", "positive", *negative_columns(pairs.columns)]
    n = len(pairs)
    field_hit = np.full(n, -1, dtype=np.int64)
    match_hit = np.zeros(n, dtype=np.int8)  # 1 exact, 2 ngram
    set_hit = np.full(n, -1, dtype=np.int64)
    with progress_bar(len(columns) * n, "decontaminating", progress, unit="text") as bar:
        for position, column in enumerate(columns):
            keys = match_keys(pairs.get_column(column))
            exact = pl.DataFrame({"key": keys}).join(index.exact, on="key", how="left", maintain_order="left")
            exact_set = exact.get_column("set").fill_null(-1).to_numpy()
            ngram_set = np.full(n, -1, dtype=np.int64)
            if ngram is not None:
                distinct = pl.DataFrame({"key": keys}).unique(maintain_order=True).get_column("key").to_list()
                lookup = pl.DataFrame({"key": distinct, "set": _ngram_match_sets(distinct, index, ngram)})
                joined = pl.DataFrame({"key": keys}).join(lookup, on="key", how="left", maintain_order="left")
                ngram_set = joined.get_column("set").fill_null(-1).to_numpy()
            bar.update(n)
            for kind, hits in ((1, exact_set), (2, ngram_set)):
                # Exact matches of any column come before n-gram matches of any column.
                new = (hits >= 0) & ((match_hit == 0) | ((match_hit == 2) & (kind == 1)))
                field_hit[new], match_hit[new], set_hit[new] = position, kind, hits[new]
    contaminated = match_hit > 0
    reasons = pl.Series("reason", ["contaminated" if hit else None for hit in contaminated], dtype=pl.String)
    details = pl.DataFrame({
        "field": [columns[i] if i >= 0 else None for i in field_hit],
        "match": [("exact", "ngram")[m - 1] if m else None for m in match_hit],
        "eval_set": [sets[i].path if i >= 0 else None for i in set_hit],
    }, schema={"field": pl.String, "match": pl.String, "eval_set": pl.String})  # fmt: skip
    section = {
        "eval_sets": [
            {"kind": s.kind, "path": s.path, "texts": len(s.texts), "rows_matched": int((set_hit[contaminated] == i).sum())}
            for i, s in enumerate(sets)
        ],
        "eval_keys": len(index.exact),
        "eval_ngrams": len(index.ngrams),
        "ngram_overlap": ngram,
        "rows_matched": {"exact": int((match_hit == 1).sum()), "ngram": int((match_hit == 2).sum())},
        "fields_matched": {c: int((field_hit[contaminated] == i).sum()) for i, c in enumerate(columns)},
    }
    return Verdict(reasons=reasons, details=details, section=section)


# --- 3. the step ---------------------------------------------------------------------


def decontaminate(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: DecontaminationConfig,
    force: bool = False,
    echo: Echo | None = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Drop the training rows that hold an evaluation text; write the rest as a dataset folder.

    The arguments, what it returns and raises: as every step's
    (:mod:`pipeline.curate.step`); ``config`` names the evaluation sets and the
    matching. Also raises ValueError when it names nothing to check against, or an
    evaluation file cannot be read.

    Example::

        from pipeline.curate import DecontaminationConfig, decontaminate

        config = DecontaminationConfig(stsb=("sts-test.csv",), ngram_overlap=13)
        manifest = decontaminate("corpus/nli-pairs", "corpus/nli-pairs-decontaminated", config)
        print(manifest["dropped"].get("contaminated", 0))
    """
    if not config.names_evaluation_sets:
        raise ValueError("decontamination needs an evaluation set to check against: --stsb, --nli, --beir or --heldout")
    sets = read_evaluation_sets(config)
    if config.heldout:
        sets.append(_heldout_set(Path(dataset_dir)))
    own = [Path(f) for s in sets if s.kind == "heldout" for f in s.files]
    outside = [f for s in sets if s.kind != "heldout" for f in s.files]

    def judge(pairs: pl.DataFrame, work_dir: Path) -> Verdict:
        return judge_contamination(pairs, sets, config.ngram_overlap, progress)

    return run_step(STAGE, SECTION, dataset_dir, out_dir, config, judge, corpus_files=own, outside_files=outside,
                    force=force, echo=echo)  # fmt: skip
