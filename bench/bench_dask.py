"""Dask benchmark: the build-corpus flow on a local cluster of 1 worker against 2 workers.

In: the real SNLI sample (``../shared/data/snli/jsonl/snli_1.0_dev.jsonl``), from which
``--files`` input files of ``--lines-per-file`` lines are GENERATED the way
bench/bench_ingest.py does (copy k of a line gets `` [k]`` appended, so rows stay in
the real format and stay distinct); they go under a temporary folder, never the
repository. Out, on stdout: for each cluster size, the wall time of the flow, the
input lines per second, and where the time goes (the compute seconds of
``plan-source`` (hashing the inputs), the summed ones of the ``stage-file`` tasks,
those of ``finalize-source``, and the rest: flow and cluster overhead), the speed-up of 2 workers over 1, the per-core rate that the paper
estimate in deploy/README.md uses, and whether the two outputs are byte-identical.

Each size runs the same flow (flows/ingest.py) with ``task_runner`` pointing
at a ``distributed.LocalCluster`` started before the clock (worker start-up is not
counted), each worker process limited to one core (one task thread, and polars /
numpy thread pools of 1), so 2 workers against 1 is 2 cores against 1; the Prefect API is a temporary local
server.

Mining (``--mine``, on by default): the bundled examples (examples/sources.json, a
dozen sources) are ingested once on threads, then the mine-negatives flow mines every
pair dataset (one ``mine-dataset`` task each: load the model, encode, index, search)
with the packaged all-MiniLM-L6-v2 on 1 and on 2 single-core workers, each run with
an empty embedding cache of its own (``PAIRFORGE_CACHE``).

Usage::

    .venv/bin/python bench/bench_dask.py                       # 8 files x 100,000 lines
    .venv/bin/python bench/bench_dask.py --files 4 --lines-per-file 20000   # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from bench_ingest import DEFAULT_SAMPLE, build_input  # noqa: E402

EXAMPLE_SOURCES = PROJECT_ROOT / "examples" / "sources.json"


def split_input(whole: Path, files: int, lines_per_file: int, out_dir: Path) -> list[Path]:
    """Cut ``whole`` into ``files`` consecutive files of ``lines_per_file`` lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"snli-part-{index:02d}.jsonl" for index in range(files)]
    with open(whole, encoding="utf-8") as source:
        for path in paths:
            with open(path, "w", encoding="utf-8") as handle:
                for _ in range(lines_per_file):
                    handle.write(source.readline())
    return paths


def task_group(key: Any) -> str:
    """The stage a Dask task key belongs to (keys start with the task function's name)."""
    name = str(key[0] if isinstance(key, tuple) else key)
    if name.startswith("plan_source"):
        return "plan"
    if name.startswith("stage_file"):
        return "stage"
    if name.startswith("finalize_source"):
        return "finalize"
    if name.startswith("mine_dataset"):
        return "mine"
    return "other"


def run_on_cluster(n_workers: int, run: Any) -> tuple[Any, float, dict[str, float]]:
    """``run(spec)`` on a fresh local cluster of ``n_workers`` single-core workers: result, wall s, compute s by stage."""
    from distributed import Client, LocalCluster, get_task_stream

    from flows.runners import local_cluster_kwargs

    with LocalCluster(**local_cluster_kwargs(n_workers, cores_per_worker=1)) as cluster, Client(cluster) as client:
        with get_task_stream(client) as stream:
            started = time.perf_counter()
            result = run(f"dask:{cluster.scheduler_address}")
            wall = time.perf_counter() - started
    compute: dict[str, float] = defaultdict(float)
    for record in stream.data:
        for span in record["startstops"]:
            if span["action"] == "compute":
                compute[task_group(record["key"])] += span["stop"] - span["start"]
    return result, wall, dict(compute)


def run_build(inputs: list[Path], out_dir: Path, n_workers: int) -> dict[str, Any]:
    """Build the corpus on ``n_workers``; wall and per-stage compute seconds."""
    from flows.ingest import build_corpus
    from flows.runners import with_runner

    sources = [{"source": "nli", "inputs": [str(p) for p in inputs]}]
    manifests, wall, compute = run_on_cluster(n_workers, lambda spec: with_runner(build_corpus, spec)(sources, str(out_dir)))
    rows = {m["dataset"]: m["rows_kept"] for m in manifests}
    return {"workers": n_workers, "wall": wall, "compute": compute, "rows": rows}


