"""bench/bench_reddit.py: the generated month looks like a real one, and its contenders agree.

The month is checked from its own bytes (decompressed here with python-zstandard, parsed
with json), not from the shape file the generator writes beside it. Nothing is timed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pipeline.ingest.config import IngestConfig
from pipeline.ingest.plan import ingest_source
from pipeline.io.context import ReadContext
from pipeline.io.lines import line_chunks
from tests.helpers import load_bench_script

bench_reddit = load_bench_script("bench_reddit")

VARIED = ("id", "parent_id", "link_id", "name", "body")


def month_lines(path: Path) -> list[bytes]:
    with open(path, "rb") as handle:
        data = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(handle).read()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("month") / "reddit-30000.zst"
    bench_reddit.build_month(30_000, path)
    return path, [json.loads(line) for line in month_lines(path)]


def test_both_schemas_every_field_kept(month: tuple[Path, list[dict[str, Any]]]) -> None:
    """Each line is a sample line with only id, parent_id, link_id, name and the body's
    end changed: both schemas are there, in about equal shares."""
    _, comments = month
    old, new = bench_reddit.sample_lines()
    samples = [json.loads(line) for line in old + new]

    def rest(record: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in record.items() if k not in VARIED}, sort_keys=True)

    bodies_by_rest: dict[str, set[str]] = {}
    for sample in samples:
        bodies_by_rest.setdefault(rest(sample), set()).add(sample["body"])
    for index, comment in enumerate(comments):
        bodies = bodies_by_rest.get(rest(comment))
        assert bodies is not None, f"line {index + 1} matches no sample line apart from the varied fields"
        assert comment["body"] in bodies or comment["body"].removesuffix(f" ({index})") in bodies
        if "name" in comment:
            assert comment["name"] == "t1_" + comment["id"]

    def is_2024_schema(record: dict[str, Any]) -> bool:
        return "_meta" in record and isinstance(record["created_utc"], float)

    def is_old_schema(record: dict[str, Any]) -> bool:
        return len(record) == 18 and isinstance(record["created_utc"], int)

    # Half the lines from each sample file: the old month is all old schema; the 2024
    # file holds both (and other vintages).
    in_2024_file = [json.loads(line) for line in new]
    for schema in (is_2024_schema, is_old_schema):
        expected = (float(schema is is_old_schema) + sum(map(schema, in_2024_file)) / len(in_2024_file)) / 2
        assert abs(sum(map(schema, comments)) / len(comments) - expected) < 0.02, schema.__name__
    assert sum(map(is_2024_schema, comments)) > 0.15 * len(comments)


def test_reply_structure_looks_real(month: tuple[Path, list[dict[str, Any]]]) -> None:
    """Unique ids; a third reply to an earlier comment of the file, in its thread; some to
    comments not in the file; replies nest deeper than one level, fewer at each level."""
    _, comments = month
    position = {c["id"]: i for i, c in enumerate(comments)}
    assert len(position) == len(comments)
    depth: list[int] = []
    kinds: Counter[str] = Counter()
    for i, comment in enumerate(comments):
        parent_id = comment["parent_id"]
        if parent_id.startswith("t3_"):
            assert parent_id == comment["link_id"]
            kinds["top_level"] += 1
            depth.append(0)
        elif parent_id[3:] in position:
            parent = position[parent_id[3:]]
            assert parent < i and comments[parent]["link_id"] == comment["link_id"]
            kinds["in_file"] += 1
            depth.append(depth[parent] + 1)
        else:
            assert parent_id.startswith("t1_")
            kinds["outside"] += 1
            depth.append(0)
    assert abs(kinds["in_file"] / len(comments) - 1 / 3) < 0.02
    assert 0.01 < kinds["outside"] / len(comments) < 0.03
    levels = Counter(depth)
    assert all(levels[d] > levels[d + 1] for d in range(6))
    # A longer tail than a geometric law with the reply share as ratio (1/27 here): the
    # real month has 13 comments at depth 4 for 196 at depth 1.
    assert levels[4] / levels[1] > 0.066
    assert max(levels) >= 10


def test_deleted_bodies_come_at_the_samples_rate(month: tuple[Path, list[dict[str, Any]]]) -> None:
    _, comments = month
    old, new = bench_reddit.sample_lines()

    def deleted_share(records: list[dict[str, Any]]) -> float:
        return sum(r["body"] in ("[deleted]", "[removed]") for r in records) / len(records)

    expected = (deleted_share([json.loads(x) for x in old]) + deleted_share([json.loads(x) for x in new])) / 2
    assert abs(deleted_share(comments) - expected) < 0.015


def test_month_needs_the_long_window_and_pairforge_reads_it(month: tuple[Path, list[dict[str, Any]]]) -> None:
    path, comments = month
    assert zstandard.get_frame_parameters(path.read_bytes()[:32]).window_size == 2**31
    with pytest.raises(zstandard.ZstdError):
        with open(path, "rb") as handle:
            zstandard.ZstdDecompressor().stream_reader(handle).read(1024)  # the default 128 MiB limit
    ctx = ReadContext(path=path, display_name=str(path))
    assert sum(chunk.n_lines for chunk in line_chunks(path, ctx)) == len(comments)


def test_a_month_is_reused_only_for_the_same_size(tmp_path: Path) -> None:
    path = tmp_path / "m.zst"
    first = bench_reddit.build_month(2_000, path)
    written = path.stat().st_mtime_ns
    assert bench_reddit.build_month(2_000, path) == first and path.stat().st_mtime_ns == written
    assert bench_reddit.build_month(3_000, path)["comments"] == 3_000
    assert len(month_lines(path)) == 3_000


def test_floor_datasets_and_pairforge_find_the_same_pairs(tmp_path: Path) -> None:
    """On 10,000 comments, the floor's pairs and the datasets path's are the pairs
    pairforge's source step joined (its manifest: read less the source's drop reasons)."""
    path = tmp_path / "reddit-10000.zst"
    bench_reddit.build_month(10_000, path)
    manifest = ingest_source("reddit", [path], tmp_path / "pairforge", IngestConfig(), progress=False).manifests[0]
    joined = bench_reddit.joined_pairs(manifest)
    assert set(manifest["dropped"]) <= bench_reddit.SOURCE_REASONS | {"duplicate", "too_long", "anchor_equals_positive"}
    assert 2_000 < joined < 3_000  # a third reply in the file; deleted and short bodies on either side drop some
    assert manifest["rows_kept"] <= joined
    assert bench_reddit.run_floor(path, tmp_path / "floor") == joined
    assert bench_reddit.run_datasets(path, tmp_path / "datasets") == joined
