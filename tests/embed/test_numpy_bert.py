"""Tests of the torch-free numpy encoder: same embeddings as sentence-transformers,
the models it accepts, determinism across threads, and no torch import when mining.

The comparison runs on the tiny random model and on the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.devices import gpu_visible
from pipeline.embed.numpy_bert import (
    MklGemm,
    NumpyBertEncoder,
    encode_batches,
    erf32,
    gemm_kind,
    mkl_library,
    numpy_encoder_spec,
    rows_are_position_invariant,
)
from tests.helpers import ROOT, TEST_DATA, load_jsonl, write_pairs

TEXTS = [
    "A man is playing a guitar on stage.",
    "Two dogs run across a snowy field.",
    "x",
    "Crème brûlée, naïve café and 東京 — unicode survives tokenization.",
    "How do I learn Python quickly?",
    "a much longer text that will be truncated at the model's maximum length " * 40,
]


def test_erf32_matches_math_erf():
    grid = np.linspace(-6, 6, 20_001, dtype=np.float32)
    expected = np.array([math.erf(float(v)) for v in grid])
    assert np.abs(erf32(grid) - expected).max() < 1e-6


GEMM_KINDS = ["mkl", "openblas"] if mkl_library() is not None else ["openblas"]


@pytest.mark.parametrize("gemm", GEMM_KINDS)
@pytest.mark.parametrize("model", ["tiny", "real"])
def test_numpy_encoder_matches_sentence_transformers(model, gemm, tiny_model_dir, base_model_dir, base_model):
    from pipeline.embed.models import load_encoder

    folder = tiny_model_dir if model == "tiny" else base_model_dir
    reference = base_model if model == "real" else load_encoder(tiny_model_dir, device="cpu")
    spec = numpy_encoder_spec(folder)
    assert spec is not None and spec.pooling == "mean" and spec.normalize
    encoder = NumpyBertEncoder(spec, gemm=gemm)
    ours = np.concatenate([encoder.encode(TEXTS[:3]), encoder.encode(TEXTS[3:])])  # padded batches
    theirs = reference.encode(TEXTS, batch_size=3, normalize_embeddings=True, convert_to_numpy=True)
    cosine = np.sum(ours * theirs, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.9999, cosine
    assert np.abs(ours - theirs).max() < 1e-5
    assert encoder.gemm.startswith(gemm)


@pytest.mark.parametrize("gemm", GEMM_KINDS)
def test_a_texts_embedding_is_the_same_bytes_in_any_batch(gemm, tiny_model_dir):
    """Texts of one token length (as mining batches them) encoded alone, and at
    different positions of batches of different sizes: the same bytes each time."""
    encoder = NumpyBertEncoder(numpy_encoder_spec(tiny_model_dir), gemm=gemm)
    rng = np.random.default_rng(7)
    words = ["red", "blue", "dog", "cat", "runs", "sits", "big", "small", "the", "a", "on", "under"]
    texts = sorted({" ".join(rng.choice(words, size=5)) for _ in range(400)})
    lengths = [len(e.ids) for e in encoder.tokenizer.encode_batch(texts)]
    texts = [t for t, n in zip(texts, lengths) if n == lengths[0]][:70]
    assert len(texts) >= 40
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    for size in (2, 5, 17, len(texts)):
        order = rng.permutation(len(texts))
        batched = np.concatenate([encoder.encode([texts[i] for i in order[s : s + size]]) for s in range(0, len(texts), size)])
        assert batched.tobytes() == alone[order].tobytes(), f"batches of {size} ({encoder.gemm})"


@pytest.mark.skipif(mkl_library() is None, reason="no MKL in this torch build")
def test_mkl_products_and_the_position_check():
    gemm = MklGemm(mkl_library())
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    for rows in (1, 3, 16, 250):
        x = rng.standard_normal((rows, 64)).astype(np.float32)
        assert np.allclose(gemm(x, w), x.astype(np.float64) @ w.astype(np.float64), atol=1e-4)
    assert rows_are_position_invariant(gemm, [w])

    def drifting(x, w):  # a product whose rows' last bits follow their position
        out = x @ w
        return out + np.arange(len(out), dtype=np.float32)[:, None] * np.float32(1e-7)

    assert not rows_are_position_invariant(drifting, [w])


def test_the_encoder_switch_and_cache_keys(tiny_model_dir):
    from pipeline.embed.encoders import embedding_cache_key, resolve_encoder

    assert gemm_kind("openblas") == "openblas" and gemm_kind("mkl") == "mkl"
    assert gemm_kind("auto") == ("mkl" if mkl_library() is not None else "openblas")
    with pytest.raises(ValueError, match="gemm must be one of"):
        gemm_kind("cublas")
    openblas = resolve_encoder(tiny_model_dir, "cpu", "numpy-openblas")
    mkl = resolve_encoder(tiny_model_dir, "cpu", "numpy-mkl")
    assert (openblas.backend, openblas.gemm, mkl.gemm) == ("numpy", "openblas", "mkl")
    assert resolve_encoder(tiny_model_dir, "cpu", "numpy").gemm == gemm_kind("auto")
    assert resolve_encoder(tiny_model_dir, "cpu", "torch").backend == "torch"
    # different last bits, kept apart in the cache
    assert embedding_cache_key("f" * 64, openblas) != embedding_cache_key("f" * 64, mkl)
    with pytest.raises(ValueError, match="encoder must be one of"):
        resolve_encoder(tiny_model_dir, "cpu", "numpy-cublas")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_encoder(tiny_model_dir, "cuda", "numpy")


def test_batches_are_the_same_bytes_on_any_number_of_threads(tiny_model_dir):
    encoder = NumpyBertEncoder(numpy_encoder_spec(tiny_model_dir))
    batches = [TEXTS[:2], TEXTS[2:5], TEXTS[5:]]
    one = np.concatenate(list(encode_batches(encoder, batches, threads=1)))
    three = np.concatenate(list(encode_batches(encoder, batches, threads=3)))
    assert one.tobytes() == three.tobytes()
    assert np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-6)


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "change",
    ["max_pooling", "dense_module", "no_tokenizer_json", "relative_positions", "prompt"],
)
def test_spec_refuses_what_it_cannot_run_exactly(change, tiny_model_dir, tmp_path):
    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    modules = json.loads((folder / "modules.json").read_text())
    if change == "max_pooling":
        pooling = folder / modules[1]["path"] / "config.json"
        config = json.loads(pooling.read_text())
        config.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True, pooling_mode="max")
        pooling.write_text(json.dumps(config))
    elif change == "dense_module":
        modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        (folder / "modules.json").write_text(json.dumps(modules))
    elif change == "no_tokenizer_json":
        (folder / modules[0]["path"] / "tokenizer.json").unlink()
    elif change == "relative_positions":
        config_path = folder / modules[0]["path"] / "config.json"
        config = json.loads(config_path.read_text())
        config["position_embedding_type"] = "relative_key"
        config_path.write_text(json.dumps(config))
    else:
        (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    assert numpy_encoder_spec(tiny_model_dir) is not None
    assert numpy_encoder_spec(folder) is None


def test_backend_choice(tiny_model_dir, monkeypatch):
    from pipeline.embed.encoders import ResolvedEncoder, embedding_cache_key, resolve_encoder

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not gpu_visible()
    auto = resolve_encoder(tiny_model_dir, None, "auto")
    assert (auto.backend, auto.device) == ("numpy", "cpu")
    assert resolve_encoder(tiny_model_dir, "cuda:1", "auto") == ResolvedEncoder("torch", "cuda:1")
    assert resolve_encoder(tiny_model_dir, "cpu", "torch") == ResolvedEncoder("torch", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_encoder(tiny_model_dir, "cuda", "numpy")
    with pytest.raises(ValueError, match="encoder must be one of"):
        resolve_encoder(tiny_model_dir, None, "onnx")
    # Backends agree to ~1e-7, not bit for bit: they never share cache entries.
    assert embedding_cache_key("f" * 64, auto) != embedding_cache_key("f" * 64, ResolvedEncoder("torch", "cpu"))
    assert embedding_cache_key("f" * 64, ResolvedEncoder("torch", "cuda:0")) == embedding_cache_key(
        "f" * 64, ResolvedEncoder("torch", "cuda:1")
    )


def test_mining_on_the_numpy_backend_never_imports_torch(tiny_model_dir, tmp_path):
    """A cold run and a warm rebuild, each in a fresh interpreter: torch, transformers
    and sentence-transformers stay out of sys.modules."""
    dataset = write_pairs(tmp_path / "pairs", load_jsonl(TEST_DATA / "mining" / "pairs.jsonl"))
    script = (
        "import sys; from pipeline.mining import MiningConfig, mine_negatives\n"
        # the top candidate: the random tiny model leaves few anchors a candidate below 95% of the positive
        f"m = mine_negatives({str(dataset)!r}, sys.argv[1], MiningConfig(model={str(tiny_model_dir)!r}, relative_margin=None),"
        f" cache_dir={str(tmp_path / 'cache')!r}, echo=None)\n"
        "heavy = [n for n in ('torch', 'transformers', 'sentence_transformers') if n in sys.modules]\n"
        "print(m['embedding_counts']['encoded'], m['mining']['encoder']['backend'], heavy)\n"
    )
    outputs = []
    for out in ("cold", "warm"):
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / out)], cwd=ROOT, capture_output=True, text=True, check=True,
            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "HOME": str(tmp_path)},
        )
        outputs.append(done.stdout.split())
    assert outputs[0][1:] == ["numpy", "[]"] and int(outputs[0][0]) > 0
    assert outputs[1] == ["0", "numpy", "[]"]
    assert (tmp_path / "cold" / "part-00000.parquet").read_bytes() == (tmp_path / "warm" / "part-00000.parquet").read_bytes()