def run_mining(ingested: Path, datasets: list[str], out_dir: Path, n_workers: int) -> dict[str, Any]:
    """Mine ``datasets`` of a copy of the ingested corpus on ``n_workers``, with an empty embedding cache."""
    from flows.mine import mine_corpus
    from flows.paths import CORPUS_DIR
    from flows.runners import with_runner

    shutil.copytree(ingested / CORPUS_DIR, out_dir / CORPUS_DIR)
    os.environ["PAIRFORGE_CACHE"] = str(out_dir / "cache")  # inherited by the workers spawned next
    manifests, wall, compute = run_on_cluster(n_workers, lambda spec: with_runner(mine_corpus, spec)(str(out_dir), datasets))
    rows = {m["dataset"]: m["rows_kept"] for m in manifests}
    return {"workers": n_workers, "wall": wall, "compute": compute, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="the SNLI jsonl sample the inputs are made from")
    parser.add_argument("--files", type=int, default=8, help="input files (default: %(default)s)")
    parser.add_argument("--lines-per-file", type=int, default=100_000, help="lines per input file (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where inputs and outputs go (default: a temp folder)")
    parser.add_argument("--no-mine", dest="mine", action="store_false", help="skip the mining comparison")
    args = parser.parse_args(argv)
    if not args.sample.is_file():
        parser.error(f"sample not found: {args.sample} (see ../shared/data/README.md)")

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="pairforge-bench-dask-"))
    total_lines = args.files * args.lines_per_file
    try:
        whole = build_input(args.sample, total_lines, work / "whole.jsonl")
        inputs = split_input(whole, args.files, args.lines_per_file, work / "inputs")
        whole.unlink()
        from flows.runners import shared_prefect_api
        from flows.verify import compare_corpora

        results, mined = [], []
        with shared_prefect_api("dask:local"):
            for n_workers in (1, 2):
                results.append(run_build(inputs, work / f"out-{n_workers}", n_workers))
            identical = compare_corpora(work / "out-1" / "corpus", work / "out-2" / "corpus")
            if args.mine:
                from flows.ingest import build_corpus
                from flows.mine import pair_datasets
                from flows.sources_file import read_sources_file

                manifests = build_corpus(read_sources_file(EXAMPLE_SOURCES), str(work / "examples"))
                datasets = pair_datasets(manifests)
                for n_workers in (1, 2):
                    mined.append(run_mining(work / "examples", datasets, work / f"mine-{n_workers}", n_workers))
                mined_identical = compare_corpora(work / "mine-1" / "corpus", work / "mine-2" / "corpus")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nbuild-corpus on {args.files} files x {args.lines_per_file:,} lines = {total_lines:,} SNLI lines "
          f"({os.cpu_count()} cores)")
    print(f"{'workers':>7}  {'wall s':>7}  {'lines/s':>9}  {'plan s':>7}  {'stage-file s':>12}  {'finalize s':>10}  {'other s':>7}")
    for r in results:
        check = r["compute"].get("plan", 0.0)
        stage, finalize = r["compute"].get("stage", 0.0), r["compute"].get("finalize", 0.0)
        # Wall time not covered by task compute, with the parallel stage counted once per worker.
        other = r["wall"] - check - stage / r["workers"] - finalize
        print(f"{r['workers']:>7}  {r['wall']:>7.1f}  {total_lines / r['wall']:>9,.0f}  {check:>7.1f}  {stage:>12.1f}  "
              f"{finalize:>10.1f}  {other:>7.1f}")
    one, two = results
    print(f"speed-up, 2 workers over 1: {one['wall'] / two['wall']:.2f}x")
    stage_rate = total_lines / one["compute"].get("stage", float("nan"))
    finalize_rate = total_lines / one["compute"].get("finalize", float("nan"))
    serial_rate = total_lines / (one["compute"].get("stage", 0.0) + one["compute"].get("finalize", 0.0))
    print(f"per-core rates (1 worker): stage-file {stage_rate:,.0f} lines/s, finalize-source {finalize_rate:,.0f} lines/s, "
          f"both {serial_rate:,.0f} lines/s")
    print(f"rows kept: {one['rows']}; outputs byte-identical: {identical['identical']} ({identical['checked']} files)")
    ok = identical["identical"] and one["rows"] == two["rows"]
    if mined:
        texts = sum(2 * rows for rows in mined[0]["rows"].values())
        print(f"\nmine-negatives on {len(mined[0]['rows'])} example datasets ({sum(mined[0]['rows'].values()):,} pairs), "
              "all-MiniLM-L6-v2, empty embedding cache")
        print(f"{'workers':>7}  {'wall s':>7}  {'mine-dataset s':>14}  {'other s':>7}")
        for r in mined:
            task_s = r["compute"].get("mine", 0.0)
            print(f"{r['workers']:>7}  {r['wall']:>7.1f}  {task_s:>14.1f}  {r['wall'] - task_s / r['workers']:>7.1f}")
        print(f"speed-up, 2 workers over 1: {mined[0]['wall'] / mined[1]['wall']:.2f}x; "
              f"~{texts:,} anchor+positive texts, {texts / mined[0]['compute'].get('mine', float('nan')):.0f} texts/s per core "
              "(whole mine-dataset tasks: model load, encode, index, search)")
        print(f"mined outputs byte-identical: {mined_identical['identical']} ({mined_identical['checked']} files)")
        ok = ok and mined_identical["identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
