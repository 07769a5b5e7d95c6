"""Curation in the pipeline flow: every step switched on by the ``curation`` parameter, composed
(ingest -> decontaminate -> consistency -> semantic dedup -> mine -> rescore), trained on in its last
version only, and the same bytes on the thread runner and a 2-process Dask cluster."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.helpers import TEST_DATA

FLOW_DATA = TEST_DATA / "flows"
SOURCES = [{"source": "nli", "inputs": [str(FLOW_DATA / "snli_sample_a.jsonl"), str(FLOW_DATA / "snli_sample_b.jsonl")]}]
PLANTED = "A man is on a bike."
PAIRS_FINAL = "nli-pairs-decontaminated-consistent-semdedup-mined-rescored"
TRIPLETS_FINAL = "nli-triplets-decontaminated-consistent-semdedup-rescored"


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def curation(model: Path, stsb: Path) -> dict:
    return {
        "decontaminate": {"stsb": [str(stsb)]},
        "consistency": {"model": str(model), "k": 3},
        "semantic_dedup": {"model": str(model)},
        "rescore": {"model": str(model), "relative_margin": 0.0},
    }


def build(out: Path, model: Path, stsb: Path, task_runner: str | None = None) -> dict:
    from flows.parent_flow import pairforge_pipeline

    # the top candidate, no margin: the random tiny model leaves few anchors a candidate below 95% of the positive
    mining = {"model": str(model), "relative_margin": None}
    return pairforge_pipeline(
        sources=SOURCES, out_dir=str(out), mining=mining, curation=curation(model, stsb), stop_after="config",
        task_runner=task_runner,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stsb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "sts-planted.csv"
    path.write_text(f"main-captions\tMSRvid\t2012test\t0001\t4.000\t{PLANTED}\tSomeone rides.\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def threads_run(prefect_harness, tiny_model_dir, stsb, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("curate-threads")
    return out, build(out, tiny_model_dir, stsb)


def test_the_steps_compose_and_only_the_last_versions_are_sampled(threads_run) -> None:
    import json

    from pipeline.corpus.manifest import check_accounting, read_manifest

    out, summary = threads_run
    corpus = out / "corpus"
    chain = ["nli-pairs", "nli-pairs-decontaminated", "nli-pairs-decontaminated-consistent",
             "nli-pairs-decontaminated-consistent-semdedup", "nli-pairs-decontaminated-consistent-semdedup-mined", PAIRS_FINAL]  # fmt: skip
    manifests = [read_manifest(corpus / name) for name in chain]
    for manifest in manifests:
        check_accounting(manifest)
    assert [m["stage"] for m in manifests] == ["ingest", "decontaminate", "consistency", "semantic_dedup", "mine", "rescore"]
    for earlier, later in zip(manifests[1:], manifests[2:]):  # each step reads all the previous one kept
        assert later["rows_read"] == earlier["rows_kept"]
    assert manifests[1]["curated_from"]["path"] == "nli-pairs" and manifests[4]["mined_from"]["path"] == chain[3]
    planted = sum(pl.read_parquet(p).filter((pl.col("anchor") == PLANTED) | (pl.col("positive") == PLANTED)).height
                  for p in (corpus / "nli-pairs").glob("part-*.parquet"))  # fmt: skip
    assert planted > 0 and manifests[1]["dropped"] == {"contaminated": planted}
    assert set(summary["curated"]) == {*chain[1:4], PAIRS_FINAL, TRIPLETS_FINAL.replace("-rescored", ""), TRIPLETS_FINAL,
                                       "nli-triplets-decontaminated", "nli-triplets-decontaminated-consistent"}  # fmt: skip
    entries = json.loads((corpus / "data_config.json").read_text())
    assert {e["name"] for e in entries} == {PAIRS_FINAL, TRIPLETS_FINAL}
    meta = json.loads((corpus / "data_config.meta.json").read_text())
    assert meta["dropped"] == {"replaced_by_curated": 8, "replaced_by_mined": 1}
    assert json.loads((corpus / "build.json").read_text())["curation"]["consistency"]["k"] == 3
    scores = summary["mined"][chain[4]]["scores"]
    assert scores["margins"]["median"] is not None and (corpus / scores["plot"]).is_file()


@pytest.mark.slow
def test_a_two_worker_cluster_curates_identical_bytes(threads_run, tiny_model_dir, stsb, tmp_path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    from flows.verify import compare_corpora

    pytest.importorskip("prefect_dask")
    out, _ = threads_run
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client, get_task_stream(client) as stream:
            build(tmp_path / "cluster", tiny_model_dir, stsb, f"dask:{cluster.scheduler_address}")
    curate_tasks = [r for r in stream.data if "curate_dataset" in r["key"] or "curate-dataset" in r["key"]]
    assert len(curate_tasks) == 8, sorted({r["key"] for r in stream.data})
    result = compare_corpora(out / "corpus", tmp_path / "cluster" / "corpus")
    assert result["identical"], result
    assert result["checked"] > 20  # 11 manifests and their shards, data_config.json


def test_resolve_curation() -> None:
    from flows.curate import resolve_curation

    assert resolve_curation(None) == {}
    assert resolve_curation({"consistency": True, "rescore": None, "semantic_dedup": False}) == {"consistency": {}}
    assert resolve_curation({"decontaminate": {}}, {"stsb": ["sts.csv"], "nli": []}) == {"decontaminate": {"stsb": ["sts.csv"], "nli": []}}
    with pytest.raises(ValueError, match="unknown curation step.*consistensy"):
        resolve_curation({"consistensy": {}})
    with pytest.raises(ValueError, match="unknown ConsistencyConfig option"):
        resolve_curation({"consistency": {"top_k": 2}})
    assert resolve_curation({"decontaminate": {"heldout": True}, "datasets": ["nli-pairs"]})["datasets"] == ["nli-pairs"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("[1]", "expected a JSON object"), ("{nope", "--curation: not JSON"), ("@/nonexistent.json", "cannot read it"),
     ('{"dedup": {}}', "unknown curation step")],
)
def test_run_rejects_a_bad_curation_option(value, message, capsys) -> None:
    from flows.cli import main

    assert main(["run", "--curation", value, "--out", "/nonexistent/out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_run_summary_shows_curation_and_the_mining_diagnostics(threads_run) -> None:
    from flows.cli import run_summary

    out, summary = threads_run
    text = run_summary(summary)
    assert f"curated (rescore): {PAIRS_FINAL}:" in text and "dropped contaminated=" in text
    mined = "nli-pairs-decontaminated-consistent-semdedup-mined"
    assert f"negatives mined: {mined}:" in text and "margin median" in text
    assert f"histograms in {out / 'corpus' / mined / 'scores.png'}" in text
