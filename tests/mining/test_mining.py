"""Tests of hard-negative mining: selection rules, the guard, the cache, the whole step.

Selection is tested on hand-made candidate scores; the whole step on small dataset
folders written with ShardWriter from tests/data/mining/ and the tiny random model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.corpus.files import file_sha256
from pipeline.corpus.manifest import check_accounting
from pipeline.embed.cache import EmbeddingCache, text_keys
from pipeline.embed.index import search_candidates
from pipeline.mining.config import MiningConfig
from pipeline.mining.job import mine_negatives
from pipeline.mining.select import select_negatives
from tests.helpers import TEST_DATA, load_jsonl, write_pairs

DATA = TEST_DATA / "mining"


# --- helpers ------------------------------------------------------------------------


@pytest.fixture
def pairs_dataset(tmp_path: Path) -> Path:
    return write_pairs(tmp_path / "pairs", load_jsonl(DATA / "pairs.jsonl"), heldout=load_jsonl(DATA / "heldout.jsonl"))


def read_rows(folder: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))])


def select(scores, tids, config, *, anchor_tids=(0,), pair_anchor=(0,), pos_tids=(1,), pos_scores=(0.9,), groups=None, range_max=None):
    """select_negatives on one or more anchors with hand-made candidates."""
    tids = np.asarray(tids, dtype=np.int64)
    n_texts = int(max(tids.max(), max(pos_tids), max(anchor_tids))) + 1
    groups = np.arange(n_texts, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    return select_negatives(
        tids, np.asarray(scores, dtype=np.float32), np.asarray(anchor_tids), np.asarray(pair_anchor),
        np.asarray(pos_tids, dtype=np.int64), np.asarray(pos_scores, dtype=np.float32), groups, config,
        range_max if range_max is not None else tids.shape[1],
    )


# --- selection rules ----------------------------------------------------------------


def test_top_takes_best_candidates_in_score_order():
    sel = select([[0.8, 0.7, 0.6, 0.5]], [[2, 3, 4, 5]], MiningConfig(num_negatives=2))
    assert sel.tids.tolist() == [[2, 3]]
    assert sel.scores[0].tolist() == pytest.approx([0.8, 0.7])


def test_guard_rejects_positive_and_texts_equal_to_anchor_or_positive():
    # text 0 = anchor, 1 = positive; 6 equals the anchor and 7 the positive after case folding.
    groups = [0, 1, 2, 3, 4, 5, 0, 1]
    sel = select([[0.99, 0.95, 0.9, 0.5, 0.4]], [[1, 6, 7, 3, 4]], MiningConfig(num_negatives=1), groups=groups)
    assert sel.tids.tolist() == [[3]]
    assert sel.skipped["is_positive"] == 1
    assert sel.skipped["equals_anchor"] == 1
    assert sel.skipped["equals_positive"] == 1


def test_multiple_positives_all_excluded_and_margin_uses_lowest_positive():
    # anchor 0 with positives 1 (0.9) and 2 (0.6): neither is a negative, margin from 0.6.
    config = MiningConfig(num_negatives=1, absolute_margin=0.1)
    sel = select(
        [[0.9, 0.6, 0.55, 0.5, 0.3]], [[1, 2, 3, 4, 5]], config,
        pair_anchor=(0, 0), pos_tids=(1, 2), pos_scores=(0.9, 0.6),
    )
    assert sel.skipped["is_positive"] == 2
    assert sel.skipped["absolute_margin"] == 1  # 0.55 + 0.1 > 0.6
    assert sel.tids.tolist() == [[4]]  # 0.5 + 0.1 <= 0.6


@pytest.mark.parametrize(
    ("positive", "margin", "scores", "expected_kept"),
    [
        (0.5, 0.2, [0.35, 0.3, 0.25], [0.3, 0.25]),  # score <= 0.3
        (-0.2, 0.1, [-0.25, -0.3, -0.35], [-0.3, -0.35]),  # score <= -0.3 with a negative positive score
    ],
)
def test_absolute_margin_arithmetic(positive, margin, scores, expected_kept):
    sel = select([scores], [[2, 3, 4]], MiningConfig(num_negatives=3, absolute_margin=margin), pos_scores=(positive,))
    kept = [s for s in sel.scores[0].tolist() if np.isfinite(s)]
    assert kept == pytest.approx(expected_kept)


@pytest.mark.parametrize(
    ("positive", "margin", "scores", "expected_kept"),
    [
        (0.8, 0.25, [0.7, 0.6, 0.5], [0.6, 0.5]),  # threshold 0.8 - 0.2 = 0.6
        (-0.4, 0.5, [-0.5, -0.6, -0.7], [-0.6, -0.7]),  # threshold -0.4 - 0.2 = -0.6, not -0.4 * 0.5 = -0.2
    ],
)
def test_relative_margin_arithmetic_including_negative_scores(positive, margin, scores, expected_kept):
    sel = select([scores], [[2, 3, 4]], MiningConfig(num_negatives=3, relative_margin=margin), pos_scores=(positive,))
    kept = [s for s in sel.scores[0].tolist() if np.isfinite(s)]
    assert kept == pytest.approx(expected_kept)
    assert sel.skipped["relative_margin"] == 1


def test_max_and_min_score():
    config = MiningConfig(num_negatives=3, max_score=0.7, min_score=0.2)
    sel = select([[0.8, 0.6, 0.3, 0.1]], [[2, 3, 4, 5]], config)
    assert sel.tids.tolist() == [[3, 4, -1]]
    assert sel.skipped["max_score"] == 1 and sel.skipped["min_score"] == 1
    assert sel.counts.tolist() == [2]


def test_range_min_and_range_max_are_ranks_among_survivors():
    # the positive (rank 0 of retrieval) does not use up range_min.
    config = MiningConfig(num_negatives=2, range_min=1, relative_margin=None)
    sel = select([[0.95, 0.9, 0.8, 0.7, 0.6]], [[1, 2, 3, 4, 5]], config, range_max=3)
    assert sel.tids.tolist() == [[3, 4]]
    assert sel.skipped["range_min"] == 1
    assert sel.beyond_range_max == 1


def test_random_sampling_stays_in_range_is_seeded_and_sorted():
    candidates = [list(range(2, 22))]
    scores = [list(np.linspace(0.9, 0.1, 20))]
    picks = {}
    for seed in (0, 0, 1, 2):
        config = MiningConfig(num_negatives=3, sampling_strategy="random", seed=seed, range_min=2, relative_margin=None)
        sel = select(scores, candidates, config, range_max=12)
        chosen = sel.tids[0].tolist()
        assert all(4 <= t < 14 for t in chosen)  # ranks 2..11
        assert sel.scores[0].tolist() == sorted(sel.scores[0].tolist(), reverse=True)
        picks.setdefault(seed, []).append(chosen)
    assert picks[0][0] == picks[0][1]
    assert len({tuple(p[0]) for p in picks.values()}) > 1


def test_anchor_with_no_candidate_left_gets_none():
    sel = select([[0.9, 0.8]], [[1, -1]], MiningConfig(num_negatives=1))
    assert sel.counts.tolist() == [0] and sel.tids.tolist() == [[-1]]


def test_config_rejects_impossible_range():
    with pytest.raises(ValueError, match="cannot mine 3 negatives"):
        MiningConfig(num_negatives=3, range_min=2, range_max=4)


# --- the index ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_indexes_agree_with_exact_search_on_small_data(tmp_path, kind):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    corpus_rows, query_rows = np.arange(100, 300), np.arange(0, 100)
    config = MiningConfig(index=kind, nlist=8, nprobe=8)  # nprobe = nlist: IVF is exact
    scores, positions, info = search_candidates(vectors, corpus_rows, query_rows, 5, config, tmp_path, progress=False)
    exact = vectors[query_rows] @ vectors[corpus_rows].T
    expected = np.argsort(-exact, axis=1, kind="stable")[:, :5]
    assert info["kind"] == kind
    agree = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(positions.tolist(), expected.tolist())])
    assert agree >= (1.0 if kind != "hnsw" else 0.95)
    assert np.allclose(scores, np.take_along_axis(exact, positions, axis=1), atol=1e-5)


def test_search_pads_when_corpus_smaller_than_k(tmp_path):
    vectors = np.eye(4, dtype=np.float32)
    scores, positions, _ = search_candidates(vectors, np.arange(2), np.arange(2, 4), 5, MiningConfig(), tmp_path, progress=False)
    assert positions.shape == (2, 5)
    assert (positions[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()


# --- the cache ----------------------------------------------------------------------


def test_cache_roundtrip_and_corrupt_entry_is_detected(tmp_path):
    cache = EmbeddingCache(tmp_path, "f" * 64, dim=4)
    keys = text_keys(["a", "b", "c"])
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.append(keys, vectors)
    out = np.zeros((3, 4), dtype=np.float32)
    assert EmbeddingCache(tmp_path, "f" * 64).read_into(keys, out, np.arange(3)).all()
    assert np.array_equal(out, vectors)

    segment = next(cache.folder.glob("*.vectors.npy"))
    raw = bytearray(segment.read_bytes())
    raw[-4:] = np.float32(123.0).tobytes()  # the last row's last value changes
    segment.write_bytes(bytes(raw))
    reopened = EmbeddingCache(tmp_path, "f" * 64)
    found = reopened.read_into(keys, np.zeros((3, 4), dtype=np.float32), np.arange(3))
    assert found.tolist() == [True, True, False]
    # the corrupt entry is retired: a fresh cache no longer offers it
    assert EmbeddingCache(tmp_path, "f" * 64).lookup(keys[2:]).tolist() == [-1]


def test_cache_rejects_other_dimension(tmp_path):
    EmbeddingCache(tmp_path, "a" * 64, dim=4).append(text_keys(["x"]), np.ones((1, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="dimension"):
        EmbeddingCache(tmp_path, "a" * 64, dim=8)


# --- the whole step -----------------------------------------------------------------


def test_mine_writes_triplets_with_accounting_and_no_heldout(pairs_dataset, tmp_path, tiny_model_dir):
    out = tmp_path / "mined"
    # the top candidate, no margin: the random tiny model would leave few pairs a candidate below 95% of the positive
    config = MiningConfig(model=str(tiny_model_dir), num_negatives=1, relative_margin=None)
    manifest = mine_negatives(pairs_dataset, out, config, cache_dir=tmp_path / "cache", echo=None)
    check_accounting(manifest)
    rows = read_rows(out)
    assert rows.columns == ["anchor", "positive", "negative", "id", "source_file", "source_line"]
    assert manifest["stage"] == "mine" and manifest["rows_heldout"] == 0
    assert manifest["rows_read"] == 20 and manifest["rows_kept"] == len(rows)
    assert manifest["mined_from"]["config_hash"] == json.loads((pairs_dataset / "manifest.json").read_text())["config_hash"]
    assert not (out / "heldout").exists()
    texts = set(rows["anchor"]) | set(rows["positive"]) | set(rows["negative"])
    assert not any("HELDOUT" in t or "zebra" in t for t in texts)
    # the guard: no negative equals its anchor or a positive of the anchor (case folded)
    positives = {}
    for pair in load_jsonl(DATA / "pairs.jsonl"):
        positives.setdefault(pair["anchor"], set()).add(pair["positive"].casefold())
    for anchor, negative in zip(rows["anchor"], rows["negative"]):
        assert negative.casefold() not in positives[anchor] | {anchor.casefold()}
    stats = manifest["mining"]
    assert stats["max_positives_per_anchor"] == 2 and stats["anchors"] == 19
    # "DOGS ARE RUNNING IN THE SNOW." embeds exactly like its lower-case twin: the guard must fire
    assert stats["candidates_skipped"]["equals_positive"] >= 1
    assert sum(stats["positive_scores"]["counts"]) == 20


def test_mine_is_deterministic_and_skips_when_done(pairs_dataset, tmp_path, tiny_model_dir, capsys):
    config = MiningConfig(model=str(tiny_model_dir), num_negatives=2, sampling_strategy="random", range_max=6, seed=3)
    first = mine_negatives(pairs_dataset, tmp_path / "a", config, cache_dir=tmp_path / "c1", echo=None)
    second = mine_negatives(pairs_dataset, tmp_path / "b", config, cache_dir=tmp_path / "c2", echo=None)
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    assert (tmp_path / "a" / "manifest.json").read_bytes().replace(b'"a"', b'"b"') == (
        tmp_path / "b" / "manifest.json"
    ).read_bytes()
    again = mine_negatives(pairs_dataset, tmp_path / "a", config, cache_dir=tmp_path / "c1")
    assert again.get("skipped") is True
    assert "skipped" in capsys.readouterr().out
    # warm cache, fresh output: same bytes, nothing encoded
    warm = mine_negatives(pairs_dataset, tmp_path / "w", config, cache_dir=tmp_path / "c1", echo=None)
    assert warm["embedding_counts"]["encoded"] == 0
    assert [s["sha256"] for s in warm["shards"]] == [s["sha256"] for s in first["shards"]]


def test_corrupt_cache_entry_is_recomputed_in_a_run(pairs_dataset, tmp_path, tiny_model_dir):
    config = MiningConfig(model=str(tiny_model_dir))
    first = mine_negatives(pairs_dataset, tmp_path / "a", config, cache_dir=tmp_path / "cache", echo=None)
    segment = next((tmp_path / "cache").rglob("*.vectors.npy"))
    raw = bytearray(segment.read_bytes())
    raw[-8:] = b"\x00\x00\xc0\x7f" * 2  # NaNs in the last entry
    segment.write_bytes(bytes(raw))
    second = mine_negatives(pairs_dataset, tmp_path / "b", config, cache_dir=tmp_path / "cache", echo=None)
    assert second["embedding_counts"]["encoded"] == 1
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]


def test_n_tuple_output_and_triplet_slots(pairs_dataset, tmp_path, tiny_model_dir):
    tuples = mine_negatives(
        pairs_dataset, tmp_path / "t", MiningConfig(model=str(tiny_model_dir), num_negatives=3, output_format="n-tuple"),
        cache_dir=tmp_path / "cache", echo=None,
    )
    rows = read_rows(tmp_path / "t")
    assert rows.columns[:5] == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert tuples["unit"] == "pair" and len(rows) == tuples["rows_kept"]
    triplets = mine_negatives(
        pairs_dataset, tmp_path / "s", MiningConfig(model=str(tiny_model_dir), num_negatives=3),
        cache_dir=tmp_path / "cache", echo=None,
    )
    rows = read_rows(tmp_path / "s")
    assert triplets["unit"] == "pair_negative_slot" and triplets["rows_read"] == 60
    assert rows["id"].n_unique() == len(rows)
    check_accounting(triplets)


def test_margin_drops_are_counted_as_no_negative_in_range(pairs_dataset, tmp_path, tiny_model_dir):
    config = MiningConfig(model=str(tiny_model_dir), absolute_margin=2.0)  # nothing can be 2 below a positive
    manifest = mine_negatives(pairs_dataset, tmp_path / "m", config, cache_dir=tmp_path / "cache", echo=None)
    assert manifest["rows_kept"] == 0 and manifest["dropped"] == {"no_negative_in_range": 20}
    assert manifest["mining"]["anchors_without_negative"] == 19


def test_empty_dataset_gives_a_clear_message(tmp_path, tiny_model_dir):
    empty = write_pairs(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="no training pairs"):
        mine_negatives(empty, tmp_path / "out", MiningConfig(model=str(tiny_model_dir)), cache_dir=tmp_path / "c", echo=None)


def test_incomplete_dataset_and_overwriting_input_are_refused(pairs_dataset, tmp_path, tiny_model_dir):
    config = MiningConfig(model=str(tiny_model_dir))
    with pytest.raises(ValueError, match="must not be the input"):
        mine_negatives(pairs_dataset, pairs_dataset, config, cache_dir=tmp_path / "c", echo=None)
    (pairs_dataset / "manifest.json").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        mine_negatives(pairs_dataset, tmp_path / "o", config, cache_dir=tmp_path / "c", echo=None)


def test_extra_corpus_adds_candidates(pairs_dataset, tmp_path, tiny_model_dir):
    extra = write_pairs(tmp_path / "extra", [{"anchor": "unused anchor", "positive": "A completely new sentence about trains."}])
    config = MiningConfig(model=str(tiny_model_dir), extra_corpus=(str(extra),))
    manifest = mine_negatives(pairs_dataset, tmp_path / "o", config, cache_dir=tmp_path / "c", echo=None)
    assert manifest["mining"]["corpus_size"] == 20 + 1  # 20 distinct positives + 1 extra
    # Input paths are recorded relative to the output's corpus root.
    assert any(entry["path"].startswith("extra/part-") for entry in manifest["inputs"])


def test_cli_mine(pairs_dataset, tmp_path, tiny_model_dir, capsys):
    from flows.cli import main

    out = tmp_path / "cli"
    argv = ["mine", str(pairs_dataset), "--out", str(out), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    assert "mined" in capsys.readouterr().out
    assert file_sha256(out / "manifest.json")
    assert main(argv) == 0
    assert "skipped" in capsys.readouterr().out


def test_plain_encoder_matches_sentence_transformers(tiny_model_dir):
    from pipeline.embed.encoders import PlainEncoder, load_text_encoder, resolve_encoder
    from pipeline.embed.models import load_encoder

    texts = [p["anchor"] for p in load_jsonl(DATA / "pairs.jsonl")] + ["x", "a much longer text " * 40]
    plain = load_text_encoder(tiny_model_dir, resolve_encoder(tiny_model_dir, "cpu", "torch"))
    assert isinstance(plain, PlainEncoder)
    ours = np.concatenate([plain.encode(texts[i : i + 8]) for i in range(0, len(texts), 8)])
    theirs = load_encoder(tiny_model_dir, device="cpu").encode(texts, batch_size=8, normalize_embeddings=True)
    assert np.abs(ours - theirs).max() < 1e-5


def test_rebuild_reuses_the_search_and_a_damaged_entry_is_searched_again(pairs_dataset, tmp_path, tiny_model_dir, monkeypatch):
    from pipeline.embed import index as mining  # the search behind the search cache

    config = MiningConfig(model=str(tiny_model_dir), num_negatives=2)
    first = mine_negatives(pairs_dataset, tmp_path / "a" / "mined", config, cache_dir=tmp_path / "c", echo=None)
    entries = sorted((tmp_path / "c").glob("*/searches/*.json"))
    assert len(entries) == 1

    def no_search(*_args, **_kwargs):
        raise AssertionError("searched again although the search cache holds this search")

    with monkeypatch.context() as patch:
        patch.setattr(mining, "search_candidates", no_search)
        again = mine_negatives(pairs_dataset, tmp_path / "b" / "mined", config, cache_dir=tmp_path / "c", echo=None)
    assert again["shards"] == first["shards"] and again["mining"] == first["mining"]

    scores_path = entries[0].with_name(entries[0].name.replace(".json", ".scores.npy"))
    damaged = np.load(scores_path)
    damaged[0, 0] += 0.5
    np.save(scores_path, damaged)
    searched = []
    real_search = mining.search_candidates
    monkeypatch.setattr(mining, "search_candidates", lambda *a, **k: searched.append(1) or real_search(*a, **k))
    third = mine_negatives(pairs_dataset, tmp_path / "d" / "mined", config, cache_dir=tmp_path / "c", echo=None)
    assert searched == [1] and third["shards"] == first["shards"]
    # A different k (more negatives) is a different search.
    mine_negatives(pairs_dataset, tmp_path / "e" / "mined", MiningConfig(model=str(tiny_model_dir), num_negatives=3),
                   cache_dir=tmp_path / "c", echo=None)
    assert searched == [1, 1]


def test_torch_backend_mines_too_and_backends_are_cached_apart(pairs_dataset, tmp_path, tiny_model_dir):
    config = MiningConfig(model=str(tiny_model_dir))
    numpy_run = mine_negatives(pairs_dataset, tmp_path / "n", config, cache_dir=tmp_path / "c", echo=None)
    torch_run = mine_negatives(pairs_dataset, tmp_path / "t", config, cache_dir=tmp_path / "c", echo=None, encoder="torch")
    assert numpy_run["mining"]["encoder"] == {"backend": "numpy", "device": "cpu"}
    assert torch_run["mining"]["encoder"] == {"backend": "torch", "device": "cpu"}
    # The torch run found nothing of the numpy run's in the cache: it encoded everything.
    assert torch_run["embedding_counts"]["encoded"] == numpy_run["embedding_counts"]["encoded"] > 0
    assert len(list((tmp_path / "c").glob("*/meta.json"))) == 2
    assert torch_run["rows_kept"] == numpy_run["rows_kept"]


def test_model_fingerprint_is_remembered_by_file_stats(tiny_model_dir, tmp_path):
    import os
    import shutil

    from pipeline.embed.models import cached_model_fingerprint, model_fingerprint

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    store = tmp_path / "fingerprints"
    first = cached_model_fingerprint(model, store)
    assert first == model_fingerprint(model) and len(list(store.iterdir())) == 1
    (next(store.iterdir())).write_text("f" * 64)  # a stored value is trusted while the stats match
    assert cached_model_fingerprint(model, store) == "f" * 64
    weights = next(model.rglob("model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, new bytes, new mtime
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    changed = cached_model_fingerprint(model, store)
    assert changed == model_fingerprint(model) and changed not in (first, "f" * 64)


def test_diagnostics_margins_in_the_manifest_and_the_plot_beside_it(pairs_dataset, tmp_path, tiny_model_dir):
    out = tmp_path / "mined"
    manifest = mine_negatives(pairs_dataset, out, MiningConfig(model=str(tiny_model_dir), num_negatives=2), cache_dir=tmp_path / "c", echo=None)
    stats = manifest["mining"]
    rows = read_rows(out)
    assert stats["margins"]["count"] == stats["negative_scores"]["count"] == len(rows) > 0
    assert sum(stats["margins"]["counts"]) == len(rows)
    # margin = the pair's positive score - the negative's score, both by the mining model
    from pipeline.embed.embedder import Embedder
    from pipeline.mining.texts import _normalized

    embedder = Embedder(tiny_model_dir, "cpu", "auto", tmp_path / "c")
    vectors = [embedder.embed(_normalized(rows[c]).to_list()) for c in ("anchor", "positive", "negative")]
    margins = np.einsum("ij,ij->i", vectors[0], vectors[1]) - np.einsum("ij,ij->i", vectors[0], vectors[2])
    assert stats["margins"]["median"] == pytest.approx(float(np.median(margins)), abs=1e-5)
    assert stats["margins"]["min"] == pytest.approx(float(margins.min()), abs=1e-5)
    assert stats["plot"] == "scores.png" and (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    quiet = mine_negatives(pairs_dataset, tmp_path / "quiet", MiningConfig(model=str(tiny_model_dir), num_negatives=2),
                           cache_dir=tmp_path / "c", echo=None, plot=False)  # fmt: skip
    assert "plot" not in quiet["mining"] and not (tmp_path / "quiet" / "scores.png").exists()
