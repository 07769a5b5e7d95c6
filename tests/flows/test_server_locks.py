"""No overlapping runs, against a real Prefect server on PostgreSQL (marked ``server``).

Set-up, once for the module: a throwaway PostgreSQL cluster and ``prefect server
start`` (tests/flows/server_harness.py), ``scripts/deploy.sh`` (the work pools and
every deployment of deploy/prefect.yaml), and a process worker serving the ``cpu``
pool, which runs the ``weekly`` deployment.

* Two flow runs writing one output folder: a ``pairforge run`` holds the corpus (and
  is paused there with SIGSTOP, so that the others meet it mid-write); a second
  ``pairforge run`` exits 2 with the holder's line, a run of the weekly deployment
  fails at once with the same line as its state message; the first completes, and
  ``pairforge verify`` finds it identical to a lone rebuild.
* The weekly deployment's concurrency limit: while one of its runs is running (and
  paused), a second run of it is cancelled by the server ("Deployment concurrency limit
  reached.") before its worker starts it; the first completes.

Skipped, with the reason, where postgres or chromium is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.corpus.locks import is_locked, read_holder
from tests.flows.server_harness import missing_server_dependencies, running_postgres, running_prefect_server
from tests.helpers import ROOT, TEST_DATA

FLOW_DATA = TEST_DATA / "flows"
INPUTS = [str(FLOW_DATA / "snli_sample_a.jsonl"), str(FLOW_DATA / "snli_sample_b.jsonl")]
PREFECT = str(Path(sys.executable).with_name("prefect"))
PAIRFORGE = str(Path(sys.executable).with_name("pairforge"))
WEEKLY = "pairforge-pipeline/weekly"

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(missing_server_dependencies() is not None, reason=str(missing_server_dependencies())),
]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    """A server with every deployment and a ``cpu`` pool worker; yields the client environment."""
    work = tmp_path_factory.mktemp("server-locks")
    with running_postgres() as postgres:
        with running_prefect_server(postgres.async_url, work / "prefect-home") as server:
            env = dict(server.env, PREFECT=PREFECT, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5")
            env.pop("PAIRFORGE_DEBUG", None)
            deploy = subprocess.run(["bash", str(ROOT / "scripts" / "deploy.sh")], cwd=ROOT, env=env, capture_output=True, text=True)
            assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
            log = open(work / "worker-cpu.log", "wb")
            worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cpu", "--type", "process"], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            try:
                yield {"env": env, "api_url": server.api_url, "work": work, "worker_log": work / "worker-cpu.log"}
            finally:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)


def _api(deployed: dict, call):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: deployed["api_url"]}):
        with get_client(sync_client=True) as client:
            return call(client)


def _start_weekly(deployed: dict, out: Path, tiny_model_dir: Path) -> Any:
    """A run of the weekly deployment on the test inputs, corpus stages only; returns its flow run."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    parameters = {"sources": [{"source": "nli", "inputs": INPUTS}], "out_dir": str(out), "stop_after": "config",
                  "mining": {"model": str(tiny_model_dir)}}  # fmt: skip
    with temporary_settings(updates={PREFECT_API_URL: deployed["api_url"]}):
        return run_deployment(WEEKLY, parameters=parameters, timeout=0)


def _final_state(deployed: dict, run_id: Any, timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = _api(deployed, lambda c: c.read_flow_run(run_id))
        if run.state is not None and run.state.is_final():
            return run.state
        time.sleep(0.5)
    log = deployed["worker_log"].read_text(errors="replace")[-3000:]
    raise AssertionError(f"flow run {run_id} not finished after {timeout_s:.0f} s ({run.state}):\n{log}")


def _holder_pid(folder: Path, matches, timeout_s: float = 300, worker_log: Path | None = None) -> int:
    """The pid holding ``folder`` once its record satisfies ``matches``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = read_holder(folder)
        if record and matches(record) and is_locked(folder):
            return int(record["pid"])
        time.sleep(0.01)
    log = worker_log.read_text(errors="replace")[-3000:] if worker_log else ""
    raise AssertionError(f"no holder of {folder} after {timeout_s:.0f} s (record {read_holder(folder)}):\n{log}")


def test_two_flow_runs_writing_one_folder(deployed: dict, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([{"source": "nli", "inputs": INPUTS}]))
    command = [PAIRFORGE, "run", "--sources", str(sources), "--out", str(out), "--model", str(tiny_model_dir),
               "--stop-after", "config", "--device", "cpu"]  # fmt: skip
    first = subprocess.Popen(command, cwd=tmp_path, env=deployed["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    corpus = out / "corpus"
    try:
        pid = _holder_pid(corpus, lambda r: r.get("pid") == first.pid)
        os.kill(pid, signal.SIGSTOP)
        second = subprocess.run(command, cwd=tmp_path, env=deployed["env"], capture_output=True, text=True, timeout=300)
        weekly = _start_weekly(deployed, out, tiny_model_dir)
        state = _final_state(deployed, weekly.id)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert "== pairforge run summary ==" in stdout

    holder_line = f"{corpus} is being written by another process: pid {first.pid} on "
    assert second.returncode == 2 and "Traceback" not in second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"pairforge: error: {holder_line}") and "command `pairforge run --sources" in line
    assert state.is_failed(), state
    assert holder_line in state.message, state.message

    verify = subprocess.run([PAIRFORGE, "verify", str(corpus)], cwd=tmp_path, env=deployed["env"], capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert verify.returncode == 0 and f"{corpus}: identical" in verify.stdout, verify.stdout[-2000:] + verify.stderr[-3000:]


def test_a_weekly_run_never_starts_while_the_previous_one_runs(deployed: dict, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    corpus = out / "corpus"
    first = _start_weekly(deployed, out, tiny_model_dir)
    pid = _holder_pid(corpus, lambda r: str(first.id) in r.get("flow_run", ""), worker_log=deployed["worker_log"])
    os.kill(pid, signal.SIGSTOP)
    try:
        record = read_holder(corpus)
        assert record["flow_run"].startswith("pairforge-pipeline/") and record["flow_run"].endswith(", deployment weekly")
        by_hand = subprocess.run([PAIRFORGE, "ingest", "nli", INPUTS[0], "--out", str(corpus), "--quiet"], env=deployed["env"],
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
        second = _start_weekly(deployed, out, tiny_model_dir)
        state = _final_state(deployed, second.id)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert state.is_cancelled(), state
    assert state.message == "Deployment concurrency limit reached."
    history = [st.type.value for st in _api(deployed, lambda c: c.read_flow_run_states(second.id))]
    assert "RUNNING" not in history and "PENDING" not in history, history  # cancelled before its worker started it
    assert by_hand.returncode == 2
    assert f"pid {pid} on " in by_hand.stderr and "flow run pairforge-pipeline/" in by_hand.stderr
    assert _final_state(deployed, first.id).is_completed()
    assert not is_locked(corpus)
