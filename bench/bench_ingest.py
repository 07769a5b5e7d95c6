"""Ingest benchmark: ``pairforge ingest`` against a bare polars pass and the ``datasets`` path.

In: one real SNLI sample file (``../shared/data/snli/jsonl/snli_1.0_dev.jsonl`` by
default). Out: a table on stdout of seconds, input lines per second and peak memory for
each contender, the three ratios the project targets, and whether each is met.

The input is GENERATED: the sample's lines are repeated until the wanted line count
is reached, and copy ``k`` (k >= 1) of a line gets `` [k]`` appended to its
``sentence1`` and ``sentence2`` and ``-k`` to its ``pairID``, so every row stays in
the real on-disk format (all fields, parse trees, ~1 KB a line) while the copies are
distinct pairs that dedup must keep and the premises stay as many as the rows. The
generated files live under ``--work-dir`` and are never committed.

Contenders, each in its own subprocess (wall time, and peak RSS from ``wait4`` and a
psutil poll of the process tree, whichever is higher), on the same file:

* ``pairforge``: ``pairforge ingest nli FILE --out DIR --quiet --datasets nli-pairs``:
  the same rows as the other two (entailment pairs), plus cleaning, length filters,
  dedup, the held-out split, quarantine and manifests; the speed ratios use this run;
* ``pairforge-all``: the same command without ``--datasets``: nli-pairs AND
  nli-triplets (a join of every premise to its first contradiction), shown beside the
  others for what the full source costs (no contender writes triplets, so no ratio);
* ``polars`` (the floor): ``scan_ndjson`` of sentence1, sentence2 and gold_label,
  keep entailment, ``sink_parquet`` zstd;
* ``datasets`` (what a user would write): ``load_dataset("json")`` with a private
  cache, a batched ``filter`` on gold_label, ``to_parquet``.

Memory growth: both pairforge runs again on a tenth of the lines; the ratio of each
one's peaks is the growth when the input grows 10x (the target holds for both).

Usage::

    .venv/bin/python bench/bench_ingest.py                 # 2,000,000 lines (~2 GB)
    .venv/bin/python bench/bench_ingest.py --quick         # 200,000 lines, a smoke run
    .venv/bin/python bench/bench_ingest.py --lines 5000000 --work-dir /data/bench
    .venv/bin/python bench/bench_ingest.py --rounds 5 --skip pairforge-all datasets  # paired medians

Each contender starts after an ``os.sync()`` (the previous one's files must not be
written back while it runs). ``--rounds N`` runs them N times, in turn, and reports
medians: on a shared machine whose speed drifts, that pairs the runs up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from measuring import Measurement, median_run, run_measured

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "snli" / "jsonl" / "snli_1.0_dev.jsonl"
DEFAULT_LINES = 2_000_000
QUICK_LINES = 200_000
MEMORY_GROWTH_FACTOR = 10
# The project's targets: speed relative to the floor and to the datasets path, and
# how much peak memory may grow when the input grows MEMORY_GROWTH_FACTOR times.
TARGET_VS_POLARS = 0.5
TARGET_VS_DATASETS = 3.0
TARGET_MEMORY_GROWTH = 1.5
_VARIED_FIELDS = ("sentence1", "sentence2", "pairID")


# --- the generated input ----------------------------------------------------------
def _line_template(line: str) -> tuple[list[str], list[str]]:
    """Split a JSON line around the values' ends of the varied fields.

    Returns the pieces of the line and, for each gap between two pieces, the field
    whose suffix goes there (in the order the fields appear in the line). The rest of
    the line keeps its exact bytes.
    """
    record = json.loads(line)
    markers = {name: f"\u0000{index}\u0000" for index, name in enumerate(_VARIED_FIELDS)}
    for name, marker in markers.items():
        if not isinstance(record.get(name), str):
            raise ValueError(f"sample line lacks a string {name!r}: {line[:120]!r}")
        record[name] = record[name] + marker
    # The sample was written by Python's json with its default separators and ASCII
    # escapes: dumping it the same way gives back each line byte for byte.
    text = json.dumps(record)
    escaped = {name: json.dumps(marker)[1:-1] for name, marker in markers.items()}
    fields = sorted(_VARIED_FIELDS, key=lambda name: text.index(escaped[name]))
    pieces = [text]
    for name in fields:
        head, tail = pieces[-1].split(escaped[name])
        pieces[-1:] = [head, tail]
    return pieces, fields


def build_input(sample: Path, lines: int, out: Path) -> Path:
    """Write ``lines`` lines made from ``sample`` to ``out`` (reused if already complete).

    Copy 0 is the sample as it is; copy k >= 1 appends `` [k]`` to sentence1 and
    sentence2 and ``-k`` to pairID.
    """
    if out.exists() and _count_lines(out) == lines:
        return out
    originals = [raw for raw in sample.read_text(encoding="utf-8").splitlines() if raw.strip()]
    templates = [_line_template(raw) for raw in originals]
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    copy = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        while written < lines:
            suffix = dict.fromkeys(_VARIED_FIELDS, "") if copy == 0 else {
                "sentence1": f" [{copy}]", "sentence2": f" [{copy}]", "pairID": f"-{copy}"
            }
            block = []
            for pieces, fields in templates[: lines - written]:
                parts = [pieces[0]]
                for name, piece in zip(fields, pieces[1:]):
                    parts.append(suffix[name])
                    parts.append(piece)
                parts.append("\n")
                block.append("".join(parts))
            handle.write("".join(block))
            written += len(block)
            copy += 1
    os.replace(tmp, out)
    return out


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            count += chunk.count(b"\n")
    return count


# --- the contenders (each runs as `bench_ingest.py --worker NAME IN OUT`) --------------
def run_polars(input_path: Path, out_dir: Path) -> int:
    """The floor: read the three fields, keep entailment pairs, write zstd Parquet."""
    import polars as pl

    out_dir.mkdir(parents=True, exist_ok=True)
    schema = {"sentence1": pl.String, "sentence2": pl.String, "gold_label": pl.String}
    (
        pl.scan_ndjson(input_path, schema=schema)
        .filter(pl.col("gold_label") == "entailment")
        .select("sentence1", "sentence2")
        .sink_parquet(out_dir / "pairs.parquet", compression="zstd")
    )
    return pl.scan_parquet(out_dir / "pairs.parquet").select(pl.len()).collect().item()


def run_datasets(input_path: Path, out_dir: Path) -> int:
    """The user's path: load_dataset("json") -> filter entailment -> to_parquet."""
    import datasets

    datasets.disable_progress_bars()
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = datasets.load_dataset(
        "json", data_files=str(input_path), split="train", cache_dir=str(out_dir / "hf-cache")
    )
    pairs = dataset.filter(
        lambda labels: [label == "entailment" for label in labels], batched=True, input_columns=["gold_label"]
    ).select_columns(["sentence1", "sentence2"])
    pairs.to_parquet(str(out_dir / "pairs.parquet"))
    return pairs.num_rows


