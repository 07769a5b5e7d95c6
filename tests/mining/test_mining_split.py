"""Mining split over workers: prepare, encode slices anywhere, finish once.

The split path must write the same bytes as the single-process ``mine_negatives``:
the encoding plan is cut into batches before it is cut into slices, so a text is
encoded in the same batch however the slices are spread. Checked in one process
(slices in reverse order, a lost slice), on a real 2-process ``dask.distributed``
cluster, and through the mine-negatives flow on a Dask task runner.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TEST_DATA, load_jsonl, write_pairs

DATA = TEST_DATA / "mining"

from pipeline.corpus.files import file_sha256
from pipeline.embed.encoders import plan_encoding, split_plan
from pipeline.mining.config import MiningConfig
from pipeline.mining.job import encode_slice, finish_mining, mine_negatives, prepare_mining


def digests(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_pairs(tmp_path / "pairs", load_jsonl(DATA / "pairs.jsonl"))


def out(tmp_path: Path, run: str) -> Path:
    """Each run's output in its own corpus root, under the same name: manifests compare whole."""
    return tmp_path / run / "pairs-mined"


def config_for(model: Path) -> MiningConfig:
    # batch_size 4: the 40 distinct texts make 10 batches, enough to cut into slices.
    return MiningConfig(model=str(model), num_negatives=2, batch_size=4)


def test_plan_slices_are_whole_batches_covering_the_plan():
    lengths = np.array([5, 9, 3, 9, 7, 1, 2, 8, 4, 6, 3, 3])
    order, offsets = plan_encoding(lengths, batch_size=3)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert lengths[order].tolist() == sorted(lengths.tolist(), reverse=True)
    padded = np.diff(offsets) * lengths[order[offsets[:-1]]]
    for n in (1, 2, 3, 99):
        slices = split_plan(offsets, padded, n)
        assert slices[0][0] == 0 and slices[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in pairwise(slices))
        assert {s for pair in slices for s in pair} <= set(offsets.tolist())
        assert len(slices) == min(n, len(offsets) - 1)


@pytest.mark.parametrize("lose_a_slice", [False, True])
def test_split_path_is_byte_identical_to_one_process(dataset, tmp_path, tiny_model_dir, lose_a_slice):
    config = config_for(tiny_model_dir)
    single = mine_negatives(dataset, out(tmp_path, "single"), config, cache_dir=tmp_path / "c1", echo=None)
    job = prepare_mining(dataset, out(tmp_path, "split"), config, cache_dir=tmp_path / "c2", n_slices=3, echo=None)
    assert len(job.slices) == 3 and job.to_encode == single["embedding_counts"]["encoded"] > 0
    for index in reversed(range(len(job.slices))):  # any order, as workers finish
        if lose_a_slice and index == 1:
            continue  # a lost worker: finish encodes the missing texts itself
        encode_slice(job, index)
    split = finish_mining(job, echo=None)
    assert split["shards"] == single["shards"]
    assert digests(out(tmp_path, "split")) == digests(out(tmp_path, "single"))
    assert not (out(tmp_path, "split") / ".mine-work").exists()
    # The cache the slices filled serves a warm rebuild with nothing encoded.
    again = prepare_mining(dataset, out(tmp_path, "again"), config, cache_dir=tmp_path / "c2", n_slices=3, echo=None)
    assert again.slices == () and again.to_encode == 0
    assert finish_mining(again, echo=None)["shards"] == single["shards"]


def test_prepare_reports_an_up_to_date_output(dataset, tmp_path, tiny_model_dir):
    config = config_for(tiny_model_dir)
    mine_negatives(dataset, out(tmp_path, "out"), config, cache_dir=tmp_path / "c", echo=None)
    job = prepare_mining(dataset, out(tmp_path, "out"), config, cache_dir=tmp_path / "c", echo=None)
    assert job.skipped_manifest is not None and job.slices == ()
    assert finish_mining(job, echo=None)["skipped"] is True


