"""Every misuse of every command: exit 2 (1 for a file of another source), one line on stderr, no traceback.

Each case runs the installed ``pairforge`` script in a subprocess, from a scratch
folder holding a small corpus, a data config and deliberately wrong inputs, and checks
the exit code, that stderr is exactly one line saying what the case expects, and that
no traceback was printed. ``--debug`` and ``PAIRFORGE_DEBUG=1`` add the traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import EXAMPLES

PAIRFORGE = str(Path(sys.executable).with_name("pairforge"))
NLI = EXAMPLES / "nli" / "snli_sample.jsonl"
REDDIT_ZST = EXAMPLES / "reddit" / "RC_2024-01-sample.zst"
S2ORC = EXAMPLES / "s2orc" / "metadata_sample.jsonl"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a corpus, a data config and every wrong input the cases use."""
    from pipeline.ingest.plan import ingest_source
    from pipeline.sampling.data_config import write_data_config
    from pipeline.sampling.policies import WeightPolicy

    root = tmp_path_factory.mktemp("misuse")
    ingest_source("nli", [NLI], root / "corpus", progress=False)
    write_data_config(root / "corpus", root / "corpus" / "data_config.json", WeightPolicy())
    (root / "empty-folder").mkdir()
    (root / "not-a-model").mkdir()
    (root / "empty.jsonl").write_bytes(b"")
    (root / "notes.txt").write_text("a note\n")
    (root / "senteval").mkdir()
    (root / "senteval" / "s1.train").write_text("A man sleeps.\n")
    (root / "specter-data").mkdir()
    (root / "specter-data" / "data.json").write_text("{}")
    (root / "not-json.json").write_text("{")
    (root / "missing-datasets.json").write_text(json.dumps([{"name": "nope", "lines": 1, "weight": 1}]))
    sources = {
        "sources-unknown.json": [{"source": "bogus", "inputs": [str(NLI)]}],
        "sources-missing-input.json": [{"source": "nli", "inputs": ["gone.jsonl"]}],
        "sources-specter-folder.json": [{"source": "specter", "inputs": [str(root / "empty-folder")]}],
        "sources-no-inputs.json": [{"source": "nli", "inputs": []}],
        "sources-not-a-list.json": {"source": "nli", "inputs": [str(NLI)]},
    }
    for name, value in sources.items():
        (root / name).write_text(json.dumps(value))
    return root