def pairforge_command(input_path: Path, out_dir: Path, every_dataset: bool = False) -> list[str]:
    """``pairforge ingest nli`` through its console script (run directly, not via a worker):
    nli-pairs only (the rows the other contenders write), or every dataset of the source."""
    script = Path(sys.executable).with_name("pairforge")
    command = [str(script), "ingest", "nli", str(input_path), "--out", str(out_dir), "--quiet"]
    return command if every_dataset else command + ["--datasets", "nli-pairs"]


WORKERS = {"polars": run_polars, "datasets": run_datasets}


# --- measuring ---------------------------------------------------------------------
def measure(contender: str, input_path: Path, lines: int, out_dir: Path, env: dict[str, str]) -> Measurement:
    """Run one contender in a fresh subprocess (:func:`measuring.run_measured`): its wall
    time, CPU time, peak RSS and the rows it wrote."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if contender.startswith("pairforge"):
        command = pairforge_command(input_path, out_dir, every_dataset=contender == "pairforge-all")
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", contender, str(input_path), str(out_dir)]
    measured, output = run_measured(contender, command, lines, env)
    if contender.startswith("pairforge"):
        manifests = sorted(out_dir.glob("*/manifest.json"))
        rows_out = sum(json.loads(m.read_text())["rows_kept"] for m in manifests)
    else:
        rows_out = json.loads(output.strip().splitlines()[-1])["rows_out"]
    shutil.rmtree(out_dir, ignore_errors=True)
    return dataclasses.replace(measured, rows_out=rows_out)


def _worker_main(contender: str, input_path: Path, out_dir: Path) -> None:
    print(json.dumps({"rows_out": WORKERS[contender](input_path, out_dir)}))


# --- the report --------------------------------------------------------------------
def report(results: list[Measurement], small_runs: list[Measurement]) -> tuple[str, bool]:
    """The table, the ratios and the verdicts; True when every target is met."""
    by_name = {m.contender: m for m in results}
    lines = [
        f"{'contender':<14} {'lines':>11} {'seconds':>9} {'cpu s':>7} {'lines/s':>11} {'peak MiB':>9} {'rows out':>10}"
    ]
    lines.append("-" * len(lines[0]))
    for m in results + small_runs:
        lines.append(
            f"{m.contender:<14} {m.lines:>11,} {m.seconds:>9.1f} {m.cpu_seconds:>7.1f} {m.lines_per_second:>11,.0f}"
            f" {m.peak_mib:>9.0f} {m.rows_out:>10,}"
        )
    checks = []
    pf = by_name["pairforge"]
    if "polars" in by_name:
        ratio = by_name["polars"].seconds / pf.seconds
        checks.append((f"pairforge speed / polars speed   = {ratio:.2f}x", ratio >= TARGET_VS_POLARS, f">= {TARGET_VS_POLARS}x"))
    if "datasets" in by_name:
        ratio = by_name["datasets"].seconds / pf.seconds
        checks.append((f"pairforge speed / datasets speed = {ratio:.2f}x", ratio >= TARGET_VS_DATASETS, f">= {TARGET_VS_DATASETS}x"))
    for small in small_runs:
        big = by_name[small.contender]
        growth = big.peak_mib / small.peak_mib
        checks.append(
            (
                f"{small.contender} peak memory, {big.lines:,} / {small.lines:,} lines = {growth:.2f}x",
                growth < TARGET_MEMORY_GROWTH,
                f"< {TARGET_MEMORY_GROWTH}x",
            )
        )
    lines.append("")
    for text, met, target in checks:
        lines.append(f"{text:<62} target {target:<7} {'MET' if met else 'MISSED'}")
    if "pairforge-all" in by_name and "polars" in by_name:
        ratio = by_name["polars"].seconds / by_name["pairforge-all"].seconds
        lines.append(f"(pairforge-all, both datasets, against the pairs-only floor: {ratio:.2f}x; no target)")
    return "\n".join(lines), all(met for _, met, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=DEFAULT_LINES, help=f"input lines (default {DEFAULT_LINES:,})")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run on {QUICK_LINES:,} lines")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="the real JSON-lines sample to repeat")
    parser.add_argument("--work-dir", type=Path, help="where inputs and outputs go (default: a temporary folder)")
    parser.add_argument("--keep-inputs", action="store_true", help="keep the generated inputs in --work-dir")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pairforge-all", "polars", "datasets"], help="contenders to leave out")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run the contenders this many times, one after the other in each round, and report the medians"
        " (this machine's speed drifts between runs; rounds pair them up)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--worker", nargs=3, metavar=("CONTENDER", "INPUT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))
        return 0

    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    lines = QUICK_LINES if args.quick else args.lines
    small_lines = lines // MEMORY_GROWTH_FACTOR
    if not args.sample.is_file():
        parser.error(f"sample not found: {args.sample}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="pairforge-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        print(f"building inputs from {args.sample} in {work} ...", flush=True)
        t0 = time.perf_counter()
        big = build_input(args.sample, lines, work / f"snli-{lines}.jsonl")
        small = build_input(args.sample, small_lines, work / f"snli-{small_lines}.jsonl")
        print(
            f"  {lines:,} lines ({big.stat().st_size / 2**30:.2f} GiB) and {small_lines:,} lines, generated in"
            f" {time.perf_counter() - t0:.0f} s: the sample's lines repeated, copy k with ' [k]' appended to"
            f" sentence1 and sentence2 and '-k' to pairID",
            flush=True,
        )
        _count_lines(big)  # read once so every contender finds it in the page cache
        runs: dict[str, list[Measurement]] = {}
        for round_ in range(args.rounds):
            for contender in ["pairforge", "pairforge-all", "polars", "datasets"]:
                if contender in args.skip:
                    continue
                label = f" (round {round_ + 1} of {args.rounds})" if args.rounds > 1 else ""
                print(f"running {contender} on {lines:,} lines{label} ...", flush=True)
                runs.setdefault(contender, []).append(measure(contender, big, lines, work / f"out-{contender}", env))
        results = [median_run(measurements) for measurements in runs.values()]
        if args.rounds > 1:
            for name, measurements in runs.items():
                print(f"  {name}: {' '.join(f'{m.seconds:.2f}' for m in measurements)} s")
        small_runs = []
        for contender in ["pairforge", "pairforge-all"]:
            if contender not in args.skip:
                print(f"running {contender} on {small_lines:,} lines ...", flush=True)
                small_runs.append(measure(contender, small, small_lines, work / f"out-{contender}-small", env))
    finally:
        if not args.keep_inputs:
            for name in ("snli-*.jsonl", ".snli-*.tmp"):
                for path in work.glob(name):
                    path.unlink()
            if args.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
    table, all_met = report(results, small_runs)
    print()
    print(table)
    return 1 if args.strict and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
