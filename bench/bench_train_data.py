"""Training data at scale: the streaming loader on corpora of N and 10·N pairs, against the in-RAM loader on N.

In: the real samples in ../shared/data (STS-benchmark train pairs, SNLI SentEval dev
entailment pairs, Kaggle Quora duplicates), the packaged all-MiniLM-L6-v2 (or --model).
Out: for each run (``stream`` on N, ``stream`` on 10·N, ``memory`` on N), each in a
fresh subprocess training the same number of steps with the same settings: peak RSS
(the kernel's high-water mark, from ``wait4``), training throughput (examples/s from
the end of step 1 to the end of the last step) and the process's CPU time (all
threads) per example over the same steps, the time from calling ``train_model`` to the
end of the first step, and what the shard check cost; then the ratios against the
targets. ``--rounds R`` runs the three R times in turn and reports medians. Nothing is
saved.

The corpora: three datasets (``stsb``, ``snli``, ``quora``), each the real pairs of
its sample cycled until it holds a third of the corpus; copy ``k >= 1`` of a pair has
`` #k`` appended to both texts, so copies are distinct rows (the no-duplicate rule
does not hold them back). Shards are written as ingest writes them (500,000 rows a
shard, row groups of 100,000, zstd), with a manifest.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train_data.py               # N = 600,000 pairs
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train_data.py --pairs 60000 --steps 10   # a smoke run
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train_data.py --recipe-steps 3           # and the 1B batch
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
TARGETS = {"rss_growth": 1.2, "throughput": 0.95}


def real_pairs() -> dict[str, list[tuple[str, str]]]:
    """The real pairs of each sample: STSb train (sentence1, sentence2), SNLI entailment, Quora duplicates."""
    stsb = []
    with open(SHARED / "stsb" / "sts-train.csv", encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                stsb.append((row[5], row[6]))
    senteval = SHARED / "snli" / "senteval"
    lines = [(senteval / name).read_text(encoding="utf-8").splitlines() for name in ("s1.dev", "s2.dev", "labels.dev")]
    snli = [(a.strip(), b.strip()) for a, b, label in zip(*lines) if label.strip() == "entailment"]
    with open(SHARED / "quora" / "kaggle_first10k" / "preprocess2500.csv", encoding="utf-8", newline="") as handle:
        quora = [(r["question1"], r["question2"]) for r in csv.DictReader(handle) if r["is_duplicate"] == "1"]
    return {"stsb": stsb, "snli": snli, "quora": quora}


def build_corpus(corpus_dir: Path, pairs: int) -> Path:
    """A corpus of ``pairs`` rows in three datasets (see the module docstring) and its data_config.json."""
    import pyarrow as pa

    from pipeline.corpus.files import config_hash
    from pipeline.corpus.manifest import Manifest
    from pipeline.corpus.schema import arrow_schema
    from pipeline.corpus.shards import ShardWriter
    from pipeline.sampling.data_config import write_data_config
    from pipeline.sampling.policies import WeightPolicy

    schema = arrow_schema(False)
    samples = real_pairs()
    block = 100_000
    for name, sample in samples.items():
        rows = pairs // len(samples)
        with ShardWriter(corpus_dir / name, schema) as writer:
            for start in range(0, rows, block):
                numbers = range(start, min(rows, start + block))
                suffix = [f" #{n // len(sample)}" if n >= len(sample) else "" for n in numbers]
                writer.write(
                    pa.table(
                        {
                            "anchor": [sample[n % len(sample)][0] + s for n, s in zip(numbers, suffix)],
                            "positive": [sample[n % len(sample)][1] + s for n, s in zip(numbers, suffix)],
                            "id": [str(n) for n in numbers],
                            "source_file": [name] * len(numbers),
                            "source_line": [n % len(sample) + 1 for n in numbers],
                        }
                    )
                )
        config = {"bench": name, "pairs": rows}
        Manifest(
            dataset=name, source="bench", stage="ingest", unit="pair", rows_read=rows, rows_kept=rows, rows_train=rows,
            rows_heldout=0, dropped={}, columns=schema.names, shards=[s.as_dict() for s in writer.shards], inputs=[],
            failures=[], quarantine={"path": None, "rows": 0}, config=config, config_hash=config_hash(config), versions={},
        ).write(corpus_dir / name)  # fmt: skip
    data_config = corpus_dir / "data_config.json"
    write_data_config(corpus_dir, data_config, WeightPolicy(kind="proportional"))
    return data_config


def loader_cost(corpus_dir: Path, data_config: Path, batch_size: int, batches: int = 2000) -> dict[str, float]:
    """The streaming loader alone, no model, in this process: CPU-s to read, hash and shuffle one
    window (of the first dataset), and ms per batch drawn (the first windows read before the clock)."""
    from pipeline.train.data import training_datasets
    from pipeline.train.stream import BatchStream

    datasets = training_datasets(corpus_dir, data_config)
    stream = BatchStream(datasets, [d.entry.weight for d in datasets], batch_size, read_threads=0)
    started = time.process_time()
    window = stream.readers[0].read_window(0, (0, 0, 0))
    window_cpu = time.process_time() - started
    for reader in stream.readers:
        reader.next_row()
    started = time.perf_counter()
    for _ in range(batches):
        stream.next_batch()
    per_batch = (time.perf_counter() - started) * 1000 / batches
    stream.close()
    return {"window_rows": len(window), "window_cpu_s": window_cpu, "batch_ms": per_batch}


def child(corpus_dir: Path, data_config: Path, loader: str, result: Path, args: argparse.Namespace) -> None:
    """One run, in this (fresh) process: train ``args.steps`` steps and write the figures to ``result``."""
    import sentence_transformers  # noqa: F401 - imported before the clock starts, as a warm process would have it
    import torch  # noqa: F401
    from transformers import TrainerCallback

    from pipeline.train.config import TrainConfig
    from pipeline.train.task import train_model

    ends: list[tuple[float, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append((time.perf_counter(), time.process_time()))

    config = TrainConfig(
        model=args.model, batch_size=args.batch_size, max_steps=args.steps, warmup_steps=0, save_steps=10 * args.steps,
        logging_steps=args.steps, loader=loader, seed=0, loss=args.loss, mini_batch_size=args.mini_batch_size,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        summary = train_model(corpus_dir, data_config, out, config, callbacks=[StepClock()])
    figures = {
        "first_step_s": summary["seconds_to_first_step"],
        "examples_per_s": (len(ends) - 1) * args.batch_size / (ends[-1][0] - ends[0][0]),
        # CPU time of the whole process (every thread: loader, hashing, torch) a trained example
        "cpu_ms_per_example": (ends[-1][1] - ends[0][1]) * 1000 / ((len(ends) - 1) * args.batch_size),
        "steps": summary["steps"],
        "verify": summary["verify_shards"],
    }
    result.write_text(json.dumps(figures))


def measure(
    corpus_dir: Path, data_config: Path, loader: str, args: argparse.Namespace, work: Path, **overrides: object
) -> dict:
    """Run :func:`child` in a subprocess (``overrides`` replace options); its figures plus its peak RSS (MiB) and wall seconds."""
    options = vars(args) | overrides
    label = f"{loader}-{corpus_dir.name}-{options['loss']}"
    result = work / f"result-{label}.json"
    command = [
        sys.executable, __file__, "--child", str(corpus_dir), str(data_config), loader, str(result),
        "--steps", str(options["steps"]), "--batch-size", str(options["batch_size"]), "--loss", options["loss"],
        "--mini-batch-size", str(options["mini_batch_size"]),
    ] + (["--model", args.model] if args.model else [])  # fmt: skip
    log = work / f"log-{label}.txt"
    started = time.perf_counter()
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{loader} on {corpus_dir.name} failed ({code}):\n{log.read_text()[-3000:]}")
    figures = json.loads(result.read_text())
    return figures | {"peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - started}


def _median(runs: list[dict]) -> dict:
    """The run of median throughput, with each figure replaced by its median over the runs."""
    import statistics

    middle = dict(sorted(runs, key=lambda r: r["examples_per_s"])[len(runs) // 2])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            middle[key] = statistics.median(r[key] for r in runs)
    return middle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600_000, help="pairs of the N corpus (the other has 10x)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", help="model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--rounds", type=int, default=1, help="run the three in turn this many times; report medians")
    parser.add_argument("--loss", default="mnrl", choices=("mnrl", "cached_mnrl"))
    parser.add_argument("--mini-batch-size", type=int, default=32, help="cached_mnrl's mini-batch")
    parser.add_argument("--recipe-steps", type=int, default=0, metavar="K",
                        help="also train K steps of the 1B recipe's batch (1024, cached MNRL, mini-batch 64) on N")
    parser.add_argument("--work-dir", type=Path, help="where the corpora go (default: a temporary folder, removed)")
    parser.add_argument("--child", nargs=4, metavar=("CORPUS", "CONFIG", "LOADER", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        corpus_dir, data_config, loader, result = args.child
        child(Path(corpus_dir), Path(data_config), loader, Path(result), args)
        return 0
    if not SHARED.is_dir():
        print(f"benchmark data not found: {SHARED}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        built = {}
        for label, pairs in (("N", args.pairs), ("10N", 10 * args.pairs)):
            started = time.perf_counter()
            built[label] = (work / f"corpus-{label}", build_corpus(work / f"corpus-{label}", pairs))
            size = sum(p.stat().st_size for p in built[label][0].rglob("*.parquet"))
            print(f"corpus {label}: {pairs:,} pairs, {size / 2**20:,.0f} MiB of shards, built in {time.perf_counter() - started:.0f} s")
        cost = loader_cost(*built["10N"], args.batch_size)
        rounds = [
            {
                "stream N": measure(*built["N"], "stream", args, work),
                "stream 10N": measure(*built["10N"], "stream", args, work),
                "memory N": measure(*built["N"], "memory", args, work),
            }
            for _ in range(args.rounds)
        ]
        runs = {name: _median([r[name] for r in rounds]) for name in rounds[0]}
        if args.recipe_steps:
            recipe = {"steps": args.recipe_steps, "batch_size": 1024, "loss": "cached_mnrl", "mini_batch_size": 64}
            runs["recipe N"] = measure(*built["N"], "stream", args, work, **recipe)
    print(
        f"stream loader alone, 10N: {cost['window_cpu_s']:.2f} CPU-s to read, hash and shuffle a window of"
        f" {cost['window_rows']:,} rows; {cost['batch_ms']:.2f} ms a batch of {args.batch_size} (no tokenizing)"
    )
    model = args.model or "all-MiniLM-L6-v2 (packaged)"
    print(f"\n{args.steps} steps of {args.batch_size}, model {model}, {args.rounds} round(s), load {os.getloadavg()[0]:.1f}")
    print(f"{'run':<12} {'peak RSS MiB':>12} {'examples/s':>11} {'CPU ms/ex':>10} {'first step s':>13} {'SHA-256 checked':>22}")
    for name, run in runs.items():
        v = run["verify"]
        checked = f"{v['verified']}/{v['shards']} in {v['hash_seconds']:.2f} s"
        print(
            f"{name:<12} {run['peak_rss_mib']:>12,.0f} {run['examples_per_s']:>11.1f} {run['cpu_ms_per_example']:>10.1f}"
            f" {run['first_step_s']:>13.2f} {checked:>22}"
        )
    growth = runs["stream 10N"]["peak_rss_mib"] / runs["stream N"]["peak_rss_mib"]
    speed = runs["stream N"]["examples_per_s"] / runs["memory N"]["examples_per_s"]
    speed_large = runs["stream 10N"]["examples_per_s"] / runs["memory N"]["examples_per_s"]
    first = runs["stream 10N"]["first_step_s"] / runs["stream N"]["first_step_s"]
    cpu = runs["memory N"]["cpu_ms_per_example"] / runs["stream N"]["cpu_ms_per_example"]
    if "recipe N" in runs:
        rate = runs["recipe N"]["examples_per_s"]
        print(f"1B recipe batch (1024, cached MNRL, mini-batch 64), {args.recipe_steps} steps: {rate:.1f} examples/s;"
              f" 100,000 steps at this rate: {100_000 * 1024 / rate / 3600:,.0f} hours")  # fmt: skip
    print(f"peak RSS, stream 10N / stream N: {growth:.3f} (target < {TARGETS['rss_growth']}: {'met' if growth < TARGETS['rss_growth'] else 'MISSED'})")
    print(f"throughput, stream N / memory N: {speed:.3f} (target >= {TARGETS['throughput']}: {'met' if speed >= TARGETS['throughput'] else 'MISSED'});"
          f" stream 10N / memory N: {speed_large:.3f}; CPU per example, memory N / stream N: {cpu:.3f}")  # fmt: skip
    print(f"time to first step, stream 10N / stream N: {first:.2f} ({runs['stream 10N']['first_step_s']:.2f} s vs"
          f" {runs['stream N']['first_step_s']:.2f} s; memory N: {runs['memory N']['first_step_s']:.2f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
