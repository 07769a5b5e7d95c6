"""Reading inputs: line chunks of a mapped file and of a stream agree; an input's hash
comes from the reads themselves."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from pipeline.io.compression import open_decompressed
from pipeline.io.context import ReadContext
from pipeline.io.digest import InputDigest
from pipeline.io.jsonl import read_jsonl
from pipeline.io.jsonl.one_pass import WholeFileReadFailed, read_jsonl_one_pass
from pipeline.io.lines import iter_line_chunks, line_chunks


def _lines_and_rejects(chunks, ctx: ReadContext) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]], int]:
    lines = []
    for chunk in chunks:
        body = chunk.data.split(b"\n")
        assert len(body) == chunk.n_lines + 1 and body[-1] == b""  # whole lines only
        lines += [(chunk.first_line + i, line) for i, line in enumerate(body[:-1])]
    rejects = sorted((q["line"], q["reason"]) for q in ctx.quarantine)
    return lines, rejects, ctx.lines_seen


CONTENTS = {
    "plain": b"".join(b'{"a": %d}\n' % i for i in range(50)),
    "no_final_newline": b'{"a": 1}\n{"a": 2}',
    "bom_and_crlf": b"\xef\xbb\xbf" + b'{"a": 1}\r\n{"a": 2}\r\n',
    "blank_lines": b'{"a": 1}\n\n\n{"a": 2}\n',
    "empty": b"",
    "long_line_first": b"x" * 500 + b'\n{"a": 1}\n',
    "long_line_in_the_middle": b'{"a": 1}\n' * 7 + b"y" * 300 + b'\n{"a": 2}\n',
    "long_line_last_without_newline": b'{"a": 1}\n' + b"z" * 1000,
    "line_over_a_chunk_but_under_the_bound": b'{"a": 1}\n' + b"w" * 90 + b'\n{"a": 2}\n',
    "one_newline": b"\n",
}


@pytest.mark.parametrize("name", sorted(CONTENTS))
@pytest.mark.parametrize("chunk_bytes", [16, 64, 1 << 20])
def test_a_mapped_file_gives_the_lines_a_stream_gives(tmp_path: Path, name: str, chunk_bytes: int) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(CONTENTS[name])
    mapped_ctx = ReadContext(path=path, display_name=str(path), chunk_bytes=chunk_bytes, max_line_bytes=100)
    stream_ctx = ReadContext(path=path, display_name=str(path), chunk_bytes=chunk_bytes, max_line_bytes=100)
    mapped = _lines_and_rejects(line_chunks(path, mapped_ctx), mapped_ctx)
    streamed = _lines_and_rejects(iter_line_chunks(io.BytesIO(path.read_bytes()), stream_ctx), stream_ctx)
    assert mapped == streamed
    assert mapped_ctx.bad_rows.as_dict() == stream_ctx.bad_rows.as_dict()


def test_lines_over_the_bound_are_rejected_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(CONTENTS["long_line_in_the_middle"])
    ctx = ReadContext(path=path, display_name=str(path), chunk_bytes=64, max_line_bytes=100)
    lines, rejects, seen = _lines_and_rejects(line_chunks(path, ctx), ctx)
    assert rejects == [(8, "line_too_long")]
    assert [n for n, _ in lines] == [1, 2, 3, 4, 5, 6, 7, 9] and seen == 9


def test_a_pipe_is_read_as_a_stream(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "input.jsonl"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(CONTENTS["plain"]))
    writer.start()
    ctx = ReadContext(path=fifo, display_name=str(fifo), chunk_bytes=64)
    lines, _, seen = _lines_and_rejects(line_chunks(fifo, ctx), ctx)
    writer.join()
    assert seen == 50 and lines[-1] == (50, b'{"a": 49}')


@pytest.mark.parametrize("chunk_bytes", [32, 1 << 20])
def test_the_digest_of_a_whole_read_is_the_files_sha256(tmp_path: Path, chunk_bytes: int) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + CONTENTS["long_line_in_the_middle"] + b"tail without newline")
    digest = InputDigest(path)
    ctx = ReadContext(path=path, display_name=str(path), chunk_bytes=chunk_bytes, max_line_bytes=100, input_digest=digest)
    list(line_chunks(path, ctx))
    assert digest.result() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest.bytes == path.stat().st_size


def test_a_digest_is_refused_unless_the_file_was_read_once_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(CONTENTS["plain"])
    partial = InputDigest(path)
    with open_digested(path, partial) as stream:
        stream.read(10)
    assert partial.result() is None
    twice = InputDigest(path)
    for _ in range(2):
        with open_digested(path, twice) as stream:
            stream.read()
    assert twice.result() is None
    once = InputDigest(path)
    with open_digested(path, once) as stream:
        while stream.read1(7):
            pass
    assert once.result() == hashlib.sha256(CONTENTS["plain"]).hexdigest()


def open_digested(path: Path, digest: InputDigest):
    return open_decompressed(path, digest)


def test_staging_hashes_an_input_once_from_its_own_reads(tmp_path: Path, monkeypatch) -> None:
    """A plain JSON-lines input and a QQP TSV (read through a text wrapper) are not read a
    second time for their hash, and the hash is the file's."""
    from pipeline.corpus import files
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.stage import read_stage, stage_file

    def no_second_pass(path):
        raise AssertionError(f"{path} hashed in a pass of its own")

    monkeypatch.setattr(files, "file_sha256", no_second_pass)
    nli = tmp_path / "snli.jsonl"
    nli.write_bytes(b"".join(
        json.dumps({"sentence1": f"A premise {i}.", "sentence2": f"A hypothesis {i}.", "gold_label": "entailment"}).encode() + b"\n"
        for i in range(20)
    ))
    qqp = tmp_path / "quora.tsv"
    qqp.write_text(
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        + "".join(f"{i}\t{2 * i}\t{2 * i + 1}\tHow do I learn {i}?\tHow can I learn {i}?\t1\n" for i in range(20))
    )
    for source, path in (("nli", nli), ("qqp", qqp)):
        folder = stage_file(source, path, tmp_path / "work" / source, IngestConfig(), 0)
        entry = read_stage(folder).input
        assert entry == {"path": str(path), "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# --- the one-pass (DuckDB) JSON-lines reader ------------------------------------------
SCHEMA = pa.schema([("s1", pa.string()), ("s2", pa.string())])


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path, reader: str, max_line_bytes: int = 1 << 20, batch_rows: int = 100_000):
    """The rows ``read_jsonl`` gives with ``reader`` (a consumer that can drop rows, as staging is)."""
    frames: list[pl.DataFrame] = []
    ctx = ReadContext(
        path=path, display_name=str(path), jsonl_reader=reader, max_line_bytes=max_line_bytes, input_digest=InputDigest(path),
        on_restart=frames.clear, batch_rows=batch_rows,
    )  # fmt: skip
    for frame in read_jsonl(path, SCHEMA, ctx):
        frames.append(frame)
    rows = pl.concat(frames) if frames else None
    return rows, ctx


