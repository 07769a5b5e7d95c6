"""End to end against a real Prefect server backed by a real PostgreSQL (marked ``server``).

Set-up, once for the module: a throwaway PostgreSQL cluster and ``prefect server
start`` on 127.0.0.1 (tests/flows/server_harness.py); ``scripts/deploy.sh`` creates the work
pools and runs ``prefect deploy --all``; process workers serve the ``gpu-host`` and
``cpu`` pools; ``pairforge run`` runs the parent flow on tiny data with training and
evaluation triggered through their deployments. The tests read everything back
through Prefect's API and load the run's page in headless Chromium (screenshot saved
under $PAIRFORGE_TEST_ARTIFACTS, else the test's temporary folder).

Skipped, with the reason, where postgres or chromium is not installed
(scripts/install_system_deps.sh installs both).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.server_harness import missing_server_dependencies, render_page, running_postgres, running_prefect_server
from tests.helpers import ROOT, TEST_DATA

FLOW_DATA = TEST_DATA / "flows"
PREFECT = str(Path(sys.executable).with_name("prefect"))
PAIRFORGE = str(Path(sys.executable).with_name("pairforge"))

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(missing_server_dependencies() is not None, reason=str(missing_server_dependencies())),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL-backed Prefect server; yields it and its client environment."""
    with running_postgres() as postgres:
        with running_prefect_server(postgres.async_url, tmp_path_factory.mktemp("prefect-server-home")) as prefect_server:
            yield prefect_server


def _api(server, call):
    """Run ``call(client)`` with a sync client of ``server``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        with get_client(sync_client=True) as client:
            return call(client)


@pytest.fixture(scope="module")
def deployed_run(server, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Deploy everything, start workers, run ``pairforge run`` through the deployments."""
    work = tmp_path_factory.mktemp("server-run")
    env = dict(server.env, PREFECT=PREFECT, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5")
    deploy = subprocess.run(["bash", str(ROOT / "scripts" / "deploy.sh")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    workers = []
    for pool in ("gpu-host", "cpu"):
        log = open(work / f"worker-{pool}.log", "wb")
        workers.append(
            subprocess.Popen([PREFECT, "worker", "start", "--pool", pool, "--type", "process"], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
    sources = work / "sources.json"
    sources.write_text(json.dumps([{"source": "nli", "inputs": [str(FLOW_DATA / "snli_sample_a.jsonl"), str(FLOW_DATA / "snli_sample_b.jsonl")]}]))
    out = work / "out"
    try:
        run = subprocess.run(
            [PAIRFORGE, "run", "--sources", str(sources), "--out", str(out), "--model", str(tiny_model_dir),
             "--max-steps", "2", "--batch-size", "8", "--device", "cpu",
             "--train-deployment", "pairforge-train/gpu-host", "--evaluate-deployment", "pairforge-evaluate/cpu"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
        )
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    worker_logs = "".join((work / f"worker-{p}.log").read_text(errors="replace")[-2000:] for p in ("gpu-host", "cpu"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-4000:] + worker_logs
    return {"out": out, "stdout": run.stdout}


def test_deploy_all_registers_every_deployment(server, deployed_run: dict) -> None:
    import yaml

    spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    deployments = _api(server, lambda c: c.read_deployments())
    names = set()
    for deployment in deployments:
        flow = _api(server, lambda c: c.read_flow(deployment.flow_id))
        names.add((flow.name, deployment.name, deployment.work_pool_name))
    expected = {d["name"] for d in spec["deployments"]}
    assert {n[1] for n in names} == expected
    assert ("pairforge-pipeline", "weekly", "cpu") in names
    assert ("pairforge-train", "gpu", "gpu") in names
    weekly = next(d for d in deployments if d.name == "weekly")
    assert [s.schedule.cron for s in weekly.schedules] == ["0 3 * * 1"]
    pools = {p.name: p.type for p in _api(server, lambda c: c.read_work_pools())}
    assert pools["cpu"] == "process" and pools["gpu-host"] == "process" and pools["gpu"] == "kubernetes"


def _parent_and_children(server):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId

    parents = _api(server, lambda c: c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pairforge-pipeline"]))))
    assert len(parents) == 1, [p.name for p in parents]
    parent = parents[0]
    children = _api(server, lambda c: c.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id]))))
    return parent, children


def test_runs_tasks_and_artifacts_are_recorded(server, deployed_run: dict) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, TaskRunFilter, TaskRunFilterFlowRunId

    parent, children = _parent_and_children(server)
    assert parent.state.is_completed()
    flows = {c.id: _api(server, lambda cl: cl.read_flow(c.flow_id)).name for c in children}
    by_flow = {flows[c.id]: c for c in children}
    assert set(by_flow) == {"build-corpus", "mine-negatives", "write-config", "pairforge-train", "pairforge-evaluate"}
    assert all(c.state.is_completed() for c in children)
    # training and evaluation went through their deployments (and so through the workers)
    for name, deployment, pool in (("pairforge-train", "gpu-host", "gpu-host"), ("pairforge-evaluate", "cpu", "cpu")):
        run = by_flow[name]
        assert run.deployment_id is not None
        assert _api(server, lambda c: c.read_deployment(run.deployment_id)).name == deployment
        assert run.work_pool_name == pool
    ids = [parent.id, *(c.id for c in children)]
    tasks = _api(server, lambda c: c.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids))))
    names = {t.name for t in tasks}
    assert {"stage-nli-0", "stage-nli-1", "finalize-nli", "mine-nli-pairs", "run-pairforge-train/gpu-host"} <= names
    assert all(t.state.is_completed() for t in tasks)
    artifacts = _api(server, lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))))
    keys = {a.key for a in artifacts}
    assert {"pairforge-ingest", "pairforge-mine", "pairforge-config", "pairforge-train", "pairforge-evaluation", "pairforge-progress"} <= keys
    evaluation = next(a for a in artifacts if a.key == "pairforge-evaluation")
    assert "| metric | rows | model | baseline | delta | 95% interval of delta |" in evaluation.data
    assert "== pairforge run summary ==" in deployed_run["stdout"]
    assert (deployed_run["out"] / "eval" / "report.json").is_file()


def test_ui_shows_the_run_completed(server, deployed_run: dict, tmp_path: Path) -> None:
    parent, _ = _parent_and_children(server)
    artifacts_dir = Path(os.environ.get("PAIRFORGE_TEST_ARTIFACTS", tmp_path))
    screenshot = artifacts_dir / "prefect-ui-flow-run.png"
    dom = render_page(f"{server.url}/runs/flow-run/{parent.id}", screenshot)
    assert parent.name in dom, "the UI did not render the flow run page"
    assert "Completed" in dom
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
