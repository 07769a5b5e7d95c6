"""Tests for the pairforge command line: options generated from the config dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from flows.cli import build_parser, main
from flows.config_options import _flag, _leaf_fields, attribute_docs, build_config, config_from_args
from pipeline.curate import STEPS
from pipeline.evaluate.config import EvalConfig
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.normalize import TextFilters
from pipeline.mining.config import MiningConfig
from pipeline.sampling.policies import WeightPolicy
from pipeline.train.config import TrainConfig

COMMANDS = {"ingest": IngestConfig, "mine": MiningConfig, "config": WeightPolicy, "train": TrainConfig, "evaluate": EvalConfig}
COMMANDS |= {step.command: step.config for step in STEPS.values()}
POSITIONALS = {"ingest": ["nli", "in.jsonl", "--out", "o"], "mine": ["d", "--out", "o"], "config": ["c"],
               "train": ["c", "--config", "dc.json", "--out", "m"], "evaluate": ["m", "--out", "r"]}  # fmt: skip
POSITIONALS |= {step.command: ["d", "--out", "o"] for step in STEPS.values()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_is_an_option_with_its_docs(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    config_class = COMMANDS[command]
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for leaf, _path in _leaf_fields(config_class):
        assert _flag(leaf)[-1] in text, f"{config_class.__name__}.{leaf.name}"
        assert attribute_docs(leaf.owner).get(leaf.name), f"{leaf.owner.__name__}.{leaf.name} has no docstring entry"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_option_given_is_the_default_config(command: str) -> None:
    args = build_parser().parse_args([command, *POSITIONALS[command]])
    base = {"stsb": ["s.csv"]} if command == "evaluate" else None  # an evaluation needs something to score
    assert config_from_args(args, COMMANDS[command], base) == build_config(COMMANDS[command], base)


def test_options_build_the_config_they_say() -> None:
    parser = build_parser()
    args = parser.parse_args([
        "ingest", "nli", "a.jsonl", "--out", "o", "--min-chars", "5", "--keep-equal-pairs", "--no-dedup", "--near-dedup",
        "-o", "min_score=3", "--option", "x=y", "--datasets", "nli-pairs,nli-triplets", "--jsonl-reader", "chunked",
    ])  # fmt: skip
    config = config_from_args(args, IngestConfig)
    assert config.filters == TextFilters(min_chars=5, drop_anchor_equals_positive=False)
    assert (config.dedup, config.near_dedup, config.jsonl_reader) == (False, True, "chunked")
    assert dict(config.source_options) == {"min_score": "3", "x": "y"}
    assert config.datasets == ("nli-pairs", "nli-triplets")

    args = parser.parse_args(["config", "c", "--policy", "explicit", "--weight", "a=3", "--weight", "b=1", "--exclude", "x/*",
                              "--exclude", "y", "--keep-unmined"])  # fmt: skip
    policy = config_from_args(args, WeightPolicy)
    assert (policy.kind, dict(policy.weights), policy.exclude, policy.prefer_mined) == ("explicit", {"a": 3, "b": 1}, ("x/*", "y"), False)

    args = parser.parse_args(["train", "c", "--config", "d", "--out", "m", "--lr", "3e-5", "--grad-accum", "4", "--no-resume",
                              "--pooling", "cls", "--no-normalize", "--loss", "cached_mnrl"])  # fmt: skip
    train = config_from_args(args, TrainConfig)
    assert train == dataclasses.replace(
        TrainConfig(), learning_rate=3e-5, gradient_accumulation_steps=4, resume=False, pooling="cls", normalize=False,
        loss="cached_mnrl",
    )  # fmt: skip

    args = parser.parse_args(["evaluate", "m", "--out", "r", "--stsb", "a.csv", "b.csv", "--max-heldout", "0", "--no-progress"])
    evaluation = config_from_args(args, EvalConfig)
    assert (evaluation.stsb, evaluation.max_heldout_rows, evaluation.show_progress) == (("a.csv", "b.csv"), None, False)

    # an optional number that is on by default takes "none" to turn it off
    assert MiningConfig().relative_margin == 0.05
    for given, expected in (("none", None), ("None", None), ("0.1", 0.1)):
        args = parser.parse_args(["mine", "d", "--out", "o", "--relative-margin", given])
        assert config_from_args(args, MiningConfig).relative_margin == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ingest", "nli", "a", "--out", "o", "--min-chars", "many"], "invalid int value: 'many'"),
        (["ingest", "nosuch", "a", "--out", "o"], "invalid choice: 'nosuch'"),
        (["ingest", "nli", "a", "--out", "o", "-o", "novalue"], "takes NAME=VALUE"),
        (["config", "c", "--weight", "a=heavy"], "must be an integer"),
        (["train", "c", "--config", "d", "--out", "m", "--loss", "triplet"], "invalid choice: 'triplet'"),
        (["mine", "d"], "the following arguments are required: --out"),
        (["mine", "d", "--out", "o", "--relative-margin", "off"], "invalid float value: 'off'"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("pairforge"), err


def test_train_rejects_a_bad_process_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "c", "--config", "d", "--out", "m", "--nproc", "two"]) == 2
    assert "--nproc takes a positive integer or 'auto'" in capsys.readouterr().err


def test_curation_options_build_their_configs() -> None:
    from pipeline.curate import ConsistencyConfig, DecontaminationConfig, RescoreConfig, SemanticDedupConfig
    from pipeline.embed.index import IndexConfig

    parser = build_parser()
    args = parser.parse_args(["consistency-filter", "d", "--out", "o", "--k", "3", "--index", "hnsw", "--extra-corpus", "x", "y"])
    assert config_from_args(args, ConsistencyConfig) == ConsistencyConfig(k=3, extra_corpus=("x", "y"), search=IndexConfig(index="hnsw"))
    args = parser.parse_args(["decontaminate", "d", "--out", "o", "--stsb", "a.csv", "--heldout", "--ngram-overlap", "0"])
    assert config_from_args(args, DecontaminationConfig) == DecontaminationConfig(stsb=("a.csv",), heldout=True)
    args = parser.parse_args(["semantic-dedup", "d", "--out", "o", "--eps", "0.05", "--which-to-keep", "first", "--n-clusters", "7"])
    assert config_from_args(args, SemanticDedupConfig) == SemanticDedupConfig(eps=0.05, which_to_keep="first", n_clusters=7)
    args = parser.parse_args(["rescore", "d", "--out", "o", "--model", "ce", "--max-score", "0.9", "--model-type", "cross-encoder"])
    assert config_from_args(args, RescoreConfig) == RescoreConfig(model="ce", max_score=0.9, model_type="cross-encoder")


def test_a_curation_command_runs_and_prints_its_summary(tmp_path, capsys) -> None:
    from tests.helpers import TEST_DATA, write_dataset

    dataset = write_dataset(tmp_path / "corpus" / "d", [("A man with a hard hat is dancing.", "x y"), ("b c", "d e")])
    argv = ["decontaminate", str(dataset), "--out", str(tmp_path / "corpus" / "o"), "--stsb", str(TEST_DATA / "curate" / "sts-planted.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 of 2 rows kept; dropped contaminated=1" in out and "stsb " in out and "1 rows matched" in out
    assert main(argv) == 0 and "skipped" in capsys.readouterr().out
    assert main(["rescore", str(dataset), "--out", str(tmp_path / "corpus" / "r")]) == 2
    assert "needs the rescoring model's folder" in capsys.readouterr().err
