"""Every curation step on the real samples with the packaged all-MiniLM-L6-v2, with exact counts.

SNLI dev (its first 1,289 lines) ingested into nli-pairs (415 training pairs), then
decontaminate (STSb dev and train, 13-grams, its own held-out split) -> consistency
(k=2) -> semantic dedup -> mine -> rescore (the packaged model as bi-encoder); and the
Quora sample's duplicates decontaminated against its own held-out split.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.corpus.manifest import check_accounting
from pipeline.curate import (
    ConsistencyConfig,
    DecontaminationConfig,
    RescoreConfig,
    SemanticDedupConfig,
    decontaminate,
    deduplicate_semantically,
    filter_consistent,
    rescore_negatives,
)
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.plan import ingest_source
from pipeline.mining import MiningConfig, mine_negatives


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real") / "corpus"
    ingest_source("nli", [shared_data / "snli" / "jsonl" / "snli_1.0_dev.jsonl"], root, IngestConfig(), progress=False)
    ingest_source("qqp", [shared_data / "quora" / "kaggle_first10k" / "preprocess2500.csv"], root, IngestConfig(), progress=False)
    return root


def test_the_chain_on_snli_dev(corpus: Path, shared_data: Path, base_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stsb = tuple(str(shared_data / "stsb" / name) for name in ("sts-dev.csv", "sts-train.csv"))
    clean = decontaminate(corpus / "nli-pairs", corpus / "nli-d", DecontaminationConfig(stsb=stsb, ngram_overlap=13, heldout=True), echo=None)
    # SNLI's premises are Flickr30k captions, and so are some STSb sentences.
    assert (clean["rows_read"], clean["dropped"]) == (415, {"contaminated": 16})
    assert [e["rows_matched"] for e in clean["decontamination"]["eval_sets"]] == [3, 9, 4]

    consistent = filter_consistent(corpus / "nli-d", corpus / "nli-d-c", ConsistencyConfig(model=str(base_model_dir)), cache_dir=cache, echo=None)
    assert (consistent["rows_read"], consistent["dropped"]) == (399, {"inconsistent": 38})
    ranks = consistent["consistency"]["rank_histogram"]
    assert (ranks["1"], ranks["2"], ranks["3"], ranks[">10"]) == (325, 36, 10, 9)

    deduplicated = deduplicate_semantically(corpus / "nli-d-c", corpus / "nli-d-c-s", SemanticDedupConfig(model=str(base_model_dir)),
                                            cache_dir=cache, echo=None)  # fmt: skip
    assert (deduplicated["rows_read"], deduplicated["dropped"]) == (361, {"semantic_duplicate": 22})
    assert deduplicated["semantic_dedup"]["rows_repeating_an_anchor"] == 22  # a premise with a second entailment

    # the top candidate whatever its score: the negatives rescoring has to judge
    naive = MiningConfig(model=str(base_model_dir), relative_margin=None)
    mined = mine_negatives(corpus / "nli-d-c-s", corpus / "nli-d-c-s-mined", naive, cache_dir=cache, echo=None)
    assert mined["rows_kept"] == 339 and mined["mining"]["margins"]["median"] == pytest.approx(0.168, abs=1e-3)
    assert mined["embedding_counts"]["encoded"] == 0  # every text was embedded by the consistency filter

    rescored = rescore_negatives(corpus / "nli-d-c-s-mined", corpus / "nli-r", RescoreConfig(model=str(base_model_dir)),
                                 cache_dir=cache, echo=None)  # fmt: skip
    assert rescored["dropped"] == {"likely_false_negative": 45, "near_duplicate_of_positive": 2}

    # the default, TopK-PercPos: no negative within 5% of its positive's score, so the same
    # model's rescoring finds none to drop
    percpos = mine_negatives(corpus / "nli-d-c-s", corpus / "nli-d-c-s-percpos", MiningConfig(model=str(base_model_dir)),
                             cache_dir=cache, echo=None)  # fmt: skip
    assert percpos["rows_kept"] == 339 and percpos["mining"]["margins"]["median"] == pytest.approx(0.177, abs=1e-3)
    assert percpos["mining"]["candidates_skipped"]["relative_margin"] > 0
    rescored_percpos = rescore_negatives(corpus / "nli-d-c-s-percpos", corpus / "nli-rp", RescoreConfig(model=str(base_model_dir)),
                                         cache_dir=cache, echo=None)  # fmt: skip
    assert rescored_percpos["dropped"] == {}
    for manifest in (clean, consistent, deduplicated, mined, rescored, percpos, rescored_percpos):
        check_accounting(manifest)


def test_quora_duplicates_repeat_their_held_out_questions(corpus: Path) -> None:
    manifest = decontaminate(corpus / "qqp-duplicates", corpus / "qqp-d", DecontaminationConfig(heldout=True, ngram_overlap=13), echo=None)
    assert (manifest["rows_read"], manifest["rows_kept"], manifest["dropped"]) == (3519, 3462, {"contaminated": 57})
    assert manifest["decontamination"]["rows_matched"] == {"exact": 45, "ngram": 12}
