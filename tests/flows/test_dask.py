"""The corpus flows on a real Dask cluster: same bytes as the single-process build.

A ``distributed.LocalCluster`` of 2 worker processes (one thread each) runs the
corpus stages (build-corpus, mine-negatives, write-config) of the parent flow on the
tiny flow inputs; every shard, manifest and data_config.json is compared by SHA-256
with a build of the same inputs on Prefect's default thread runner. The hash
partitions of exact dedup are deduplicated as tasks on a 2-process cluster and must
give the serial mask. The runner spec parser is tested on its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TEST_DATA

pytest.importorskip("distributed", reason="dask.distributed is not installed")
pytest.importorskip("prefect_dask", reason="prefect-dask is not installed")

FLOW_DATA = TEST_DATA / "flows"
SOURCES = [{"source": "nli", "inputs": [str(FLOW_DATA / "snli_sample_a.jsonl"), str(FLOW_DATA / "snli_sample_b.jsonl")]}]


@pytest.fixture(scope="module")
def prefect_harness():
    """Prefect's test harness; its API URL is what the Dask workers report to."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def build(out: Path, tiny_model_dir: Path, task_runner: str | None) -> dict:
    from flows.parent_flow import pairforge_pipeline

    return pairforge_pipeline(
        sources=SOURCES, out_dir=str(out), mining={"model": str(tiny_model_dir)}, stop_after="config", task_runner=task_runner
    )


@pytest.mark.slow
def test_two_worker_cluster_builds_identical_bytes(prefect_harness, tiny_model_dir: Path, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    from flows.verify import compare_corpora, corpus_digests

    single = build(tmp_path / "single", tiny_model_dir, None)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client, get_task_stream(client) as stream:
            clustered = build(tmp_path / "cluster", tiny_model_dir, f"dask:{cluster.scheduler_address}")
            workers = set(cluster.scheduler_info["workers"])
    # The submitted tasks ran on the cluster's worker processes, not in this one:
    # check-nli, stage-nli-0, stage-nli-1, finalize-nli, the mining tasks, and the
    # exact-dedup partitions of both NLI datasets (64 each) as tasks of their own.
    dedup_tasks = [r for r in stream.data if r["key"].startswith("partition_first_rows")]
    ran_on = {record["worker"] for record in stream.data}
    assert len(dedup_tasks) == 2 * 64, len(dedup_tasks)
    assert len(stream.data) - len(dedup_tasks) >= 5 and ran_on <= workers, (len(stream.data), ran_on, workers)
    assert clustered["datasets"] == single["datasets"] and clustered["mined"] == single["mined"]
    digests = corpus_digests(tmp_path / "single" / "corpus")
    assert sum(p.endswith(".parquet") for p in digests) >= 3 and sum(p.endswith("manifest.json") for p in digests) == 3
    result = compare_corpora(tmp_path / "single" / "corpus", tmp_path / "cluster" / "corpus")
    assert result["identical"], result
    assert result["checked"] == len(digests)


def test_spec_parsing() -> None:
    from flows.runners import RunnerSpec, parse_runner_spec, task_runner_from

    assert parse_runner_spec(None) == RunnerSpec("thread")
    assert parse_runner_spec("thread") == RunnerSpec("thread")
    assert parse_runner_spec("dask:local") == RunnerSpec("dask")
    assert parse_runner_spec("dask:local:3") == RunnerSpec("dask", n_workers=3)
    assert parse_runner_spec("dask:tcp://10.0.0.5:8786") == RunnerSpec("dask", address="tcp://10.0.0.5:8786")
    assert task_runner_from(None) is None
    runner = task_runner_from("dask:local:2")
    assert runner.cluster_kwargs["n_workers"] == 2 and runner.cluster_kwargs["threads_per_worker"] == 1
    assert task_runner_from("dask:tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"


@pytest.mark.parametrize("spec", ["dask", "dask:local:0", "dask:local:two", "ray:local", "dask:10.0.0.5"])
def test_bad_specs_name_what_is_accepted(spec: str) -> None:
    from flows.runners import parse_runner_spec

    with pytest.raises(ValueError, match="task runner"):
        parse_runner_spec(spec)


def test_dedup_partitions_run_as_cluster_tasks(tmp_path: Path) -> None:
    """Each hash partition deduplicated by a different worker process gives the serial mask."""
    import numpy as np
    from distributed import Client, LocalCluster

    from pipeline.ingest.dedup import ExactDeduplicator

    keys = np.random.default_rng(7).integers(0, 700, size=6000).astype(np.uint64)
    h1 = keys * np.uint64(0x9E3779B97F4A7C15)  # spreads keys over the partitions (high bits)
    expected = np.zeros(len(keys), dtype=bool)
    expected[np.unique(keys, return_index=True)[1]] = True

    def collect() -> ExactDeduplicator:
        dedup = ExactDeduplicator(n_buckets=8, work_dir=tmp_path)
        for start in range(0, len(keys), 1000):
            dedup.add(h1[start : start + 1000], keys[start : start + 1000])
        return dedup

    serial = collect().keep_mask()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        futures = []

        def on_cluster(function, paths):
            futures.extend(client.map(function, [str(p) for p in paths]))
            return client.gather(futures[::-1])  # results merged in reverse: order must not matter

        distributed_mask = collect().keep_mask(map_partitions=on_cluster)
        ran_on = {who for who in client.who_has(futures).values() for who in who}
    assert len(futures) == 8 and ran_on  # every partition was a task on the cluster
    assert np.array_equal(serial, expected)
    assert np.array_equal(distributed_mask, expected)


def test_local_spec_starts_one_cluster_that_stages_connect_to() -> None:
    from distributed import Client

    from flows.runners import dask_cluster, parse_runner_spec

    with dask_cluster("dask:local:1") as spec:
        address = parse_runner_spec(spec).address
        assert spec.startswith("dask:tcp://") and address
        with Client(address) as client:
            assert len(client.scheduler_info()["workers"]) == 1
    with dask_cluster("dask:tcp://10.0.0.5:8786") as spec:
        assert spec == "dask:tcp://10.0.0.5:8786"
    with dask_cluster(None) as spec:
        assert spec is None


def test_run_command_passes_the_task_runner(tmp_path: Path) -> None:
    from flows.cli import _run_parameters, build_parser

    parser = build_parser()
    args = parser.parse_args(["run", "--task-runner", "dask:local:2", "--out", str(tmp_path)])
    assert _run_parameters(args)["task_runner"] == "dask:local:2"
    assert _run_parameters(parser.parse_args(["run"]))["task_runner"] is None
