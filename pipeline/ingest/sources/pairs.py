"""Pairs: the generic JSON-lines training files of sentence-transformers' 1B-pairs project.

In: ``.jsonl`` / ``.json`` files, plain, ``.gz`` or ``.zst``, one training example per
line in any of the layouts of the ``embedding-training-data`` files:

* ``["text1", "text2"]`` a pair, ``["anchor", "positive", "negative"]`` a triplet;
  a longer list gives (anchor, positive, first negative): texts 1, 2 and 3;
* ``{"texts": [...]}`` the same list inside an object;
* ``{"set": ["text1", "text2", ...]}`` texts that all mean the same thing: the pair is
  the first two (the 1B training code draws two at random; ours must be
  deterministic, and one line gives one row);
* ``{"query": "text", "pos": [...], "neg": [...]}`` (``neg`` optional): the query,
  its first positive and its first negative (a bare string stands for a one-item list).

Out: ONE DATASET PER INPUT FILE, unit ``line``, named by :func:`dataset_name` from
the file name: ``gooaq_pairs.jsonl.gz`` -> ``pairs-gooaq_pairs``. With the option
``name_root`` the name keeps the file's folders below that root, so the 1B layout
``stackexchange_title_body/skeptics.stackexchange.com.jsonl.gz`` becomes
``pairs-stackexchange_title_body--skeptics.stackexchange.com``: the 1B name, less its
extension, with ``/`` as ``--`` and a ``pairs-`` prefix (dataset names are one path
segment; :func:`one_b_name` turns it back).

A file's dataset has a ``negative`` column when the first readable line of the file
carries a third text (:func:`file_has_negative`); in such a triplet file, a line
without one is dropped as ``missing_negative``. Lines with fewer than two texts are
dropped as ``too_few_texts``. Lines that are not JSON, hold a layout this module does
not know, or put something other than a string where a text belongs are quarantined
(``malformed_json``, ``unknown_json_layout``, ``not_a_list_or_object``,
``wrong_type:FIELD``, ``missing_field:FIELD``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import polars as pl

from pipeline.ingest.sources import DatasetSpec
from pipeline.io.context import ReadContext
from pipeline.io.errors import InputFileError
from pipeline.io.jsonl import read_json_values

NAME = "pairs"
# What a row of this source holds, for the error on a file with none (pipeline.ingest.stage).
FIELDS = "texts/set/query+pos"
NAME_PREFIX = "pairs-"
FOLDER_SEPARATOR = "--"
_EXTENSIONS = (".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".jsonl", ".json", ".gz", ".zst")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_SNIFF_CHUNK_BYTES = 1 << 16
_STAGED_SCHEMA = {"anchor": pl.String, "positive": pl.String, "negative": pl.String, "_line": pl.Int64}

Texts = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class Options:
    """Options of the pairs source.

    Attributes:
        name_root: a folder the inputs lie under (the 1B project's download folder);
            when set, dataset names keep each input's folders below it. Empty: names
            come from the file name alone.
    """

    name_root: str = ""


def dataset_name(relative_path: str) -> str:
    """The dataset name of a 1B-pairs file given by its path relative to the data root.

    ``gooaq_pairs.jsonl.gz`` -> ``pairs-gooaq_pairs``;
    ``stackexchange_title_body/skeptics.stackexchange.com.jsonl.gz`` ->
    ``pairs-stackexchange_title_body--skeptics.stackexchange.com``. Characters other
    than letters, digits, ``.``, ``_`` and ``-`` become ``_``; the result is one path
    segment that cannot escape a corpus root.

    Raises:
        ValueError: an absolute path, a ``..`` or ``.`` segment, or nothing left of the name.
    """
    parts = relative_path.replace("\\", "/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"pairs: {relative_path!r} is not a relative file path inside the data root")
    *folders, file_name = parts
    stem = next((file_name[: -len(ext)] for ext in _EXTENSIONS if file_name.lower().endswith(ext)), file_name)
    if not stem.strip("."):
        raise ValueError(f"pairs: {relative_path!r} leaves no dataset name once its extension is removed")
    segments = [_UNSAFE_CHARS.sub("_", part) for part in (*folders, stem)]
    return NAME_PREFIX + FOLDER_SEPARATOR.join(segments)


def one_b_name(name: str, extension: str = ".jsonl.gz") -> str:
    """The 1B-pairs config name a dataset name came from (the inverse of :func:`dataset_name`
    for names made only of safe characters)."""
    if not name.startswith(NAME_PREFIX):
        raise ValueError(f"pairs: {name!r} is not a pairs dataset name")
    return name[len(NAME_PREFIX) :].replace(FOLDER_SEPARATOR, "/") + extension


def input_dataset_name(path: Path, options: Options) -> str:
    """The dataset name of one input file under ``options`` (see :func:`dataset_name`).

    Raises:
        ValueError: ``name_root`` is set and the file is not inside it.
    """
    if not options.name_root:
        return dataset_name(path.name)
    root = Path(options.name_root).resolve()
    resolved = Path(path).resolve()
    if root not in resolved.parents:
        raise ValueError(f"pairs: input {path} is not inside name_root {options.name_root}")
    return dataset_name(resolved.relative_to(root).as_posix())


def dataset_specs(inputs: list[Path], options: Options) -> list[DatasetSpec]:
    """One ``line`` dataset per input file; triplets when the file's first line has a negative.

    Raises:
        ValueError: two inputs would write the same dataset (the message names both).
    """
    specs = []
    seen: dict[str, Path] = {}
    for index, path in enumerate(inputs):
        name = input_dataset_name(path, options)
        if name in seen:
            hint = "" if options.name_root else "; give -o name_root=DIR to keep their folders in the names"
            raise ValueError(f"pairs: inputs {seen[name]} and {path} both map to dataset {name!r}{hint}")
        seen[name] = path
        specs.append(DatasetSpec(name, unit="line", with_negative=file_has_negative(path), inputs=(index,), row_local=True))
    return specs


def texts_of(value: Any) -> Texts | str:
    """(anchor, positive, negative) of one parsed line, or why the line is unreadable.

    Missing texts are None (fewer than two texts, no negative); the caller decides
    what that costs. A returned string is a quarantine reason.
    """
    if isinstance(value, list):
        return _texts_of_list(value, "texts")
    if not isinstance(value, dict):
        return "not_a_list_or_object"
    if "texts" in value:
        return _texts_of_list(value["texts"], "texts")
    if "set" in value:
        texts = _texts_of_list(value["set"], "set")
        return texts if isinstance(texts, str) else (texts[0], texts[1], None)
    if "query" in value:
        query = value["query"]
        if query is None:
            return "missing_field:query"
        if not isinstance(query, str):
            return "wrong_type:query"
        positives = _string_list(value.get("pos"), "pos")
        if isinstance(positives, str):
            return positives
        negatives = _string_list(value.get("neg"), "neg")
        if isinstance(negatives, str):
            return negatives
        return (query, positives[0] if positives else None, negatives[0] if negatives else None)
    return "unknown_json_layout"


def _texts_of_list(texts: Any, field: str) -> Texts | str:
    if texts is None:
        return f"missing_field:{field}"
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        return f"wrong_type:{field}"
    padded = texts[:3] + [None] * (3 - min(len(texts), 3))
    if len(texts) < 2:
        padded[0] = padded[1] = None
    return (padded[0], padded[1], padded[2])


def _string_list(value: Any, field: str) -> list[str] | str:
    """A ``pos``/``neg`` field as a list of strings (absent or null: empty), or a reject reason."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        return f"wrong_type:{field}"
    return value


def file_has_negative(path: Path) -> bool:
    """Whether the first readable line of ``path`` carries a negative (a third text).

    Reads only the first lines. An empty or unreadable file counts as pairs.
    """
    ctx = ReadContext(path=Path(path), display_name=str(path), chunk_bytes=_SNIFF_CHUNK_BYTES)
    try:
        for batch in read_json_values(Path(path), ctx):
            for value in batch.values:
                texts = texts_of(value)
                if not isinstance(texts, str):
                    return texts[2] is not None
    except (InputFileError, OSError):
        return False
    return False


def stage_file(path: Path, ctx: ReadContext, options: Options) -> Iterator[pl.DataFrame]:
    """Yield (anchor, positive, negative, _line) rows of one JSON-lines file, a batch per chunk.

    anchor and positive are null on a line with fewer than two texts; negative is
    null when the line has none.
    """
    for batch in read_json_values(path, ctx):
        anchors: list[str | None] = []
        positives: list[str | None] = []
        negatives: list[str | None] = []
        lines: list[int] = []
        for line, value in zip(batch.lines, batch.values):
            # The 1B files are mostly plain pairs: skip the general dispatch for them.
            if type(value) is list and len(value) == 2 and type(value[0]) is str and type(value[1]) is str:
                anchors.append(value[0])
                positives.append(value[1])
                negatives.append(None)
                lines.append(line)
                continue
            texts = texts_of(value)
            if isinstance(texts, str):
                ctx.reject(line, texts, orjson.dumps(value))
                continue
            anchors.append(texts[0])
            positives.append(texts[1])
            negatives.append(texts[2])
            lines.append(line)
        yield pl.DataFrame(
            {"anchor": anchors, "positive": positives, "negative": negatives, "_line": lines}, schema=_STAGED_SCHEMA
        )


def build_candidates(staged: pl.LazyFrame, options: Options) -> dict[str, pl.LazyFrame]:
    """One LazyFrame per input file: its lines as candidate pairs or triplets."""
    files = staged.select("_file_index", "source_file").unique().sort("_file_index").collect()
    out: dict[str, pl.LazyFrame] = {}
    for file_index, source_file in files.iter_rows():
        path = Path(source_file)
        with_negative = _staged_has_negative(staged, file_index) if not path.exists() else file_has_negative(path)
        rows = staged.filter(pl.col("_file_index") == file_index)
        reason = pl.when(pl.col("anchor").is_null() | pl.col("positive").is_null()).then(pl.lit("too_few_texts"))
        if with_negative:
            reason = reason.when(pl.col("negative").is_null()).then(pl.lit("missing_negative"))
        texts = ["anchor", "positive"] + (["negative"] if with_negative else [])
        out[input_dataset_name(path, options)] = rows.select(
            *texts,
            pl.format("{}:{}", pl.lit(path.name), pl.col("_line")).alias("id"),
            "source_file",
            pl.col("_line").alias("source_line"),
            "_file_index",
            reason.otherwise(pl.lit(None, dtype=pl.String)).alias("drop_reason"),
        )
    return out


def _staged_has_negative(staged: pl.LazyFrame, file_index: int) -> bool:
    """The same decision as :func:`file_has_negative`, from the staged rows, for an input
    that is no longer where it was staged from."""
    first = staged.filter(pl.col("_file_index") == file_index).sort("_line").select("negative").head(1).collect()
    return first.height > 0 and first.item() is not None
