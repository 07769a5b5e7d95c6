"""Tests for pipeline.corpus.manifest: the typed manifest and its accounting rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.corpus.manifest import (
    MANIFEST_NAME,
    AccountingError,
    DropTally,
    Manifest,
    matching_manifest,
    read_manifest,
)
from tests.helpers import write_dataset


def _manifest(**changes) -> Manifest:
    values = dict(
        dataset="d", source="nli", stage="ingest", unit="line", rows_read=10, rows_kept=7, rows_train=6, rows_heldout=1,
        dropped={"too_short": 2, "duplicate": 1}, columns=["anchor", "positive"], shards=[], inputs=[], failures=[],
        quarantine={"path": None, "rows": 0}, config={"a": 1}, config_hash="h", versions={},
    )  # fmt: skip
    return Manifest(**(values | changes))


def test_a_manifest_whose_rows_do_not_add_up_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(AccountingError, match="rows_read=11 but rows_kept=7 \\+ dropped=3"):
        _manifest(rows_read=11).write(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()
    written = _manifest().write(tmp_path)
    assert read_manifest(tmp_path) == written


def test_sections_sit_beside_the_core_fields_and_read_back(tmp_path: Path) -> None:
    manifest = _manifest(sections={"mining": {"anchors": 3}})
    manifest.write(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert data["mining"] == {"anchors": 3} and data["rows_kept"] == 7
    assert Manifest.from_dict(data) == manifest
    with pytest.raises(ValueError, match="core field names: rows_read"):
        _manifest(sections={"rows_read": 1}).as_dict()
    with pytest.raises(ValueError, match="lacks field"):
        Manifest.from_dict({"dataset": "d"})


def test_a_damaged_manifest_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"{MANIFEST_NAME}: not a valid manifest"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path / "missing") is None


def test_a_matching_manifest_needs_the_same_inputs_config_stage_and_intact_shards(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", [("a", "b"), ("c", "d")])
    manifest = read_manifest(folder)
    assert matching_manifest(folder, [], manifest["config_hash"]) == manifest
    assert matching_manifest(folder, [], manifest["config_hash"], stage="ingest") == manifest
    assert matching_manifest(folder, [], manifest["config_hash"], stage="mine") is None
    assert matching_manifest(folder, [{"path": "x"}], manifest["config_hash"]) is None
    assert matching_manifest(folder, [], "other") is None
    (folder / manifest["shards"][0]["path"]).write_bytes(b"changed")
    assert matching_manifest(folder, [], manifest["config_hash"]) is None


def test_drop_tally_counts_by_reason_in_a_stable_order() -> None:
    tally = DropTally()
    tally.add("z")
    tally.update({"a": 2, "z": 1, "never": 0})
    assert tally.as_dict() == {"a": 2, "z": 2} and list(tally.as_dict()) == ["a", "z"] and tally.total() == 4
