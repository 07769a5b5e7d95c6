"""Benchmark: pairforge's miner against sentence-transformers' ``mine_hard_negatives``.

In: the real samples in ../shared/data (SNLI entailment pairs, Quora duplicates,
plus Quora non-duplicate questions and STSb sentences as a larger corpus). Out:
printed wall times, peak memory and ratios for a cold and a warm (rebuild) run of
each side, the share of identical chosen negatives, the encoder's own rate, and
optionally a scale run of the on-disk IVF path over synthetic unit vectors.

Each measured run is a separate subprocess (``--child``), so peak memory
(``ru_maxrss``) and wall time include imports and model loading, as a user sees them:
wall time runs from the process' start to its output written ("process s" adds the
bench's own reading of the output, to compare the choices, and the exit).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_mining.py            # comparison
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_mining.py --scale 1000000   # + 1M IVF
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

SETTINGS = {"num_negatives": 3, "relative_margin": 0.05, "sampling_strategy": "top"}
BATCH_SIZE = 64


def load_pairs_and_corpus(corpus_limit: int, pairs_limit: int) -> tuple[list[tuple[str, str]], list[str]]:
    """SNLI entailment and Quora duplicate pairs; Quora non-duplicates and STSb as extra corpus."""
    pairs: list[tuple[str, str]] = []
    with open(SHARED / "snli/jsonl/snli_1.0_dev.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["gold_label"] == "entailment":
                pairs.append((row["sentence1"], row["sentence2"]))
    senteval = SHARED / "snli/senteval"
    s1 = (senteval / "s1.dev").read_text(encoding="utf-8").splitlines()
    s2 = (senteval / "s2.dev").read_text(encoding="utf-8").splitlines()
    labels = (senteval / "labels.dev").read_text(encoding="utf-8").splitlines()
    pairs += [(a.strip(), b.strip()) for a, b, label in zip(s1, s2, labels) if label.strip() == "entailment"]
    corpus: list[str] = []
    with open(SHARED / "quora/kaggle_first10k/preprocess2500.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            q1, q2 = row["question1"].strip(), row["question2"].strip()
            if not q1 or not q2:
                continue
            if row["is_duplicate"] == "1":
                pairs.append((q1, q2))
            else:
                corpus += [q1, q2]
    for name in ("sts-train.csv", "sts-dev.csv"):
        for line in (SHARED / "stsb" / name).read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            if len(fields) >= 7:
                corpus += [fields[5].strip(), fields[6].strip()]
    corpus = list(dict.fromkeys(t for t in corpus if t))[:corpus_limit]
    # an even spread over the sources when limited
    step = max(1, len(pairs) // pairs_limit) if pairs_limit else 1
    return pairs[::step][: pairs_limit or None], corpus


def write_inputs(work: Path, pairs: list[tuple[str, str]], corpus: list[str]) -> tuple[Path, Path]:
    """A dataset folder of the pairs and a corpus shard, as ingest would write them."""
    import polars as pl

    from pipeline.corpus.files import atomic_write_json, config_hash
    from pipeline.corpus.schema import arrow_schema
    from pipeline.corpus.shards import ShardWriter

    dataset = work / "pairs"
    frame = pl.DataFrame(
        {
            "anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs],
            "id": [f"p{i}" for i in range(len(pairs))], "source_file": ["bench"] * len(pairs),
            "source_line": list(range(1, len(pairs) + 1)),
        }
    )
    with ShardWriter(dataset, arrow_schema(False)) as writer:
        writer.write(frame)
    config = {"bench": True}
    atomic_write_json(
        dataset / "manifest.json",
        {"dataset": "pairs", "source": "bench", "stage": "ingest", "shards": [s.as_dict() for s in writer.shards],
         "config": config, "config_hash": config_hash(config)},
    )
    corpus_file = work / "corpus.parquet"
    pl.DataFrame({"text": corpus}).write_parquet(corpus_file)
    return dataset, corpus_file


# --- children ------------------------------------------------------------------------


def child_ours(work: Path, out: Path, cache: Path, result: Path) -> None:
    from pipeline.mining.config import MiningConfig
    from pipeline.mining.job import mine_negatives

    started = time.perf_counter()
    config = MiningConfig(index="flat", batch_size=BATCH_SIZE, extra_corpus=(str(work / "corpus.parquet"),), **SETTINGS)
    # plot=False: sentence-transformers draws no histograms either (the plot costs about a second of matplotlib)
    manifest = mine_negatives(work / "pairs", out, config, cache_dir=cache, device="cpu", echo=None, plot=False)
    elapsed = time.perf_counter() - started
    output_written = time.time()
    import polars as pl

    rows = pl.concat([pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
    chosen = {}
    for a, p, n in zip(rows["anchor"], rows["positive"], rows["negative"]):
        chosen.setdefault(f"{a}\t{p}", []).append(n)
    heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
    result.write_text(json.dumps({"call_s": elapsed, "chosen": chosen, "counts": manifest["embedding_counts"],
                                  "output_written": output_written,
                                  "encoder": manifest["mining"]["encoder"], "heavy_imports": heavy,
                                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_st(work: Path, cache: Path | None, result: Path) -> None:
    import polars as pl
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from pipeline.embed.models import default_model_path

    started = time.perf_counter()
    pairs = pl.read_parquet(next((work / "pairs").glob("part-*.parquet")))
    corpus = pl.read_parquet(work / "corpus.parquet")["text"].to_list()
    model = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    dataset = Dataset.from_dict({"anchor": pairs["anchor"].to_list(), "positive": pairs["positive"].to_list()})
    mined = mine_hard_negatives(
        dataset, model, corpus=corpus, batch_size=BATCH_SIZE, use_faiss=True, verbose=False,
        cache_folder=str(cache) if cache else None, output_format="triplet", **SETTINGS,
    )
    elapsed = time.perf_counter() - started
    output_written = time.time()
    chosen = {}
    for row in mined:
        chosen.setdefault(f"{row['anchor']}\t{row['positive']}", []).append(row["negative"])
    result.write_text(json.dumps({"call_s": elapsed, "chosen": chosen, "output_written": output_written,
                                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_encoder_rate(work: Path, result: Path, backend: str) -> None:
    """Texts/s of one encoder on the first 1,000 corpus texts, the same length-sorted
    batches for both: sentence-transformers (torch) or pairforge's numpy encoder."""
    import numpy as np
    import polars as pl

    from pipeline.embed.encoders import encode_in_batches, load_text_encoder, plan_encoding, resolve_encoder, token_lengths
    from pipeline.embed.models import default_model_path, load_encoder

    texts = pl.read_parquet(work / "corpus.parquet")["text"].to_list()[:1000]
    path = default_model_path()
    model = load_encoder(None, device="cpu") if backend == "torch" else load_text_encoder(path, resolve_encoder(path, "cpu", "numpy"))
    if backend == "torch":
        model.backend = "torch"
    order, offsets = plan_encoding(token_lengths(path, "numpy", None, texts), BATCH_SIZE)
    batches = [[texts[i] for i in order[a:b]] for a, b in pairwise(offsets)]
    list(encode_in_batches(model, batches[-2:]))  # warm-up
    started = time.perf_counter()
    vectors = np.concatenate(list(encode_in_batches(model, batches)))
    elapsed = time.perf_counter() - started
    np.save(work / f"rate-{backend}.npy", vectors)
    result.write_text(json.dumps({"texts_per_s": len(texts) / elapsed, "texts": len(texts),
                                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_scale(n: int, dim: int, work: Path, result: Path, nprobe: int) -> None:
    """Build the on-disk IVF over ``n`` synthetic unit vectors; recall@10 against exact search."""
    import numpy as np

    from pipeline.embed.index import IndexConfig, build_ivf_index, search_flat

    class _Bar:
        def update(self, _n: int) -> None:
            pass

    rng = np.random.default_rng(0)
    # Clustered unit vectors (a mixture around 4096 random directions): sentence
    # embeddings are clustered, uniform random vectors have no neighbours to find.
    centers = rng.normal(size=(4096, dim)).astype(np.float32)
    vectors = np.lib.format.open_memmap(work / "scale.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    t0 = time.perf_counter()
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centers[rng.integers(0, len(centers), m)] + rng.normal(scale=0.08, size=(m, dim)).astype(np.float32)
        vectors[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    vectors.flush()
    del vectors
    vectors = np.load(work / "scale.npy", mmap_mode="r")
    generate_s = time.perf_counter() - t0
    corpus_rows = np.arange(n)
    config = IndexConfig(index="ivf", nprobe=nprobe, seed=0)
    index_dir = work / "scale-index"
    index_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    index = build_ivf_index(vectors, corpus_rows, config, index_dir)
    build_s = time.perf_counter() - t0
    query_rows = np.sort(rng.choice(n, size=10_000, replace=False))
    queries = np.ascontiguousarray(vectors[query_rows])
    t0 = time.perf_counter()
    _, ivf_ids = index.search(queries, 10)
    search_s = time.perf_counter() - t0
    sample = np.arange(0, 10_000, 10)  # 1,000 queries for the exact reference
    t0 = time.perf_counter()
    _, exact_ids = search_flat(vectors, corpus_rows, query_rows[sample], 10, _Bar())
    exact_s = time.perf_counter() - t0
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ivf_ids[sample].tolist(), exact_ids.tolist())]))
    disk_mb = sum(p.stat().st_size for p in index_dir.iterdir()) / 2**20
    result.write_text(json.dumps({
        "n": n, "dim": dim, "nlist": int(index.nlist), "nprobe": int(index.nprobe), "generate_s": generate_s,
        "build_s": build_s, "search_10k_s": search_s, "exact_1k_s": exact_s, "recall_at_10": recall,
        "index_disk_mb": disk_mb, "vectors_disk_mb": n * dim * 4 / 2**20,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


# --- parent --------------------------------------------------------------------------


def run_child(*args: str) -> tuple[dict, float]:
    """Run this script as a child; its result JSON and its wall time, from the process'
    start to its output written (the bench's own reading of the output afterwards, to
    compare the choices, is left out on both sides)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result = Path(handle.name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started, started_epoch = time.perf_counter(), time.time()
    subprocess.run([sys.executable, __file__, "--child", *args, "--result", str(result)], check=True, env=env)
    wall = time.perf_counter() - started
    data = json.loads(result.read_text())
    if "output_written" in data:
        data["process_s"] = wall
        wall = data["output_written"] - started_epoch
    result.unlink()
    return data, wall


def agreement(ours: dict[str, list[str]], theirs: dict[str, list[str]]) -> float:
    """Share of sentence-transformers' chosen negatives that we chose for the same pair."""
    total = same = 0
    for key, negatives in theirs.items():
        mine = set(ours.get(key, []))
        total += len(negatives)
        same += sum(1 for n in negatives if n in mine)
    return same / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-limit", type=int, default=6_000, help="extra corpus texts (Quora + STSb)")
    parser.add_argument("--pairs-limit", type=int, default=3_000, help="pairs mined (0: all 7,473)")
    parser.add_argument("--scale", type=int, default=0, help="also build an on-disk IVF over this many vectors (e.g. 1000000)")
    parser.add_argument("--scale-only", action="store_true")
    parser.add_argument("--nprobe", type=int, default=64)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "ours":
        return child_ours(args.work, args.out, args.cache, args.result)
    if args.child == "st":
        return child_st(args.work, args.cache, args.result)
    if args.child in ("rate-torch", "rate-numpy"):
        return child_encoder_rate(args.work, args.result, args.child.split("-")[1])
    if args.child == "scale":
        return child_scale(args.scale, 384, args.work, args.result, args.nprobe)

    with tempfile.TemporaryDirectory(prefix="bench-mining-") as tmp:
        work = Path(tmp)
        if not args.scale_only:
            pairs, corpus = load_pairs_and_corpus(args.corpus_limit, args.pairs_limit)
            write_inputs(work, pairs, corpus)
            distinct = len({a for a, _ in pairs} | {p for _, p in pairs} | set(corpus))
            print(f"data: {len(pairs):,} pairs (SNLI entailment + Quora duplicates), extra corpus {len(corpus):,} texts,"
                  f" {distinct:,} distinct texts; settings {SETTINGS}, batch size {BATCH_SIZE}, exact index both sides")
            import numpy as np

            rates = {b: run_child(f"rate-{b}", "--work", str(work))[0] for b in ("torch", "numpy")}
            cosine = float(np.min(np.sum(np.load(work / "rate-torch.npy") * np.load(work / "rate-numpy.npy"), axis=1)))
            print(f"encoder alone (all-MiniLM-L6-v2, cpu, {rates['torch']['texts']:,} texts, same batches):"
                  f" sentence-transformers/torch {rates['torch']['texts_per_s']:,.0f} texts/s"
                  f" (peak {rates['torch']['maxrss_mb']:,.0f} MiB), numpy {rates['numpy']['texts_per_s']:,.0f} texts/s"
                  f" (peak {rates['numpy']['maxrss_mb']:,.0f} MiB); lowest cosine between them {cosine:.7f}")
            st_cold, st_cold_wall = run_child("st", "--work", str(work), "--cache", str(work / "st-cache"))
            st_warm, st_warm_wall = run_child("st", "--work", str(work), "--cache", str(work / "st-cache"))
            ours_cold, ours_cold_wall = run_child("ours", "--work", str(work), "--out", str(work / "o1"), "--cache", str(work / "cache"))
            ours_warm, ours_warm_wall = run_child("ours", "--work", str(work), "--out", str(work / "o2"), "--cache", str(work / "cache"))
            assert ours_warm["counts"]["encoded"] == 0, ours_warm["counts"]
            print(f"pairforge encoder: {ours_cold['encoder']}; modules imported by the warm run among torch,"
                  f" transformers, sentence_transformers: {ours_warm['heavy_imports'] or 'none'}")
            print(f"{'run':<28}{'wall s':>9}{'call s':>9}{'process s':>11}{'peak MiB':>10}")
            for name, res, wall in (
                ("sentence-transformers cold", st_cold, st_cold_wall), ("sentence-transformers warm", st_warm, st_warm_wall),
                ("pairforge cold", ours_cold, ours_cold_wall), ("pairforge warm", ours_warm, ours_warm_wall),
            ):
                print(f"{name:<28}{wall:>9.2f}{res['call_s']:>9.2f}{res['process_s']:>11.2f}{res['maxrss_mb']:>10.0f}")
            print(f"speed-up cold (wall): {st_cold_wall / ours_cold_wall:.2f}x   (need >= 1.5)")
            print(f"speed-up warm (wall): {st_warm_wall / ours_warm_wall:.2f}x   (need >= 10)")
            print(f"peak memory ratio cold: {ours_cold['maxrss_mb'] / st_cold['maxrss_mb']:.2f}   (need <= 0.5)")
            print(f"peak memory ratio warm: {ours_warm['maxrss_mb'] / st_warm['maxrss_mb']:.2f}")
            print(f"same chosen negatives (exact index, top): {agreement(ours_cold['chosen'], st_cold['chosen']):.1%}"
                  f"   (need >= 95%); negatives chosen: ours {sum(map(len, ours_cold['chosen'].values())):,},"
                  f" st {sum(map(len, st_cold['chosen'].values())):,}")
        if args.scale:
            scale, scale_wall = run_child("scale", "--work", str(work), "--scale", str(args.scale), "--nprobe", str(args.nprobe))
            print(
                f"scale: {scale['n']:,} x {scale['dim']} vectors ({scale['vectors_disk_mb']:,.0f} MiB on disk), IVF nlist"
                f" {scale['nlist']} nprobe {scale['nprobe']}: build {scale['build_s']:.1f}s, 10k queries {scale['search_10k_s']:.1f}s,"
                f" recall@10 vs exact {scale['recall_at_10']:.3f} (1k queries, exact took {scale['exact_1k_s']:.1f}s),"
                f" peak RSS {scale['maxrss_mb']:,.0f} MiB, index on disk {scale['index_disk_mb']:,.0f} MiB, wall {scale_wall:.0f}s"
            )


if __name__ == "__main__":
    main()