@pytest.mark.slow
def test_slices_encoded_on_a_two_process_cluster(dataset, tmp_path, tiny_model_dir):
    distributed = pytest.importorskip("distributed")

    config = config_for(tiny_model_dir)
    mine_negatives(dataset, out(tmp_path, "single"), config, cache_dir=tmp_path / "c1", echo=None)
    job = prepare_mining(dataset, out(tmp_path, "split"), config, cache_dir=tmp_path / "c2", n_slices=4, echo=None)
    cluster_kwargs = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    with distributed.LocalCluster(**cluster_kwargs) as cluster, distributed.Client(cluster) as client:
        futures = client.map(encode_slice, [job] * len(job.slices), range(len(job.slices)), pure=False)
        results = client.gather(futures)
        ran_on = {worker for workers in client.who_has(futures).values() for worker in workers}
    assert sorted(r["slice"] for r in results) == list(range(4)) and sum(r["texts"] for r in results) == job.to_encode
    assert ran_on  # the slices were tasks on the cluster's worker processes
    finish_mining(job, echo=None)
    assert digests(out(tmp_path, "split")) == digests(out(tmp_path, "single"))


@pytest.mark.slow
def test_mine_flow_splits_a_dataset_over_a_dask_cluster(tmp_path, tiny_model_dir, monkeypatch):
    """The mine-negatives flow on a Dask runner: prepare, one task per slice, finish;
    the same bytes as the flow on the default thread runner (one task per dataset)."""
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("prefect_dask")
    from prefect.testing.utilities import prefect_test_harness

    from flows.mine import mine_corpus
    from flows.runners import with_runner

    monkeypatch.setenv("PAIRFORGE_CACHE", str(tmp_path / "cache"))  # workers inherit it: one shared cache
    for run in ("threads", "dask"):
        write_pairs(tmp_path / run / "corpus" / "pairs", load_jsonl(DATA / "pairs.jsonl"))
    mining = config_for(tiny_model_dir).__dict__ | {"extra_corpus": []}
    with prefect_test_harness(server_startup_timeout=180):
        mine_corpus(str(tmp_path / "threads"), ["pairs"], mining)
        (tmp_path / "cache").rename(tmp_path / "cache-threads")  # the cluster run starts cold too
        cluster_kwargs = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        with (
            distributed.LocalCluster(**cluster_kwargs) as cluster,
            distributed.Client(cluster) as client,
            distributed.get_task_stream(client) as stream,
        ):
            flow = with_runner(mine_corpus, f"dask:{cluster.scheduler_address}")
            flow(str(tmp_path / "dask"), ["pairs"], mining, encode_slice_texts=10)
    # 40 texts at most (2 per row) in slices of 10: prepare, 4 encode tasks, finish.
    assert len(stream.data) == 6, [record["key"] for record in stream.data]
    threads, dask = (digests(tmp_path / run / "corpus" / "pairs-mined") for run in ("threads", "dask"))
    assert len(threads) >= 2 and dask == threads


def test_output_does_not_depend_on_what_the_cache_already_holds(dataset, tmp_path, base_model_dir):
    """Batches are never padded, so a text's embedding is the same bytes whatever is
    encoded beside it: a cache warmed by another dataset sharing half of the texts
    (as a cluster's scheduling or a second dataset would leave it) changes nothing.
    The real model: padding's effect on the last bits shows there, not in the tiny one."""
    config = config_for(base_model_dir)
    mine_negatives(dataset, out(tmp_path, "cold"), config, cache_dir=tmp_path / "c1", echo=None)
    other = write_pairs(tmp_path / "other", load_jsonl(DATA / "pairs.jsonl")[::2])
    mine_negatives(other, tmp_path / "other-run" / "other-mined", config, cache_dir=tmp_path / "c2", echo=None)
    warmed = mine_negatives(dataset, out(tmp_path, "warmed"), config, cache_dir=tmp_path / "c2", echo=None)
    counts = warmed["embedding_counts"]
    assert counts["encoded"] > 0 and counts["cached"] > 0, counts  # really a mix of both
    assert digests(out(tmp_path, "warmed")) == digests(out(tmp_path, "cold"))
