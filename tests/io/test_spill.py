"""spill.key_partitions: the same partitions, in the same order, in one round or two."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.io import spill


def spilled_rows(folder: Path, batches: int = 4, rows: int = 60_000) -> list[Path]:
    """Batches of rows with repeated string keys, written as staged row files (big
    enough for several batch files: key_partitions reads them 100,000 rows at a time)."""
    files = spill.FrameFiles(folder)
    rng = np.random.default_rng(0)
    for number in range(batches):
        keys = rng.integers(0, 3_000, rows)
        files.write(pl.DataFrame({"key": [f"k{k}" for k in keys], "order": np.arange(rows) + number * rows}))
    return files.files()


@pytest.mark.parametrize("fanout", [2, 5, 13])
def test_two_rounds_give_the_partitions_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fanout: int) -> None:
    paths = spilled_rows(tmp_path / "rows")
    keep = pl.col("order") % 3 != 0

    def partitions() -> list[tuple[int, pl.DataFrame]]:
        return list(spill.key_partitions(paths, pl.col("key"), 40, tmp_path / "work", where=keep))

    one_round = partitions()
    monkeypatch.setattr(spill, "MAX_FANOUT", fanout)
    two_rounds = partitions()
    assert [index for index, _ in two_rounds] == [index for index, _ in one_round]
    for (_, a), (_, b) in zip(one_round, two_rounds):
        assert a.equals(b) and a.columns == ["key", "order"]
    everything = pl.concat([rows for _, rows in two_rounds])
    assert sorted(everything["order"].to_list()) == [o for o in range(240_000) if o % 3]
    for _, rows in two_rounds:
        assert rows["order"].is_sorted()  # input order within a partition
    keys_by_partition = [set(rows["key"]) for _, rows in two_rounds]
    assert sum(map(len, keys_by_partition)) == len(set().union(*keys_by_partition))  # a key in one partition
    assert not list((tmp_path / "work").iterdir())  # the spill files are gone
