"""The writer lock of an output folder: one writer, nested folders, no stale lock, waiting, reentrancy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.corpus.locks import LOCK_NAME, FolderLockedError, is_locked, read_holder, writer_lock
from tests.helpers import ROOT
from tests.helpers import LockHolder as Holder


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    holder = Holder(folder)
    try:
        assert is_locked(folder)
        with pytest.raises(FolderLockedError) as refused:
            with writer_lock(folder):
                pass
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{folder} is being written by another process: pid {holder.pid} on {socket.gethostname()} since ")
        assert f"command `holder of {folder}`" in message and "--wait" in message
        assert refused.value.holder["pid"] == holder.pid and refused.value.held_folder == folder
    finally:
        holder.release()
    assert not is_locked(folder)
    assert read_holder(folder) == {}, "a released lock leaves no record"
    with writer_lock(folder) as root:
        assert root == folder.resolve() and read_holder(folder)["pid"] == os.getpid()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    holder = Holder(folder)
    holder.kill()
    assert read_holder(folder)["pid"] == holder.pid  # its record is left behind...
    assert not is_locked(folder)  # ...and means nothing
    with writer_lock(folder):
        assert read_holder(folder)["pid"] == os.getpid()


@pytest.mark.parametrize("outer_first", [True, False])
def test_a_folder_and_a_folder_inside_it_have_one_writer(tmp_path: Path, outer_first: bool) -> None:
    corpus, mined = tmp_path / "corpus", tmp_path / "corpus" / "nli-pairs-mined"
    held, asked = (corpus, mined) if outer_first else (mined, corpus)
    holder = Holder(held)
    try:
        with pytest.raises(FolderLockedError) as refused:
            with writer_lock(asked):
                pass
        assert refused.value.folder == asked and refused.value.held_folder == held
        assert f"(it holds {held})" in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
        with writer_lock(tmp_path / "corpus-2"), writer_lock(tmp_path / "elsewhere" / "model"):
            pass  # folders beside it are free
    finally:
        holder.release()


def test_a_writer_inside_that_started_before_the_outer_lock_file_existed_is_found(tmp_path: Path) -> None:
    inner = tmp_path / "out" / "corpus"
    holder = Holder(inner)  # no lock file in out/ when it started
    try:
        assert not (tmp_path / "out" / LOCK_NAME).exists()
        with pytest.raises(FolderLockedError, match=r"\(it holds .*/out/corpus\)"):
            with writer_lock(tmp_path / "out"):
                pass
    finally:
        holder.release()


def test_wait_waits_for_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    holder = Holder(folder)
    notices: list[str] = []
    releaser = threading.Timer(1.0, holder.release)
    releaser.start()
    started = time.monotonic()
    with writer_lock(folder, wait=True, on_wait=notices.append):
        waited = time.monotonic() - started
        assert read_holder(folder)["pid"] == os.getpid()
    releaser.join()
    assert waited >= 0.5
    assert len(notices) == 1 and f"pid {holder.pid}" in notices[0] and "waiting for it" in notices[0]


def test_one_process_does_not_lock_itself_out(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    with writer_lock(corpus):
        with writer_lock(corpus), writer_lock(corpus / "nli-pairs-mined"):
            pass  # the pipeline flow holds the corpus; its stage flows lock it again
        assert is_locked(corpus)
        with pytest.raises(RuntimeError, match="already holds"):
            with writer_lock(tmp_path):
                pass
    model = tmp_path / "model"
    with writer_lock(model):
        with writer_lock(corpus):  # a folder beside it: locked for real
            probe = subprocess.run(
                [sys.executable, "-c", "import sys; from pipeline.corpus.locks import is_locked; print(is_locked(sys.argv[1]))", str(corpus)],
                cwd=ROOT, capture_output=True, text=True, check=True,
            )  # fmt: skip
            assert probe.stdout.strip() == "True"


def test_a_folder_made_for_a_lock_is_removed_when_nothing_was_written(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(ValueError):
        with writer_lock(out):
            raise ValueError("a usage error found once the lock was held")
    assert not (tmp_path / "a").exists()
    with writer_lock(out):
        (out / "data.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "data.txt"]
    assert (out / LOCK_NAME).read_bytes() == b""


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt exists and is not a folder"):
        with writer_lock(tmp_path / "notes.txt"):
            pass
    with pytest.raises(ValueError, match="notes.txt is a file, not a folder"):
        with writer_lock(tmp_path / "notes.txt" / "out"):
            pass


def test_the_lock_is_released_on_sigterm_of_its_holder(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    holder = Holder(folder)
    os.kill(holder.pid, signal.SIGTERM)
    holder.process.wait(timeout=60)
    with writer_lock(folder):
        pass


def test_the_lock_file_is_no_corpus_content(tmp_path: Path) -> None:
    from flows.verify import compare_corpora, corpus_digests
    from tests.helpers import write_dataset

    corpus = tmp_path / "corpus"
    write_dataset(corpus / "pairs", [("a", "b"), ("c", "d")])
    before = corpus_digests(corpus)
    with writer_lock(corpus), writer_lock(corpus / "pairs"):
        assert corpus_digests(corpus) == before
    copy = tmp_path / "copy"
    write_dataset(copy / "pairs", [("a", "b"), ("c", "d")])
    assert compare_corpora(corpus, copy)["identical"]
