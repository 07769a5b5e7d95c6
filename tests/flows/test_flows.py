"""The Prefect flows on tiny data, end to end, under Prefect's test harness.

One parent run (ingest -> mine -> config -> train -> evaluate, tiny random model) is
shared by the module; the tests read back its files, its task runs and artifacts,
rerun it to prove unchanged stages are skipped, verify the rebuild is identical, and
kill a build midway (SIGKILL) to prove the rerun resumes to the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, TEST_DATA

FLOW_DATA = TEST_DATA / "flows"
INPUTS = [str(FLOW_DATA / "snli_sample_a.jsonl"), str(FLOW_DATA / "snli_sample_b.jsonl")]
SOURCES = [{"source": "nli", "inputs": INPUTS}]


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness (a temporary SQLite-backed API), once per session."""
    from prefect.testing.utilities import prefect_test_harness

    # The default 30 s start-up timeout is too short on a busy 2-core machine.
    with prefect_test_harness(server_startup_timeout=180):
        yield


def corpus_options(tiny_model_dir: Path) -> dict:
    # the top candidate, no margin: the random tiny model leaves few anchors a candidate below 95% of the positive
    return {"mining": {"model": str(tiny_model_dir), "relative_margin": None}}


@pytest.fixture(scope="module")
def pipeline_run(prefect_harness, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from prefect.runtime import flow_run  # noqa: F401  (the harness must be up)

    from flows.parent_flow import pairforge_pipeline

    out = tmp_path_factory.mktemp("pipeline-run")
    state = pairforge_pipeline(
        sources=SOURCES,
        out_dir=str(out),
        training={"model": str(tiny_model_dir), "max_steps": 3, "batch_size": 8, "device": "cpu", "save_steps": 2},
        evaluation={"device": "cpu", "heatmap_pairs": 2},
        return_state=True,
        **corpus_options(tiny_model_dir),
    )
    assert state.is_completed(), state
    return {"out": out, "summary": state.result(), "flow_run_id": state.state_details.flow_run_id}


def test_pipeline_writes_every_stage(pipeline_run: dict) -> None:
    from pipeline.corpus.manifest import check_accounting, read_manifest

    out, summary = pipeline_run["out"], pipeline_run["summary"]
    corpus = out / "corpus"
    assert sorted(summary["datasets"]) == ["nli-pairs", "nli-triplets"]
    assert sorted(summary["mined"]) == ["nli-pairs-mined"]
    for name in ["nli-pairs", "nli-triplets", "nli-pairs-mined"]:
        manifest = read_manifest(corpus / name)
        assert manifest is not None, name
        check_accounting(manifest)
    pairs = read_manifest(corpus / "nli-pairs")
    # two input files of 120 lines each; every line is a unit of nli-pairs
    assert pairs["rows_read"] == 240
    assert [i["path"] for i in pairs["inputs"]] == INPUTS
    assert "negative" in summary["mined"]["nli-pairs-mined"]["columns"]
    entries = json.loads((corpus / "data_config.json").read_text())
    assert entries == summary["config_entries"]
    # The mined dataset (the same pairs with hard negatives) replaces nli-pairs.
    assert {e["name"] for e in entries} == {"nli-triplets", "nli-pairs-mined"}
    assert summary["train"]["steps"] == 3
    assert (out / "model" / "train_config.json").is_file()
    assert (out / "eval" / "report.json").is_file()
    assert "| metric | rows | model | baseline | delta | 95% interval of delta |" in summary["evaluation"]["markdown"]
    # a few held-out rows of 240 lines: no figure rests on 30 rows, and the summary says so
    assert summary["evaluation"]["key_figures"].startswith("No figure rests on 30 rows")
    assert "Left out, resting on fewer than 30 rows: `heldout/retrieval/*`" in summary["evaluation"]["markdown"]
    assert not (corpus / ".staging").exists(), "staged files are removed once the manifests exist"
    assert json.loads((corpus / "build.json").read_text())["sources"] == SOURCES


def _run_graph(flow_run_id) -> tuple[list, list, list]:
    """(flow runs of the parent and its subflows, their task runs, their artifacts)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(flow_run_id)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        runs = [parent, *children]
        ids = [r.id for r in runs]
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
        assert client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return runs, tasks, artifacts


def test_runs_tasks_and_artifacts_are_recorded(pipeline_run: dict) -> None:
    runs, tasks, artifacts = _run_graph(pipeline_run["flow_run_id"])
    flow_names = set()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for run in runs:
            flow_names.add(client.read_flow(run.flow_id).name)
            assert run.state.is_completed(), (run.name, run.state)
    assert flow_names == {"pairforge-pipeline", "build-corpus", "mine-negatives", "write-config", "pairforge-train", "pairforge-evaluate"}
    task_names = {t.name for t in tasks}
    # one task per input file, one per source, one per mined dataset: coarse, never a row
    assert {"stage-nli-0", "stage-nli-1", "finalize-nli", "mine-nli-pairs", "plan-nli"} <= task_names
    assert all(t.state.is_completed() for t in tasks)
    keys = {a.key for a in artifacts if a.key}
    assert {"pairforge-ingest", "pairforge-mine", "pairforge-config", "pairforge-train", "pairforge-evaluation", "pairforge-progress"} <= keys
    ingest_table = next(a for a in artifacts if a.key == "pairforge-ingest")
    rows = json.loads(ingest_table.data) if isinstance(ingest_table.data, str) else ingest_table.data
    pairs_row = next(r for r in rows if r["dataset"] == "nli-pairs")
    assert pairs_row["rows_read"] == 240 and pairs_row["dropped: not_entailment"] > 0
    progress = next(a for a in artifacts if a.key == "pairforge-progress")
    assert float(progress.data) == 100.0


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_skips_unchanged_stages(pipeline_run: dict, tiny_model_dir: Path) -> None:
    from flows.parent_flow import pairforge_pipeline

    corpus = pipeline_run["out"] / "corpus"
    before = _mtimes(corpus)
    summary = pairforge_pipeline(sources=SOURCES, out_dir=str(pipeline_run["out"]), stop_after="config", **corpus_options(tiny_model_dir))
    after = _mtimes(corpus)
    untouched = [p for p in before if p.endswith(".parquet") or p.endswith("manifest.json")]
    assert untouched and all(after[p] == before[p] for p in untouched), "a stage with unchanged inputs and config was redone"
    assert not (corpus / ".staging").exists(), "an up-to-date source must not be staged again"
    assert summary["datasets"] == pipeline_run["summary"]["datasets"]


def test_verify_reports_identical_then_a_changed_shard(pipeline_run: dict, tmp_path: Path) -> None:
    from flows.verify import compare_corpora, verify_corpus

    corpus = pipeline_run["out"] / "corpus"
    result = verify_corpus(str(corpus), str(tmp_path))
    assert result["identical"], result
    assert result["checked"] >= 7  # 3 manifests, their shards, data_config.json

    copy = tmp_path / "copy" / "corpus"
    shutil.copytree(corpus, copy)
    shard = copy / "nli-pairs" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    (copy / "nli-triplets" / "manifest.json").unlink()
    changed = compare_corpora(corpus, copy)
    assert not changed["identical"]
    assert "nli-pairs/part-00000.parquet" in changed["differ"]
    assert "nli-triplets/part-00000.parquet" not in changed["differ"]
    assert "nli-triplets/manifest.json" in changed["missing"]


def test_build_config_from_json_overrides() -> None:
    from flows.config_options import build_config
    from pipeline.ingest.config import IngestConfig
    from pipeline.mining.config import MiningConfig

    config = build_config(IngestConfig, {"heldout_fraction": 0.1, "filters": {}})
    assert config.heldout_fraction == 0.1 and type(config.filters).__name__ == "TextFilters"
    assert build_config(MiningConfig, {"extra_corpus": ["a", "b"]}).extra_corpus == ("a", "b")
    with pytest.raises(ValueError, match="unknown MiningConfig option.*num_negative\\b"):
        build_config(MiningConfig, {"num_negative": 2})


def test_library_never_imports_prefect() -> None:
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        sys.modules["prefect"] = None  # any import of prefect now fails
        import pipeline
        for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
            importlib.import_module(module.name)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


_BUILD_SCRIPT = """
import sys
from flows.parent_flow import pairforge_pipeline
pairforge_pipeline(sources={sources!r}, out_dir={out!r}, mining={mining!r}, stop_after="config")
"""


def test_killed_build_resumes_to_identical_bytes(pipeline_run: dict, tiny_model_dir: Path, tmp_path: Path) -> None:
    """SIGKILL a build once ingest has written its manifests, rerun it, compare with an uninterrupted build."""
    from prefect.settings import PREFECT_API_URL

    from flows.parent_flow import pairforge_pipeline
    from flows.verify import compare_corpora

    out = tmp_path / "killed"
    script = _BUILD_SCRIPT.format(sources=SOURCES, out=str(out), mining=corpus_options(tiny_model_dir)["mining"])
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = out / "corpus" / "nli-triplets" / "manifest.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert marker.exists(), f"the build never reached its ingest manifests: {process.stderr.read().decode()[-2000:]}"
    assert process.returncode == -signal.SIGKILL
    assert not (out / "corpus" / "data_config.json").exists(), "the kill came too late to interrupt the build"

    pairforge_pipeline(sources=SOURCES, out_dir=str(out), stop_after="config", **corpus_options(tiny_model_dir))
    result = compare_corpora(pipeline_run["out"] / "corpus", out / "corpus")
    assert result["identical"], result


def test_a_rebuild_after_a_config_change_hashes_each_input_once(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    """The check task hashes the inputs to compare them with the manifests; the stage
    tasks of the rebuild it then asks for reuse those hashes."""
    import pipeline.corpus.files as shard_io
    from flows.ingest import build_corpus

    out = tmp_path / "config-change"
    build_corpus(sources=SOURCES, out_dir=str(out))
    hashed: list[str] = []
    original = shard_io.file_sha256

    def counting(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(shard_io, "file_sha256", counting)
    manifests = build_corpus(sources=SOURCES, out_dir=str(out), ingest={"heldout_fraction": 0.2})
    assert all(m["config"]["heldout_fraction"] == 0.2 for m in manifests)
    names = sorted(Path(p).name for p in INPUTS)
    assert sorted(n for n in hashed if n in names) == names


def test_a_second_writer_of_the_corpus_fails_at_once_naming_the_holder(pipeline_run: dict, tiny_model_dir: Path) -> None:
    """The pipeline and a stage flow called on its own, against a corpus another process holds."""
    from flows.ingest import build_corpus
    from flows.parent_flow import pairforge_pipeline
    from tests.helpers import LockHolder as Holder

    corpus = pipeline_run["out"] / "corpus"
    holder = Holder(corpus)
    try:
        started = time.monotonic()
        state = pairforge_pipeline(sources=SOURCES, out_dir=str(pipeline_run["out"]), stop_after="config", return_state=True,
                                   **corpus_options(tiny_model_dir))  # fmt: skip
        assert state.is_failed()
        assert f"{corpus} is being written by another process: pid {holder.pid}" in state.message
        assert time.monotonic() - started < 60
        stage = build_corpus(sources=SOURCES, out_dir=str(pipeline_run["out"]), return_state=True)
        assert stage.is_failed() and f"pid {holder.pid}" in stage.message
    finally:
        holder.release()


def test_the_flow_names_its_run_in_the_lock(prefect_harness, tmp_path: Path) -> None:
    from prefect import flow

    from flows.locking import flow_lock
    from pipeline.corpus.locks import read_holder

    @flow(name="pairforge-lock-probe")
    def probe(folder: str) -> dict:
        with flow_lock(folder):
            return read_holder(folder)

    record = probe(str(tmp_path / "out"))
    assert record["flow_run"].startswith("pairforge-lock-probe/") and record["pid"] == os.getpid()


def test_verify_from_another_folder_then_with_an_input_moved(prefect_harness, tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Built from relative paths in one folder, verified from another: identical; an input moved: `input not found`."""
    from flows.parent_flow import pairforge_pipeline
    from flows.verify import verify_corpus

    build_dir, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    (build_dir / "data").mkdir(parents=True)
    elsewhere.mkdir()
    for path in INPUTS:
        shutil.copy(path, build_dir / "data" / Path(path).name)
    relative = [{"source": "nli", "inputs": [f"data/{Path(p).name}" for p in INPUTS]}]
    monkeypatch.chdir(build_dir)
    pairforge_pipeline(sources=relative, out_dir="out", stop_after="config", mining={"model": os.path.relpath(tiny_model_dir)})
    corpus = build_dir / "out" / "corpus"
    spec = json.loads((corpus / "build.json").read_text())
    absolute = [str(build_dir / "data" / Path(p).name) for p in INPUTS]
    assert spec["sources"] == [{"source": "nli", "inputs": absolute}]
    assert spec["mining"]["model"] == str(tiny_model_dir)

    monkeypatch.chdir(elsewhere)
    result = verify_corpus(str(corpus))
    assert result["identical"], result

    moved = build_dir / "moved"
    (build_dir / "data").rename(moved)
    env = {k: v for k, v in os.environ.items() if k != "PAIRFORGE_DEBUG"}
    done = subprocess.run([str(Path(sys.executable).with_name("pairforge")), "verify", str(corpus)], cwd=elsewhere,
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"pairforge: error: input not found: {absolute[0]} (named in {corpus}/build.json; a rebuild needs the inputs it was built from)"
    ]
    moved.rename(build_dir / "data")
