"""Helpers shared by the tests: where things are, and small corpora written the way the stages write them.

In: nothing. Out: the project's paths (:data:`ROOT`, :data:`TEST_DATA`, :data:`EXAMPLES`,
:data:`SHARED_DATA`), :func:`build_tiny_model` (a tiny random BERT sentence-transformer),
:func:`write_dataset` (a dataset folder with shards and a manifest, as ingest writes
one) and :func:`write_pairs` (the same from ``{anchor, positive}`` rows), :func:`tree_hashes` (the bytes of every file under a folder),
:func:`load_jsonl` and :class:`LockHolder` (another process holding an output folder's writer lock).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT / "tests" / "data"
EXAMPLES = ROOT / "examples"
SHARED_DATA = ROOT.parent / "shared" / "data"


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random BERT sentence-transformer (mean pooling, normalized) to ``folder``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from pipeline.embed.models import default_model_path

    torch.manual_seed(seed)
    vocab = default_model_path() / "vocab.txt"
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)  # transformers 5: `vocab`, not `vocab_file`
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    hf_dir = folder / "hf"
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    out = folder / "tiny-st"
    model.save(str(out))
    return out


def write_dataset(
    folder: Path,
    pairs: Sequence[Sequence[str]],
    heldout: Sequence[Sequence[str]] = (),
    rows_per_shard: int = 1000,
    source: str = "fixture",
    id_prefix: tuple[str, str] = ("", "heldout"),
    source_file: str = "fixture",
) -> Path:
    """A dataset folder as ingest writes it: train shards, held-out shards, manifest last.

    Args:
        folder: the dataset folder.
        pairs: training rows ``(anchor, positive)`` or ``(anchor, positive, negative)``.
        heldout: held-out rows of the same shape.
        rows_per_shard: the most rows a shard holds.
        source: the manifest's source.
        id_prefix: the prefixes of train and held-out ids (``<prefix><row number>``).
        source_file: every row's ``source_file``.
    """
    import pyarrow as pa

    from pipeline.corpus.files import config_hash
    from pipeline.corpus.manifest import Manifest
    from pipeline.corpus.schema import arrow_schema
    from pipeline.corpus.shards import HELDOUT_DIR, ShardWriter

    with_negative = bool(pairs) and len(pairs[0]) == 3
    schema = arrow_schema(with_negative)
    shards = []
    for prefix, split, rows in ((id_prefix[0], "", pairs), (id_prefix[1], HELDOUT_DIR, heldout)):
        with ShardWriter(folder, schema, rows_per_shard=rows_per_shard, prefix=split) as writer:
            if rows:
                columns = list(zip(*rows))
                data = {"anchor": list(columns[0]), "positive": list(columns[1])}
                if with_negative:
                    data["negative"] = list(columns[2])
                data["id"] = [f"{prefix}{i}" for i in range(len(rows))]
                data["source_file"] = [source_file] * len(rows)
                data["source_line"] = list(range(1, len(rows) + 1))
                writer.write(pa.table(data))
        shards += [s.as_dict() for s in writer.shards]
    config = {"fixture": folder.name}
    Manifest(
        dataset=folder.name, source=source, stage="ingest", unit="line", rows_read=len(pairs) + len(heldout),
        rows_kept=len(pairs) + len(heldout), rows_train=len(pairs), rows_heldout=len(heldout), dropped={},
        columns=schema.names, shards=shards, inputs=[], failures=[], quarantine={"path": None, "rows": 0},
        config=config, config_hash=config_hash(config), versions={},
    ).write(folder)  # fmt: skip
    return folder


def write_pairs(folder: Path, pairs: list[dict], heldout: list[dict] | None = None) -> Path:
    """A pair dataset folder from ``{anchor, positive}`` rows (shards of 8 rows, ids ``t-<n>``, ``h-<n>``)."""
    rows = [(r["anchor"], r["positive"]) for r in pairs]
    held = [(r["anchor"], r["positive"]) for r in heldout or []]
    return write_dataset(folder, rows, held, rows_per_shard=8, source="test", id_prefix=("t-", "h-"), source_file="pairs.jsonl")


def tiny_train_config(model_dir: Path, **overrides: object):
    """A TrainConfig for the tiny model: 8 rows a batch, 8 steps, lr 1e-3, no warmup, the CPU, seed 1."""
    from pipeline.train.config import TrainConfig

    values = dict(
        model=str(model_dir), batch_size=8, max_steps=8, learning_rate=1e-3, warmup_steps=0,
        logging_steps=1, save_steps=100, device="cpu", seed=1,
    )  # fmt: skip
    return TrainConfig(**(values | overrides))


def load_bench_script(name: str):
    """A benchmark script of bench/ as a module (its sibling ``measuring`` module loaded first, as the scripts import it)."""
    import importlib.util
    import sys

    for module in ("measuring", name):
        if module not in sys.modules:
            spec = importlib.util.spec_from_file_location(module, ROOT / "bench" / f"{module}.py")
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[module] = loaded
            spec.loader.exec_module(loaded)
    return sys.modules[name]


def tree_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by path relative to it."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def load_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


_HOLDER = """
import sys
from pipeline.corpus.locks import writer_lock
with writer_lock(sys.argv[1], command="holder of " + sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills us)
"""


class LockHolder:
    """Another process holding ``folder``'s lock until :meth:`release` (or a kill)."""

    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(folder)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout.readline().strip() == "held"

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=60)


class FixedEmbedder:
    """An embedder whose vectors are given by hand: ``texts[t]`` embeds as ``vectors[t]`` (normalized).

    It has the face the curation steps use (``embed``, ``dimension``, ``cache_root``,
    ``cache_key``, ``resolved``), so a step's decisions can be checked on geometry
    chosen for the test.
    """

    def __init__(self, vectors: dict, cache_root: Path) -> None:
        import numpy as np

        from pipeline.embed.encoders import ResolvedEncoder

        self.vectors = {t: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for t, v in vectors.items()}
        self.dimension = len(next(iter(vectors.values())))
        self.cache_root = cache_root
        self.cache_key = "f" * 64
        self.resolved = ResolvedEncoder("numpy", "cpu", "openblas")

    def embed(self, texts: list, out=None, progress: bool = False):
        for row, text in enumerate(texts):
            out[row] = self.vectors[text]
        return out


def build_tiny_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random sentence-transformers ``CrossEncoder`` (BERT, one output, sigmoid) to ``folder``."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from pipeline.embed.models import default_model_path

    torch.manual_seed(seed)
    tokenizer = BertTokenizerFast(vocab=str(default_model_path() / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=1,
    )  # fmt: skip
    hf_dir = folder / "hf"
    BertForSequenceClassification(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    out = folder / "tiny-ce"
    CrossEncoder(str(hf_dir), device="cpu", local_files_only=True, max_length=64).save(str(out))
    return out