# (argv, exit code, what the one line must say). Paths are relative to the scratch folder.
CASES = {
    # ingest
    "ingest-missing-input": (["ingest", "nli", "gone.jsonl", "--out", "o"], 2, "input not found: gone.jsonl"),
    "ingest-specter-folder-without-data-json": (
        ["ingest", "specter", "empty-folder", "--out", "o"], 2, "empty-folder: the SPECTER layout needs data.json"),
    "ingest-specter-without-metadata": (
        ["ingest", "specter", "specter-data", "--out", "o"], 2, "the SPECTER layout needs metadata.json"),
    "ingest-nli-folder-without-s1": (
        ["ingest", "nli", "empty-folder", "--out", "o"], 2, "expected exactly one s1.* file (with s2.* and labels.*) in it, found 0"),
    "ingest-senteval-without-s2": (
        ["ingest", "nli", "senteval/s1.train", "--out", "o"], 2, "the SentEval layout needs s2.train beside it"),
    "ingest-folder-for-a-file-source": (
        ["ingest", "reddit", "empty-folder", "--out", "o"], 2, "empty-folder is a folder: the reddit source reads files"),
    "ingest-qqp-wrong-file-name": (["ingest", "qqp", "notes.txt", "--out", "o"], 2, "notes.txt: not a QQP file: expected a .tsv"),
    "ingest-empty-file": (["ingest", "nli", "empty.jsonl", "--out", "o"], 2, "input is empty: empty.jsonl (0 bytes)"),
    "ingest-out-is-a-file": (["ingest", "nli", str(NLI), "--out", "notes.txt"], 2, "notes.txt exists and is not a folder"),
    "ingest-unknown-source-option": (["ingest", "nli", str(NLI), "--out", "o", "-o", "nosuch=1"], 2, "has no option nosuch"),
    "ingest-unknown-dataset": (["ingest", "nli", str(NLI), "--out", "o", "--datasets", "bogus"], 2, "makes no dataset bogus"),
    "ingest-unknown-source": (["ingest", "bogus", str(NLI), "--out", "o"], 2, "invalid choice: 'bogus'"),
    "ingest-file-of-another-source": (
        ["ingest", "s2orc", str(REDDIT_ZST), str(S2ORC), "--out", "o", "--quiet"], 1,
        f"FAILED: {REDDIT_ZST}: has no row with the s2orc fields paper_id/title/abstract: is it a s2orc file?"),
    # mine
    "mine-missing-dataset": (["mine", "gone", "--out", "m"], 2, "dataset folder not found"),
    "mine-folder-without-manifest": (["mine", "empty-folder", "--out", "m"], 2, "manifest.json: missing"),
    "mine-output-inside-input": (["mine", "corpus/nli-pairs", "--out", "corpus/nli-pairs/m"], 2, "must not be the input dataset folder or inside it"),
    "mine-missing-model": (["mine", "corpus/nli-pairs", "--out", "m", "--model", "gone-model"], 2, "model folder not found: gone-model"),
    "mine-folder-that-is-no-model": (["mine", "corpus/nli-pairs", "--out", "m", "--model", "not-a-model"], 2, "not-a-model: not a model folder"),
    "mine-missing-extra-corpus": (["mine", "corpus/nli-pairs", "--out", "m", "--extra-corpus", "gone"], 2, "extra corpus not found"),
    # config
    "config-missing-corpus": (["config", "gone", "--out", "dc.json"], 2, "corpus folder not found: gone"),
    "config-corpus-without-manifests": (["config", "empty-folder", "--out", "dc.json"], 2, "no dataset with training rows under empty-folder"),
    "config-check-missing-datasets": (["config", "corpus", "--check", "missing-datasets.json"], 2, "entry 0 ('nope'): missing dataset"),
    "config-check-not-json": (["config", "corpus", "--check", "not-json.json"], 2, "not-json.json: not valid JSON"),
    "config-check-missing-file": (["config", "corpus", "--check", "gone.json"], 2, "data config not found: gone.json"),
    # train
    "train-missing-data-config": (["train", "corpus", "--config", "gone.json", "--out", "model"], 2, "data config not found: gone.json"),
    "train-data-config-names-missing-datasets": (
        ["train", "empty-folder", "--config", "corpus/data_config.json", "--out", "model"], 2, "missing dataset: no manifest.json"),
    "train-missing-start-model": (
        ["train", "corpus", "--config", "corpus/data_config.json", "--out", "model", "--model", "gone-model"], 2, "model folder not found"),
    "train-bad-process-count": (["train", "corpus", "--config", "corpus/data_config.json", "--out", "model", "--nproc", "two"], 2,
                                "--nproc takes a positive integer or 'auto'"),
    "train-out-is-a-file": (["train", "corpus", "--config", "corpus/data_config.json", "--out", "notes.txt"], 2, "exists and is not a folder"),
    # evaluate
    "evaluate-missing-model": (["evaluate", "gone-model", "--out", "r", "--corpus", "corpus"], 2, "model folder not found: gone-model"),
    "evaluate-folder-that-is-no-model": (["evaluate", "not-a-model", "--out", "r", "--corpus", "corpus"], 2, "not a model folder"),
    "evaluate-missing-stsb": (["evaluate", "not-a-model", "--out", "r", "--stsb", "gone.csv"], 2, "STSb file not found: gone.csv"),
    "evaluate-nothing-to-score": (["evaluate", "not-a-model", "--out", "r"], 2, "nothing to evaluate"),
    # run
    "run-missing-sources-file": (["run", "--sources", "gone.json"], 2, "sources file not found: gone.json"),
    "run-sources-not-json": (["run", "--sources", "not-json.json"], 2, "not valid JSON"),
    "run-sources-not-a-list": (["run", "--sources", "sources-not-a-list.json"], 2, 'expected a non-empty list of {"source"'),
    "run-unknown-source": (["run", "--sources", "sources-unknown.json"], 2, "unknown source 'bogus'"),
    "run-missing-input": (["run", "--sources", "sources-missing-input.json"], 2, "not found: gone.jsonl"),
    "run-specter-folder-without-data-json": (["run", "--sources", "sources-specter-folder.json"], 2, "the SPECTER layout needs data.json"),
    "run-source-without-inputs": (["run", "--sources", "sources-no-inputs.json"], 2, "no input files given for source 'nli'"),
    "run-missing-model": (["run", "--model", "gone-model"], 2, "model folder not found: gone-model"),
    "run-bad-task-runner": (["run", "--task-runner", "spark"], 2, "unknown task runner 'spark'"),
    "run-missing-stsb": (["run", "--stsb", "gone.csv"], 2, "STSb file not found: gone.csv"),
    "run-heldout-fraction-out-of-range": (["run", "--heldout-fraction", "1.5"], 2, "heldout_fraction must be in [0, 1), got 1.5"),
    # verify
    "verify-corpus-without-build-json": (["verify", "corpus"], 2, "corpus/build.json not found: verify needs a corpus built by `pairforge run`"),
    "verify-missing-corpus": (["verify", "gone"], 2, "corpus folder not found: gone"),
}


