"""The seed-spread rule on made-up metric tables."""

from __future__ import annotations

import math

import pytest

from pipeline.ablate.compare import compare, summarize
from pipeline.ablate.plan import VARIANT_NAMES, step_base


def test_summarize_gives_mean_sample_std_and_values_per_variant_and_metric():
    table = {"naive": {1: {"m": 0.5}, 2: {"m": 0.7}, 3: {"m": 0.6}}, "clean": {1: {"m": 0.8, "x": None}, 2: {"m": 0.8}}}
    summary = summarize(table)
    assert summary["naive"]["m"] == {"mean": 0.6, "std": 0.1, "n": 3, "values": [0.5, 0.7, 0.6]}
    assert summary["clean"]["m"] == {"mean": 0.8, "std": 0.0, "n": 2, "values": [0.8, 0.8]}
    assert summary["clean"]["x"] == {"mean": None, "std": None, "n": 0, "values": []}


@pytest.mark.parametrize(
    "ours, theirs, real, direction",
    [
        ([0.80, 0.81, 0.82], [0.60, 0.61, 0.62], True, "better"),  # delta 0.2 > 2 x 0.01
        ([0.60, 0.61, 0.62], [0.80, 0.81, 0.82], True, "worse"),
        ([0.615, 0.625, 0.635], [0.60, 0.61, 0.62], False, "within noise"),  # delta 0.015 < 2 x 0.01
        ([0.60, 0.70, 0.80], [0.60, 0.61, 0.62], False, "within noise"),  # delta 0.09 < 2 x 0.1 (the larger spread)
    ],
)
def test_a_difference_is_real_only_beyond_twice_the_larger_seed_spread(ours, theirs, real, direction):
    summary = summarize({"a": {i: {"m": v} for i, v in enumerate(ours)}, "b": {i: {"m": v} for i, v in enumerate(theirs)}})
    result = compare(summary["a"]["m"], summary["b"]["m"], spread=2.0)
    assert result["real"] is real and result["direction"] == direction
    assert math.isclose(result["delta"], sum(ours) / 3 - sum(theirs) / 3, abs_tol=1e-6)
    assert math.isclose(result["threshold"], 2.0 * max(summary["a"]["m"]["std"], summary["b"]["m"]["std"]), abs_tol=1e-6)


def test_one_seed_has_no_spread_and_nothing_is_called_real():
    summary = summarize({"a": {1: {"m": 0.9}}, "b": {1: {"m": 0.1}}})
    assert compare(summary["a"]["m"], summary["b"]["m"], 2.0) == {"delta": 0.8, "threshold": None, "real": False, "direction": "within noise"}


def test_zero_spread_makes_any_difference_real_and_a_missing_metric_is_na():
    summary = summarize({"a": {1: {"m": 0.5}, 2: {"m": 0.5}}, "b": {1: {"m": 0.4}, 2: {"m": 0.4}}})
    assert compare(summary["a"]["m"], summary["b"]["m"], 2.0)["direction"] == "better"
    assert compare({}, summary["b"]["m"], 2.0)["direction"] == "n/a"


def test_each_variant_is_compared_with_the_nearest_earlier_variant_that_ran():
    assert step_base("weighted", VARIANT_NAMES) == "mined-percpos"
    assert step_base("weighted", ("naive", "clean", "weighted")) == "clean"
    assert step_base("clean", ("clean",)) is None
    assert step_base("naive", VARIANT_NAMES) is None
