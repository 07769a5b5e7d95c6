"""Training throughput: our weighted batch sampler against sentence-transformers' stock one.

In: the real STS-benchmark sample (../shared/data/stsb/sts-train.csv), split by genre
into three datasets of a small corpus, the packaged all-MiniLM-L6-v2 (or --model).
Out: examples per second of the same training run (same model, data, batch size,
steps, seed) with ``WeightedBatchSampler`` and with the stock
``MultiDatasetBatchSamplers.PROPORTIONAL`` + ``BatchSamplers.NO_DUPLICATES``, and their
ratio (ours / stock; 1.0 = as fast). Nothing is saved.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sampler.py --steps 30 --batch-size 32
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STSB = ROOT.parent / "shared" / "data" / "stsb" / "sts-train.csv"


def build_corpus(corpus_dir: Path) -> Path:
    """Three dataset folders (one per STSb genre) of (sentence1, sentence2) pairs, and a data_config.json."""
    import pyarrow as pa

    from pipeline.corpus.files import atomic_write_json
    from pipeline.corpus.schema import arrow_schema
    from pipeline.corpus.shards import ShardWriter
    from pipeline.sampling.data_config import write_data_config
    from pipeline.sampling.policies import WeightPolicy

    by_genre: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with open(STSB, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                by_genre[row[0]].append((row[5], row[6]))
    schema = arrow_schema(False)
    for genre, pairs in sorted(by_genre.items()):
        folder = corpus_dir / f"stsb/{genre}"
        with ShardWriter(folder, schema) as writer:
            writer.write(
                pa.table(
                    {
                        "anchor": [a for a, _ in pairs],
                        "positive": [p for _, p in pairs],
                        "id": [str(i) for i in range(len(pairs))],
                        "source_file": ["sts-train.csv"] * len(pairs),
                        "source_line": list(range(1, len(pairs) + 1)),
                    }
                )
            )
        atomic_write_json(
            folder / "manifest.json",
            {"dataset": f"stsb/{genre}", "rows_read": len(pairs), "rows_kept": len(pairs), "rows_train": len(pairs),
             "rows_heldout": 0, "dropped": {}, "columns": schema.names,
             "shards": [s.as_dict() for s in writer.shards], "config_hash": None},
        )  # fmt: skip
    config = corpus_dir / "data_config.json"
    write_data_config(corpus_dir, config, WeightPolicy(kind="proportional"))
    return config


def run(corpus_dir: Path, config: Path, sampler: str, steps: int, batch_size: int, model: str | None) -> float:
    """Train ``steps`` steps with ``sampler`` (``weighted`` or ``stock``); return examples per second."""
    import torch
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers, MultiDatasetBatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from pipeline.sampling.batch_sampler import WeightedSamplerFactory
    from pipeline.train.config import TrainConfig
    from pipeline.train.data import load_training_data
    from pipeline.train.task import build_model

    torch.manual_seed(0)
    data = load_training_data(corpus_dir, config)
    train_config = TrainConfig(model=model, batch_size=batch_size)
    st_model = build_model(train_config)
    dataset = DatasetDict({e.name: Dataset(InMemoryTable(t)) for e, t in zip(data.entries, data.tables)})
    if sampler == "weighted":
        extra = {"multi_dataset_batch_sampler": WeightedSamplerFactory([e.weight for e in data.entries])}
    else:
        extra = {
            "multi_dataset_batch_sampler": MultiDatasetBatchSamplers.PROPORTIONAL,
            "batch_sampler": BatchSamplers.NO_DUPLICATES,
        }
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=2e-5,
            warmup_steps=0, save_strategy="no", logging_steps=steps, report_to="none", seed=0,
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True, **extra,
        )  # fmt: skip
        trainer = SentenceTransformerTrainer(
            model=st_model, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(st_model)
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return steps * batch_size / seconds


def sampler_overhead(corpus_dir: Path, config: Path, batch_size: int) -> dict[str, float]:
    """Milliseconds per batch to build each sampler and draw one epoch of batches, no model."""
    import torch
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler, ProportionalBatchSampler
    from torch.utils.data import ConcatDataset

    from pipeline.sampling.batch_sampler import WeightedSamplerFactory
    from pipeline.train.data import load_training_data

    data = load_training_data(corpus_dir, config)
    datasets = [Dataset(InMemoryTable(t)) for t in data.tables]
    concat = ConcatDataset(datasets)
    result = {}
    for name in ("weighted", "stock"):
        generator = torch.Generator()
        started = time.perf_counter()
        children = [NoDuplicatesBatchSampler(d, batch_size, False, generator=generator, seed=0) for d in datasets]
        if name == "weighted":
            sampler = WeightedSamplerFactory([e.weight for e in data.entries])(concat, children, generator, 0)
        else:
            sampler = ProportionalBatchSampler(concat, children, generator, 0)
        batches = sum(1 for _ in sampler)
        result[name] = (time.perf_counter() - started) * 1000 / batches
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", help="model folder (default: the packaged all-MiniLM-L6-v2)")
    args = parser.parse_args()
    if not STSB.is_file():
        print(f"benchmark data not found: {STSB}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        corpus_dir = Path(tmp) / "corpus"
        config = build_corpus(corpus_dir)
        overhead = sampler_overhead(corpus_dir, config, args.batch_size)
        run(corpus_dir, config, "stock", 3, args.batch_size, args.model)  # warm caches, untimed
        ours = run(corpus_dir, config, "weighted", args.steps, args.batch_size, args.model)
        stock = run(corpus_dir, config, "stock", args.steps, args.batch_size, args.model)
    print(f"sampler alone, ms per batch: ours {overhead['weighted']:.2f}, stock {overhead['stock']:.2f}")
    print(f"weighted sampler (ours): {ours:8.1f} examples/s")
    print(f"stock proportional:      {stock:8.1f} examples/s")
    print(f"ratio ours/stock: {ours / stock:.3f} ({'within' if abs(ours / stock - 1) <= 0.05 else 'outside'} 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