def run_cli(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "PAIRFORGE_DEBUG"}
    environment.update(env or {})
    return subprocess.run([PAIRFORGE, *argv], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_misuse_is_one_line_and_its_exit_code(case: str, scratch: Path, tmp_path: Path) -> None:
    argv, code, expected = CASES[case]
    work = tmp_path / "work"
    shutil.copytree(scratch, work, symlinks=True)
    done = run_cli(argv, work)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (case, done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1, lines
    assert expected in lines[0], (expected, lines[0])
    if code == 2:
        assert lines[0].startswith("pairforge: error: ") or lines[0].startswith("pairforge "), lines[0]
        # a refused command leaves nothing behind: no output folder was created
        for made in ("o", "m", "model", "r", "dc.json", "out", "corpus/nli-pairs/m"):
            assert not (work / made).exists(), f"{case} left {made}"


def test_every_command_has_misuse_cases() -> None:
    commands = {argv[0] for argv, _, _ in CASES.values()}
    assert commands == {"ingest", "mine", "config", "train", "evaluate", "run", "verify"}
    assert len(CASES) >= 20


def test_debug_adds_the_traceback_and_keeps_the_exit_code(scratch: Path) -> None:
    for argv, env in ((["--debug", "ingest", "nli", "gone.jsonl", "--out", "o"], None),
                      (["ingest", "nli", "gone.jsonl", "--out", "o", "--debug"], None),
                      (["ingest", "nli", "gone.jsonl", "--out", "o"], {"PAIRFORGE_DEBUG": "1"})):  # fmt: skip
        done = run_cli(argv, scratch, env)
        assert done.returncode == 2, done.stderr
        assert "Traceback (most recent call last)" in done.stderr and "FileNotFoundError" in done.stderr
        assert done.stderr.strip().splitlines()[-1] == "pairforge: error: input not found: gone.jsonl"


def test_an_internal_error_is_one_line_exit_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import flows.cli as cli

    def broken(args):  # a bug in a handler: not a user error
        raise KeyError("oops")

    monkeypatch.setattr(cli, "_run_config", broken)
    monkeypatch.delenv("PAIRFORGE_DEBUG", raising=False)
    assert cli.main(["config", "c"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pairforge: internal error: KeyError: 'oops' (a bug; rerun with --debug for the traceback)"]


def test_an_unreadable_input_is_one_line(scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Through main() in this process: as root (these tests' usual user) no mode bit keeps a file from being read,
    so the check that reads the mode bits (os.access) is told the file is unreadable."""
    from flows.cli import main

    secret = tmp_path / "secret.jsonl"
    shutil.copy(NLI, secret)
    secret.chmod(0)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == secret else real_access(path, mode, **kw))
    assert main(["ingest", "nli", str(secret), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pairforge: error: input not readable: {secret} (permission denied)"]
    assert not (tmp_path / "o").exists()


def test_error_line_of_a_system_error_names_the_path() -> None:
    from flows.cli import error_line

    try:
        open("/nonexistent/x.csv")
    except OSError as exc:
        assert error_line(exc) == "/nonexistent/x.csv: No such file or directory"
    assert error_line(ValueError("a\n  b\n")) == "a b"