def _good_lines(n: int) -> bytes:
    return b"".join(json.dumps({"s1": f"premise {i} caf\u00e9 \"q\"", "s2": f"hyp {i}\n", "x": [i]}).encode() + b"\n" for i in range(n))


def test_the_one_pass_reader_gives_the_chunked_readers_rows(tmp_path: Path) -> None:
    path = tmp_path / "clean.jsonl"
    path.write_bytes(_good_lines(300) + b'{"s1": null}\n{"s2": "only"}')  # nulls, a missing field, no final newline
    chunked, chunked_ctx = _rows(path, "chunked")
    whole, whole_ctx = _rows(path, "auto", batch_rows=64)
    assert (whole_ctx.readers, chunked_ctx.readers) == (["one-pass"], ["chunked"])
    assert whole.equals(chunked) and whole.height == 302
    assert whole.get_column("_line").to_list() == list(range(1, 303))
    assert whole_ctx.lines_seen == chunked_ctx.lines_seen == 302
    assert whole_ctx.input_digest.result() == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "content",
    [b"\xef\xbb\xbf" + _good_lines(3), b""],
    ids=["bom", "empty"],
)
def test_files_the_one_pass_reader_declines_go_to_the_chunked_readers(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    whole, ctx = _rows(path, "auto", max_line_bytes=2000)
    chunked, chunked_ctx = _rows(path, "chunked", max_line_bytes=2000)
    assert ctx.readers == ["chunked"]
    assert (whole is None and chunked is None) or whole.equals(chunked)
    assert ctx.quarantine == chunked_ctx.quarantine


LATE_PROBLEMS = {
    "blank_line": b"\n",
    "malformed": b'{"s1": "broken\n',
    "number_for_a_string": b'{"s1": 42, "s2": "x"}\n',
    "list_for_a_string": b'{"s1": ["a"], "s2": "x"}\n',
    "invalid_utf8": b'{"s1": "caf\xe9", "s2": "x"}\n',
    "not_an_object": b'["s1", "s2"]\n',
    "line_over_the_bound": json.dumps({"s1": "x" * (2 << 20), "s2": "y"}).encode() + b"\n",
}


@pytest.mark.parametrize("problem", sorted(LATE_PROBLEMS))
def test_the_one_pass_reader_gives_up_on_a_bad_line(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(_good_lines(200) + LATE_PROBLEMS[problem] + _good_lines(5))
    ctx = ReadContext(path=path, display_name=str(path), batch_rows=16)
    # DuckDB stops at a bad line as soon as it parses it (maybe before any row came out);
    # a converted value shows only after rows came out.
    with pytest.raises(WholeFileReadFailed):
        for _ in read_jsonl_one_pass(path, SCHEMA, ctx):
            pass


@pytest.mark.parametrize("problem", sorted(LATE_PROBLEMS))
def test_read_jsonl_starts_a_file_over_with_the_chunked_reader(tmp_path: Path, problem: str) -> None:
    """Rows taken before the one-pass reader gave up are dropped (on_restart); the chunked reader's rows remain."""
    path = tmp_path / "f.jsonl"
    path.write_bytes(_good_lines(200) + LATE_PROBLEMS[problem] + _good_lines(5))
    both, ctx = _rows(path, "auto", batch_rows=16)
    chunked, chunked_ctx = _rows(path, "chunked")
    assert ctx.readers == ["one-pass", "chunked"]
    assert both.equals(chunked) and ctx.quarantine == chunked_ctx.quarantine and ctx.lines_seen == chunked_ctx.lines_seen
    assert ctx.input_digest.result() == chunked_ctx.input_digest.result() == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("problem", sorted(LATE_PROBLEMS))
def test_staging_starts_over_when_the_one_pass_reader_gives_up(tmp_path: Path, problem: str) -> None:
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.plan import ingest_source

    lines = [json.dumps({"sentence1": f"A man plays guitar number {i}.", "sentence2": f"Music {i}.",
                         "gold_label": "entailment", "pairID": f"p{i}"}).encode() for i in range(300)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines[:250]) + b"\n" + LATE_PROBLEMS[problem] + b"\n".join(lines[250:]) + b"\n")
    both = ingest_source("nli", [path], tmp_path / "both", IngestConfig(jsonl_reader="auto"), progress=False)
    chunked = ingest_source("nli", [path], tmp_path / "chunked", IngestConfig(jsonl_reader="chunked"), progress=False)
    assert _file_bytes(tmp_path / "both") == _file_bytes(tmp_path / "chunked")
    assert both.manifests[0]["rows_read"] == chunked.manifests[0]["rows_read"] == 301
    from pipeline.ingest.stage import stage_file

    staged = stage_file("nli", path, tmp_path / "work", IngestConfig(jsonl_reader="auto"), 0)
    # NLI reads sentence1/sentence2: a wrong type in "s1" is a field it does not read, no reason to start over
    read_whole = problem in ("number_for_a_string", "list_for_a_string")
    expected = ["one-pass"] if read_whole else ["one-pass", "chunked"]
    assert json.loads((staged / "stage.json").read_text())["readers"] == expected


def test_a_path_duckdb_would_read_as_a_glob_goes_to_the_chunked_readers(tmp_path: Path) -> None:
    path = tmp_path / "part[1].jsonl"
    path.write_bytes(_good_lines(5))
    (tmp_path / "part1.jsonl").write_bytes(_good_lines(7))  # what the glob would match
    rows, ctx = _rows(path, "auto")
    assert rows.height == 5 and ctx.lines_seen == 5 and ctx.readers == ["chunked"]


def test_a_bad_line_deep_in_a_file_surfacing_through_the_arrow_stream_starts_staging_over(tmp_path: Path) -> None:
    # Far enough in that DuckDB reports it while rows are streaming (through pyarrow, as
    # an OSError), not when the query starts.
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.plan import ingest_source

    lines = [json.dumps({"sentence1": f"A man plays guitar number {i}.", "sentence2": f"Music {i}.",
                         "gold_label": "entailment", "pairID": f"p{i}"}).encode() for i in range(40_000)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines[:30_000]) + b"\n" + lines[30_000] + lines[30_001] + b"\n" + b"\n".join(lines[30_002:]) + b"\n")
    both = ingest_source("nli", [path], tmp_path / "both", IngestConfig(jsonl_reader="auto"), progress=False)
    ingest_source("nli", [path], tmp_path / "chunked", IngestConfig(jsonl_reader="chunked"), progress=False)
    assert _file_bytes(tmp_path / "both") == _file_bytes(tmp_path / "chunked")
    assert both.manifests[0]["dropped"]["malformed_json"] == 1
