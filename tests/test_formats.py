"""Reading inputs: line chunks of a mapped file and of a stream agree; an input's hash
comes from the reads themselves."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from pipeline import formats
from pipeline.formats import InputDigest, ReadContext, iter_line_chunks, line_chunks


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
    return formats.open_decompressed(path, digest)


def test_staging_hashes_an_input_once_from_its_own_reads(tmp_path: Path, monkeypatch) -> None:
    """A plain JSON-lines input and a QQP TSV (read through a text wrapper) are not read a
    second time for their hash, and the hash is the file's."""
    from pipeline import ingest as ingest_module
    from pipeline import shards

    def no_second_pass(path):
        raise AssertionError(f"{path} hashed in a pass of its own")

    monkeypatch.setattr(shards, "file_sha256", no_second_pass)
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
        folder = ingest_module.stage_file(source, path, tmp_path / "work" / source, ingest_module.IngestConfig(), 0)
        entry = ingest_module.read_stage(folder).input
        assert entry == {"path": str(path), "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
