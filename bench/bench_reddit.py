"""Reddit ingest benchmark: ``pairforge ingest reddit`` on a generated month against a bare read and the ``datasets`` path.

In: the real Pushshift samples in ``../shared/data/reddit/`` (``RC_2005-12.zst``, a
whole month in the old schema; ``pushshift_2024/test_comments.json``, lines of the
2024 dump schema and others). Out: a table on stdout of seconds, CPU seconds, comments
per second and peak memory for each contender at two month sizes, the ratios the
project targets and whether each is met, and whether the pair counts agree.

The month is GENERATED (:func:`build_month`), a comment per line, in the dumps'
on-disk format: each line is a sample line, every field kept byte for byte except
five, compressed as one zstd frame with a 2 GiB window (``zstd --long=31``, level 3;
python-zstandard with ``window_log=31`` where the CLI is missing). With a seeded
generator (the same file for the same size, cached under ``--work-dir`` with
``--keep-inputs``):

* **template**: half the lines take a line of the old-schema month (18 fields, integer
  ``created_utc``), half a line of the 2024 file (its 10 lines of the 2024 schema with
  a float ``created_utc`` and ``_meta``, and 17 lines of three other vintages), drawn
  uniformly within each; ``score`` and everything else come with the line, so scores
  and ``[deleted]`` / ``[removed]`` bodies come at the samples' rates;
* **id**: comment ``i`` gets the base-36 number ``kod0000 + i`` (7 characters, as
  2024 ids), so ids are unique and grow through the file; a ``name`` field becomes
  ``t1_<id>``;
* **parent_id**: a third of the comments (:data:`IN_FILE_REPLY_SHARE`) reply to an
  earlier comment of the file (``t1_<its id>``): 80 % to one drawn uniformly among
  the last 100,000 comments, 20 % to the latest earlier reply (a conversation going
  on), which makes the reply depth about geometric with a longer tail, as in the real
  month (depth 1, 2, 3, 4: 18 %, 6 %, 2 %, 1.2 % of its comments, deepest 10;
  generated: 18 %, 8 %, 4 %, 2 %, deepest 11 at 30,000 comments, 20 at 1M and 10M);
  2 % reply to a comment not in the file (an id below the month's first); the rest
  are top-level (``parent_id`` = the submission, ``t3_``);
* **link_id**: a reply is in its parent's submission; a top-level comment opens a new
  submission 40 % of the time, else joins one of the last 1,000 opened
  (``t3_<base 36 of 1af0000 + n>``);
* **body**: the template's, with `` (i)`` appended before the closing quote, so every
  pair is distinct (exact dedup keeps them), except bodies the source drops anyway
  (``[deleted]``, ``[removed]``, blank, under 9 characters stripped): those stay byte
  for byte, so they are dropped at the samples' rate.

Other fields (``created_utc``, ``permalink``, ...) keep the sample line's values.
With ~1,100 distinct templates the file compresses better than a real dump (see the
generation line; real months are about 10x).

Contenders, each in a fresh subprocess on the same file (wall time, CPU time and peak
RSS from :mod:`measuring`: ``wait4`` and a psutil poll of the process tree, after an
``os.sync()``):

* ``pairforge``: ``pairforge ingest reddit FILE --out DIR --quiet``, the CLI as a user
  runs it: the partitioned parent join, body rules, cleaning, length filters, exact
  dedup, the held-out split, quarantine, the input's SHA-256, manifests;
* ``floor``: the least any tool must do to get the same pairs: a python-zstandard
  stream (``max_window_size=2**31``) cut into whole-line blocks, polars'
  ``read_ndjson`` of ``id``, ``parent_id``, ``body``, ``score`` (on a thread pool while
  the next block is decompressed), the body rules of the reddit source on reply and
  parent, a polars join of replies to parents, ``write_parquet`` (zstd). It holds the
  month in memory, as a join over all rows does, and does not read ``title`` (which
  pairforge reads to tell a submission from a comment);
* ``datasets``, the path a user would write (at the small size only):
  ``zstd -d --long=31`` to a JSON-lines file, ``load_dataset("json")`` with a
  private cache (every field: the four given as ``features`` fail on the others),
  ``select_columns``, a dict from id to usable body, a batched ``map`` finding each
  reply's parent with the same body rules, ``filter``, ``to_parquet``;
* ``decompress``: a bare python-zstandard stream read to its end, for what the 2 GiB
  window alone costs in time and memory (no ratio).

The pair counts are checked: the floor's pairs must equal pairforge's JOINED pairs,
the rows its source step kept (``rows_read`` less the reddit source's drop reasons in
the manifest); pairforge's written rows are no more (cleaning, length filters,
dedup), and the ``datasets`` path must equal the floor.

Targets: pairforge >= 0.5x the floor's speed (at both sizes), >= 3x the ``datasets``
path's, and pairforge's peak memory growing < 1.5x when the month grows 10x.
``--strict`` exits 1 when one is missed or the counts disagree.

Usage::

    .venv/bin/python bench/bench_reddit.py                          # 1,000,000 and 10,000,000 comments
    .venv/bin/python bench/bench_reddit.py --comments 100000        # 100,000 and 1,000,000: a smoke run
    .venv/bin/python bench/bench_reddit.py --big-comments 50000000 --work-dir /data/bench --keep-inputs
    .venv/bin/python bench/bench_reddit.py --rounds 3 --skip datasets --work-dir /tmp/br --keep-inputs
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
from measuring import Measurement, median_run, run_measured

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = PROJECT_ROOT.parent / "shared" / "data" / "reddit"
OLD_SCHEMA_SAMPLE = SAMPLES / "RC_2005-12.zst"
NEW_SCHEMA_SAMPLE = SAMPLES / "pushshift_2024" / "test_comments.json"
DEFAULT_COMMENTS = 1_000_000
GROWTH = 10
# Targets: speed against the floor and the datasets path, and peak memory growth for a 10x month.
TARGET_VS_FLOOR = 0.5
TARGET_VS_DATASETS = 3.0
TARGET_MEMORY_GROWTH = 1.5

# --- how the month is made (see the module doc) -----------------------------------
GENERATOR_VERSION = 1
SEED = 19
NEW_SCHEMA_SHARE = 0.5
IN_FILE_REPLY_SHARE = 1 / 3
OUTSIDE_REPLY_SHARE = 0.02
CONVERSATION_SHARE = 0.2  # of in-file replies: to the latest earlier reply
PARENT_WINDOW = 100_000
NEW_SUBMISSION_SHARE = 0.4
SUBMISSION_WINDOW = 1_000
ID_BASE = int("kod0000", 36)
LINK_BASE = int("1af0000", 36)
OUTSIDE_ID_SPAN = 5_000_000
ZSTD_LEVEL = 3
ZSTD_WINDOW_LOG = 31
_BLOCK_COMMENTS = 1 << 16
_DIGITS36 = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
# What the reddit source's candidate step drops a comment for (pipeline/ingest/sources/reddit.py):
# the rows it keeps are the joined pairs that the floor writes.
SOURCE_REASONS = frozenset(
    ["duplicate_comment", "top_level_comment", "bad_parent_id", "parent_not_in_input"]
    + [prefix + reason for prefix in ("", "parent_") for reason in (
        "deleted_or_removed", "empty_body", "body_too_short", "body_too_long", "below_min_score")]
)


# --- the generated month ------------------------------------------------------------
def _value_spans(line: str) -> dict[str, tuple[int, int]]:
    """Where each top-level value of a JSON object line starts and ends (its raw text)."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    pos = line.index("{") + 1

    def skip(at: int) -> int:
        while line[at] in " \t\r":
            at += 1
        return at

    pos = skip(pos)
    while line[pos] != "}":
        key, pos = json.decoder.scanstring(line, pos + 1)  # type: ignore[attr-defined]
        pos = skip(pos)
        assert line[pos] == ":", line[pos - 20 : pos + 20]
        pos = skip(pos + 1)
        _, end = decoder.raw_decode(line, pos)
        spans[key] = (pos, end)
        pos = skip(end)
        if line[pos] == ",":
            pos = skip(pos + 1)
    return spans


def comment_template(line: str, min_body_chars: int, dropped_bodies: tuple[str, ...]) -> str:
    """A ``str.format`` pattern of a sample comment line: ``{id}``, ``{parent}``, ``{link}``
    where those values were (``name`` becomes ``t1_{id}``), `` ({n})`` before the end
    of a body the source keeps; every other byte as in the line."""
    spans = _value_spans(line)
    record = json.loads(line)
    body = record["body"].strip()
    keeps_body = body not in dropped_bodies and len(body) >= min_body_chars
    edits = [(spans["id"], '"{id}"'), (spans["parent_id"], '"{parent}"'), (spans["link_id"], '"{link}"')]
    if isinstance(record.get("name"), str) and record["name"].startswith("t1_"):
        edits.append((spans["name"], '"t1_{id}"'))
    if keeps_body:
        end = spans["body"][1]
        edits.append(((end - 1, end - 1), " ({n})"))
    pattern = []
    pos = 0
    for (start, end), text in sorted(edits):
        pattern.append(line[pos:start].replace("{", "{{").replace("}", "}}"))
        pattern.append(text)
        pos = end
    pattern.append(line[pos:].replace("{", "{{").replace("}", "}}"))
    return "".join(pattern)


def sample_lines() -> tuple[list[str], list[str]]:
    """The old-schema month's lines and the 2024 file's lines, as text."""
    import zstandard

    with open(OLD_SCHEMA_SAMPLE, "rb") as handle:
        old = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(handle).read()
    new = NEW_SCHEMA_SAMPLE.read_bytes()
    return (
        [line for line in old.decode("utf-8").split("\n") if line.strip()],
        [line for line in new.decode("utf-8").split("\n") if line.strip()],
    )


@dataclass(frozen=True)
class MonthStructure:
    """Who replies to whom, per comment ``i`` of the month.

    Attributes:
        template: index into old-schema templates + 2024 templates.
        parent: the comment replied to, -1 when none in the file.
        outside_parent: the id number of a parent not in the file, -1 when none.
        submission: the submission number (link id).
        depth: replies above it in the file (0: top-level or parent not in the file).
    """

    template: np.ndarray
    parent: np.ndarray
    outside_parent: np.ndarray
    submission: np.ndarray
    depth: np.ndarray


def month_structure(comments: int, old_templates: int, new_templates: int, seed: int = SEED) -> MonthStructure:
    """Draw templates, parents and submissions for ``comments`` comments (module doc)."""
    rng = np.random.default_rng(seed)
    index = np.arange(comments, dtype=np.int64)
    is_new = rng.random(comments) < NEW_SCHEMA_SHARE
    template = np.where(is_new, old_templates + rng.integers(0, new_templates, comments), rng.integers(0, old_templates, comments))
    kind = rng.random(comments)
    in_file = kind < IN_FILE_REPLY_SHARE
    in_file[:1] = False
    outside = ~in_file & (kind < IN_FILE_REPLY_SHARE + OUTSIDE_REPLY_SHARE)
    back = (rng.random(comments) * np.minimum(index, PARENT_WINDOW)).astype(np.int64) + 1
    latest_reply = np.maximum.accumulate(np.concatenate([[-1], np.where(in_file, index, -1)[:-1]]))
    conversation = (rng.random(comments) < CONVERSATION_SHARE) & (latest_reply >= 0)
    parent = np.where(in_file, np.where(conversation, latest_reply, index - back), -1)
    outside_parent = np.where(outside, ID_BASE - 1 - rng.integers(0, OUTSIDE_ID_SPAN, comments), -1)
    # Comments that are not in-file replies sit in a submission of their own choosing.
    opens = (rng.random(comments) < NEW_SUBMISSION_SHARE) & ~in_file
    opens[np.argmax(~in_file)] = True
    opened = np.cumsum(opens) - 1
    joined = opened - (rng.random(comments) * np.minimum(opened + 1, SUBMISSION_WINDOW)).astype(np.int64)
    submission = np.where(opens, opened, joined)
    depth = np.zeros(comments, dtype=np.int64)
    # parent < i: each pass settles one more level of every thread.
    has_parent = parent >= 0
    safe_parent = np.maximum(parent, 0)
    while True:
        new_depth = np.where(has_parent, depth[safe_parent] + 1, 0)
        new_submission = np.where(has_parent, submission[safe_parent], submission)
        if np.array_equal(new_depth, depth) and np.array_equal(new_submission, submission):
            break
        depth, submission = new_depth, new_submission
    return MonthStructure(template, parent, outside_parent, submission, depth)


def base36(numbers: np.ndarray) -> list[str]:
    """Lower-case base-36 text of 7-digit numbers (``36**6 <= n < 36**7``)."""
    assert numbers.size == 0 or (numbers.min() >= 36**6 and numbers.max() < 36**7), "ids outside 7 digits"
    digits = np.empty((numbers.size, 7), dtype=np.uint8)
    rest = numbers.astype(np.int64)
    for place in range(6, -1, -1):
        rest, digit = np.divmod(rest, 36)
        digits[:, place] = _DIGITS36[digit]
    return digits.view("S7").ravel().astype("U7").tolist()


class _Compressed:
    """A file written through ``zstd --long=31`` (or python-zstandard with the same window)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")
        self._process: subprocess.Popen[bytes] | None = None
        if shutil.which("zstd"):
            self._process = subprocess.Popen(
                ["zstd", "-q", f"-{ZSTD_LEVEL}", f"--long={ZSTD_WINDOW_LOG}", "-T2", "-c"], stdin=subprocess.PIPE,
                stdout=self._file,
            )
            assert self._process.stdin is not None
            self.sink: BinaryIO = self._process.stdin
        else:
            import zstandard

            params = zstandard.ZstdCompressionParameters.from_level(
                ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, enable_ldm=True, threads=2
            )
            self.sink = zstandard.ZstdCompressor(compression_params=params).stream_writer(self._file, closefd=False)

    def close(self) -> None:
        self.sink.close()
        if self._process is not None and self._process.wait() != 0:
            raise RuntimeError(f"zstd exited {self._process.returncode}")
        self._file.close()


def build_month(comments: int, out: Path, seed: int = SEED) -> dict[str, Any]:
    """Write a generated month of ``comments`` comments to ``out`` (a ``.zst``); its shape.

    Reused when ``out`` and its ``.json`` shape file exist for the same size, seed and
    generator. The shape: comment counts by kind, reply depths, template schemas,
    decompressed and compressed bytes.
    """
    from pipeline.ingest.sources import reddit

    shape_path = out.with_name(out.name + ".json")
    wanted = {"comments": comments, "seed": seed, "generator": GENERATOR_VERSION}
    if out.exists() and shape_path.exists():
        shape = json.loads(shape_path.read_text())
        if {k: shape.get(k) for k in wanted} == wanted and out.stat().st_size == shape["compressed_bytes"]:
            return shape
    old_lines, new_lines = sample_lines()
    min_chars = reddit.Options().min_body_chars
    templates = [comment_template(line, min_chars, reddit.DELETED_BODIES) for line in old_lines + new_lines]
    structure = month_structure(comments, len(old_lines), len(new_lines), seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    written = 0
    compressed = _Compressed(tmp)
    try:
        for start in range(0, comments, _BLOCK_COMMENTS):
            end = min(start + _BLOCK_COMMENTS, comments)
            block = range(start, end)
            ids = base36(ID_BASE + np.arange(start, end))
            parent = structure.parent[start:end]
            outside = structure.outside_parent[start:end]
            parent_ids = base36(np.where(parent >= 0, ID_BASE + parent, np.where(outside >= 0, outside, 36**6)))
            links = base36(LINK_BASE + structure.submission[start:end])
            lines = []
            for offset, (i, template) in enumerate(zip(block, structure.template[start:end].tolist())):
                link = "t3_" + links[offset]
                reply_to = "t1_" + parent_ids[offset] if parent[offset] >= 0 or outside[offset] >= 0 else link
                lines.append(templates[template].format(id=ids[offset], parent=reply_to, link=link, n=i))
            data = ("\n".join(lines) + "\n").encode("utf-8")
            compressed.sink.write(data)
            written += len(data)
    finally:
        compressed.close()
    os.replace(tmp, out)
    depths = Counter(structure.depth.tolist())
    shape = dict(
        wanted,
        in_file_replies=int((structure.parent >= 0).sum()),
        outside_replies=int((structure.outside_parent >= 0).sum()),
        top_level=int(((structure.parent < 0) & (structure.outside_parent < 0)).sum()),
        depths={str(depth): count for depth, count in sorted(depths.items())},
        new_schema_lines=int((structure.template >= len(old_lines)).sum()),
        decompressed_bytes=written,
        compressed_bytes=out.stat().st_size,
    )
    shape_path.write_text(json.dumps(shape, indent=1) + "\n")
    return shape


# --- the contenders (the floor and datasets run as `bench_reddit.py --worker NAME IN OUT`) ---
def _usable_body(body: Any) -> Any:
    """The reddit source's body rules as a polars expression: not deleted or removed,
    not blank, at least ``min_body_chars`` characters once stripped."""
    from pipeline.ingest.sources import reddit

    stripped = body.str.strip_chars()
    return ~stripped.is_in(list(reddit.DELETED_BODIES)) & (stripped.str.len_chars() >= reddit.Options().min_body_chars)


def whole_line_blocks(stream: BinaryIO, block_bytes: int = 64 << 20) -> Iterator[bytes]:
    """The bytes of ``stream`` in blocks that end at a newline (the last one may not)."""
    pending = b""
    while block := stream.read(block_bytes):
        cut = block.rfind(b"\n")
        if cut < 0:
            pending += block
            continue
        yield pending + block[: cut + 1]
        pending = block[cut + 1 :]
    if pending:
        yield pending


def run_floor(input_path: Path, out_dir: Path) -> int:
    """Decompress, parse the four fields, join replies to parents, write zstd Parquet."""
    from concurrent.futures import ThreadPoolExecutor

    import polars as pl
    import zstandard

    out_dir.mkdir(parents=True, exist_ok=True)
    schema = {"id": pl.String, "parent_id": pl.String, "body": pl.String, "score": pl.Int64}
    with open(input_path, "rb") as handle, ThreadPoolExecutor(max_workers=2) as pool:
        stream = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(handle, read_size=1 << 20)
        parsed = [pool.submit(pl.read_ndjson, io.BytesIO(block), schema=schema) for block in whole_line_blocks(stream)]
        comments = pl.concat([future.result() for future in parsed])
    parents = comments.lazy().filter(_usable_body(pl.col("body"))).select(
        pl.col("id").alias("parent_key"), pl.col("body").alias("anchor")
    )
    replies = comments.lazy().filter(pl.col("parent_id").str.starts_with("t1_") & _usable_body(pl.col("body"))).select(
        pl.col("parent_id").str.strip_prefix("t1_").alias("parent_key"), pl.col("body").alias("positive"), "id"
    )
    pairs = replies.join(parents, on="parent_key", how="inner").select("anchor", "positive", "id").collect()
    pairs.write_parquet(out_dir / "pairs.parquet", compression="zstd")
    return pairs.height


def run_datasets(input_path: Path, out_dir: Path) -> int:
    """The user's path: decompress, load_dataset("json"), a dict of parents, map, to_parquet."""
    import datasets

    from pipeline.ingest.sources import reddit

    datasets.disable_progress_bars()
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = out_dir / "comments.jsonl"
    decompress_to(input_path, lines)
    comments = datasets.load_dataset(
        "json", data_files=str(lines), split="train", cache_dir=str(out_dir / "hf-cache")
    ).select_columns(["id", "parent_id", "body"])
    deleted, min_chars = set(reddit.DELETED_BODIES), reddit.Options().min_body_chars

    def usable(body: str) -> bool:
        stripped = body.strip()
        return stripped not in deleted and len(stripped) >= min_chars

    parents = {id_: body for id_, body in zip(comments["id"], comments["body"]) if usable(body)}

    def find_parents(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        anchors = []
        for parent_id, body in zip(batch["parent_id"], batch["body"]):
            is_reply = parent_id.startswith("t1_") and usable(body)
            anchors.append(parents.get(parent_id[3:]) if is_reply else None)
        return {"anchor": anchors}

    pairs = (
        comments.map(find_parents, batched=True)
        .filter(lambda anchors: [a is not None for a in anchors], batched=True, input_columns=["anchor"])
        .rename_column("body", "positive")
        .select_columns(["anchor", "positive", "id"])
    )
    pairs.to_parquet(str(out_dir / "pairs.parquet"))
    return pairs.num_rows


def decompress_to(input_path: Path, out: Path) -> None:
    """``zstd -d --long=31 INPUT -o OUT`` (python-zstandard where the CLI is missing)."""
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-d", "-q", "-f", f"--long={ZSTD_WINDOW_LOG}", str(input_path), "-o", str(out)], check=True)
        return
    import zstandard

    with open(input_path, "rb") as source, open(out, "wb") as sink:
        zstandard.ZstdDecompressor(max_window_size=2**ZSTD_WINDOW_LOG).copy_stream(source, sink)


def run_decompress(input_path: Path, out_dir: Path) -> int:
    """A bare python-zstandard stream read to its end: what the 2 GiB window costs alone."""
    import zstandard

    with open(input_path, "rb") as handle:
        stream = zstandard.ZstdDecompressor(max_window_size=2**ZSTD_WINDOW_LOG).stream_reader(handle, read_size=1 << 20)
        return sum(block.count(b"\n") for block in iter(lambda: stream.read(16 << 20), b""))


WORKERS = {"floor": run_floor, "datasets": run_datasets, "decompress": run_decompress}
CONTENDERS = ("pairforge", "floor", "datasets", "decompress")


# --- measuring ---------------------------------------------------------------------
@dataclass(frozen=True)
class RedditRun:
    """A measurement with the pairs it found: the joined pairs (pairforge: its source
    step's, from the manifest; the others: the rows they wrote) and pairforge's
    written rows (None for the others)."""

    measurement: Measurement
    pairs: int
    written: int | None = None


def pairforge_command(input_path: Path, out_dir: Path) -> list[str]:
    """``pairforge ingest reddit FILE --out DIR --quiet``, through the console script."""
    script = Path(sys.executable).with_name("pairforge")
    return [str(script), "ingest", "reddit", str(input_path), "--out", str(out_dir), "--quiet"]


def joined_pairs(manifest: dict[str, Any]) -> int:
    """The pairs pairforge's reddit source step kept: every comment read, less those it
    dropped for a source reason and the unreadable ones (before cleaning and dedup)."""
    source_drops = sum(count for reason, count in manifest["dropped"].items() if reason in SOURCE_REASONS)
    return manifest["rows_read"] - source_drops - manifest["quarantine"]["rows"]


def measure(contender: str, input_path: Path, comments: int, out_dir: Path, env: dict[str, str]) -> RedditRun:
    """Run one contender in a fresh subprocess on ``input_path``; see :mod:`measuring`."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if contender == "pairforge":
        command = pairforge_command(input_path, out_dir)
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", contender, str(input_path), str(out_dir)]
    measured, output = run_measured(contender, command, comments, env)
    if contender == "pairforge":
        manifest = json.loads((out_dir / "reddit-replies" / "manifest.json").read_text())
        run = RedditRun(dataclasses.replace(measured, rows_out=manifest["rows_kept"]), joined_pairs(manifest), manifest["rows_kept"])
    else:
        rows = json.loads(output.strip().splitlines()[-1])["rows_out"]
        run = RedditRun(dataclasses.replace(measured, rows_out=rows), rows)
    shutil.rmtree(out_dir, ignore_errors=True)
    return run


def _read_through(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


def _worker_main(contender: str, input_path: Path, out_dir: Path) -> None:
    print(json.dumps({"rows_out": WORKERS[contender](input_path, out_dir)}))


# --- the report --------------------------------------------------------------------
def report(results: dict[tuple[str, int], RedditRun], small: int, big: int | None) -> tuple[str, bool]:
    """The table, the ratios, the pair-count checks and the verdicts; True when all hold."""
    lines = [
        f"{'contender':<11} {'comments':>11} {'seconds':>9} {'cpu s':>7} {'comments/s':>11} {'peak MiB':>9}"
        f" {'pairs':>10} {'written':>10}"
    ]
    lines.append("-" * len(lines[0]))
    for (name, size), run in sorted(results.items(), key=lambda item: (item[0][1], CONTENDERS.index(item[0][0]))):
        m = run.measurement
        written = f"{run.written:,}" if run.written is not None else ""
        lines.append(
            f"{name:<11} {size:>11,} {m.seconds:>9.1f} {m.cpu_seconds:>7.1f} {m.lines_per_second:>11,.0f}"
            f" {m.peak_mib:>9.0f} {(run.pairs if name != 'decompress' else 0):>10,} {written:>10}"
        )
    checks: list[tuple[str, bool, str]] = []
    sizes = [small] + ([big] if big else [])
    for size in sizes:
        pf, floor = results.get(("pairforge", size)), results.get(("floor", size))
        if pf and floor:
            ratio = floor.measurement.seconds / pf.measurement.seconds
            checks.append((f"pairforge speed / floor speed, {size:,} comments = {ratio:.2f}x", ratio >= TARGET_VS_FLOOR, f">= {TARGET_VS_FLOOR}x"))
            checks.append((f"floor pairs = pairforge joined pairs, {size:,}: {floor.pairs:,} / {pf.pairs:,}", floor.pairs == pf.pairs, "equal"))
    pf, user = results.get(("pairforge", small)), results.get(("datasets", small))
    if pf and user:
        ratio = user.measurement.seconds / pf.measurement.seconds
        checks.append((f"pairforge speed / datasets speed, {small:,} comments = {ratio:.2f}x", ratio >= TARGET_VS_DATASETS, f">= {TARGET_VS_DATASETS}x"))
        checks.append((f"datasets pairs = pairforge joined pairs, {small:,}: {user.pairs:,} / {pf.pairs:,}", user.pairs == pf.pairs, "equal"))
    notes = []
    if big:
        growth = {
            name: results[(name, big)].measurement.peak_mib / results[(name, small)].measurement.peak_mib
            for name in CONTENDERS if (name, small) in results and (name, big) in results
        }
        if "pairforge" in growth:
            checks.append((f"pairforge peak memory, {big:,} / {small:,} comments = {growth['pairforge']:.2f}x",
                           growth["pairforge"] < TARGET_MEMORY_GROWTH, f"< {TARGET_MEMORY_GROWTH}x"))
        notes += [f"{name} peak memory growth {value:.2f}x" for name, value in growth.items() if name != "pairforge"]
        above = [
            results[("pairforge", s)].measurement.peak_mib - results[("decompress", s)].measurement.peak_mib
            for s in (small, big) if ("pairforge", s) in results and ("decompress", s) in results
        ]
        if len(above) == 2 and min(above) > 0:
            notes.append(
                f"pairforge peak above a bare decompress (the zstd window): {above[0]:,.0f} -> {above[1]:,.0f} MiB"
                f" = {above[1] / above[0]:.2f}x"
            )
    lines.append("")
    for text, met, target in checks:
        lines.append(f"{text:<74} target {target:<7} {'MET' if met else 'MISSED'}")
    lines += [f"({note}; no target)" for note in notes]
    return "\n".join(lines), all(met for _, met, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comments", type=int, default=DEFAULT_COMMENTS, help=f"comments in the small month (default {DEFAULT_COMMENTS:,})")
    parser.add_argument(
        "--big-comments", type=int, help=f"comments in the big month (default {GROWTH} x --comments; 0: no big month)"
    )
    parser.add_argument("--work-dir", type=Path, help="where months and outputs go (default: a temporary folder)")
    parser.add_argument("--keep-inputs", action="store_true", help="keep the generated months in --work-dir")
    parser.add_argument("--skip", nargs="*", default=[], choices=["floor", "datasets", "decompress"], help="contenders to leave out")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run the contenders this many times, one after the other in each round, and report the medians",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed or the pair counts differ")
    parser.add_argument("--worker", nargs=3, metavar=("CONTENDER", "INPUT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("COMMENTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))
        return 0
    if args.build:
        build_month(int(args.build[0]), Path(args.build[1]))
        return 0
    if args.rounds < 1 or args.comments < 1:
        parser.error("--rounds and --comments must be at least 1")
    small = args.comments
    big = GROWTH * small if args.big_comments is None else args.big_comments
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="pairforge-bench-reddit-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    months: dict[int, Path] = {}
    try:
        for size in [small] + ([big] if big else []):
            path = work / f"reddit-{size}.zst"
            t0 = time.perf_counter()
            # In a process of its own: a child's peak RSS (wait4) starts from this
            # process's high-water mark, which must stay below every contender's.
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build", str(size), str(path)], env=env, check=True)
            shape = json.loads(path.with_name(path.name + ".json").read_text())
            depths = {int(d): n for d, n in shape["depths"].items()}
            print(
                f"month of {size:,} comments: {path} ({shape['compressed_bytes'] / 2**20:,.0f} MiB zstd,"
                f" {shape['decompressed_bytes'] / 2**30:.2f} GiB of JSON lines, ratio"
                f" {shape['decompressed_bytes'] / shape['compressed_bytes']:.1f}; {time.perf_counter() - t0:.0f} s);"
                f" {shape['in_file_replies'] / size:.1%} reply to a comment in the file,"
                f" {shape['outside_replies'] / size:.1%} to one outside, {shape['top_level'] / size:.1%} top-level;"
                f" deepest reply {max(depths)}; {shape['new_schema_lines'] / size:.0%} from the 2024 file",
                flush=True,
            )
            months[size] = path
            _read_through(path)  # into the page cache, for every contender alike
        results_by_round: dict[tuple[str, int], list[RedditRun]] = {}
        for round_ in range(args.rounds):
            for size, path in months.items():
                for contender in CONTENDERS:
                    if contender in args.skip or (contender == "datasets" and size != small):
                        continue
                    label = f" (round {round_ + 1} of {args.rounds})" if args.rounds > 1 else ""
                    print(f"running {contender} on {size:,} comments{label} ...", flush=True)
                    run = measure(contender, path, size, work / f"out-{contender}", env)
                    results_by_round.setdefault((contender, size), []).append(run)
    finally:
        if not args.keep_inputs:
            for name in ("reddit-*.zst", "reddit-*.zst.json", ".reddit-*.tmp"):
                for path in work.glob(name):
                    path.unlink()
            if args.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
    if args.rounds > 1:
        for (name, size), runs in results_by_round.items():
            print(f"  {name} {size:,}: {' '.join(f'{r.measurement.seconds:.2f}' for r in runs)} s")
    results = {
        key: dataclasses.replace(runs[0], measurement=median_run([r.measurement for r in runs]))
        for key, runs in results_by_round.items()
    }
    table, all_met = report(results, small, big or None)
    print()
    print(table)
    return 1 if args.strict and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
