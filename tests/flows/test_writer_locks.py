"""One writer per output folder, through the commands: two ingests into one folder, a killed one, --wait.

The first writer is a real ``pairforge ingest``; once it holds the folder it is paused
(SIGSTOP), so that the second one meets it mid-write on any machine, however fast
the ingest, and then resumed (SIGCONT) to finish as it would have.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.corpus.locks import is_locked, read_holder
from tests.helpers import tree_hashes

PAIRFORGE = str(Path(sys.executable).with_name("pairforge"))


@pytest.fixture(scope="module")
def nli_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 SNLI lines: a second or two of ingest, long enough to be met while it writes."""
    path = tmp_path_factory.mktemp("locks-input") / "snli_generated.jsonl"
    labels = ("entailment", "contradiction", "neutral")
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(20_000):
            row = {"sentence1": f"A person number {i // 3} walks a dog.", "sentence2": f"Statement {i} about the walk.",
                   "gold_label": labels[i % 3], "pairID": str(i)}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def lone_run(nli_input: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lone") / "corpus"
    subprocess.run([PAIRFORGE, "ingest", "nli", str(nli_input), "--out", str(out), "--quiet"], check=True, capture_output=True)
    return out


def start_ingest(nli_input: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PAIRFORGE, "ingest", "nli", str(nli_input), "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_until_it_holds(process: subprocess.Popen[str], folder: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_holder(folder).get("pid") == process.pid and is_locked(folder):
            return
        assert process.poll() is None, f"the first writer ended before it was met: {process.communicate()}"
        time.sleep(0.005)
    raise AssertionError(f"{process.pid} never took the lock of {folder}")


def test_two_concurrent_ingests_into_one_folder(nli_input: Path, lone_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    first = start_ingest(nli_input, out)
    try:
        wait_until_it_holds(first, out)
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run([PAIRFORGE, "ingest", "nli", str(nli_input), "--out", str(out), "--quiet"],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert lines[0].startswith(f"pairforge: error: {out} is being written by another process: pid {first.pid} on ")
    assert f"command `pairforge ingest nli {nli_input} --out {out} --quiet`" in lines[0] and " since 20" in lines[0]
    # the one that ran is exactly a lone run (lock file included: emptied on release)
    assert tree_hashes(out) == tree_hashes(lone_run)


def test_a_killed_ingest_leaves_no_stale_lock(nli_input: Path, lone_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    first = start_ingest(nli_input, out)
    wait_until_it_holds(first, out)
    first.kill()
    first.communicate(timeout=60)
    assert read_holder(out).get("pid") == first.pid and not is_locked(out)
    again = subprocess.run([PAIRFORGE, "ingest", "nli", str(nli_input), "--out", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert tree_hashes(out) == tree_hashes(lone_run)


def test_wait_waits_for_the_writer_then_runs(nli_input: Path, lone_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    first = start_ingest(nli_input, out)
    try:
        wait_until_it_holds(first, out)
        os.kill(first.pid, signal.SIGSTOP)
        second = start_ingest(nli_input, out, "--wait")
        time.sleep(3)
        assert second.poll() is None, second.communicate()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert stderr.strip().splitlines()[0].endswith("; waiting for it") and f"pid {first.pid}" in stderr
    assert "nothing to do" in stdout  # it found the first one's datasets up to date
    assert tree_hashes(out) == tree_hashes(lone_run)


def test_mining_into_a_corpus_being_written_is_refused(nli_input: Path, lone_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    first = start_ingest(nli_input, out)
    try:
        wait_until_it_holds(first, out)
        os.kill(first.pid, signal.SIGSTOP)
        mine = subprocess.run([PAIRFORGE, "mine", str(lone_run / "nli-pairs"), "--out", str(out / "nli-pairs-mined")],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert mine.returncode == 2
    (line,) = mine.stderr.strip().splitlines()
    assert f"{out / 'nli-pairs-mined'} is being written by another process (it holds {out}): pid {first.pid}" in line
    assert not (out / "nli-pairs-mined").exists()
