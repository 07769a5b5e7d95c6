"""What to evaluate on and how: :class:`EvalConfig`, saved (resolved) inside ``report.json``.

In: option values. Out: a frozen, validated config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on and how; saved, resolved, inside ``report.json``.

    Attributes:
        stsb: STSb files (original tab-separated distribution), e.g. ``sts-dev.csv``.
        nli: NLI inputs: ``.jsonl`` files, SentEval folders (or their ``s1.*`` file),
            or corpus dataset folders holding triplets in their ``heldout/`` split.
        corpus: a built corpus folder: the held-out rows of its datasets are pooled into
            one retrieval task (its training texts as distractors) and one triplet task
            (negatives mined by BM25), and each dataset is also scored on its own.
        datasets: only these dataset names of ``corpus`` (default: all).
        max_heldout_rows: read at most this many held-out rows per dataset (the first in
            shard order, so the choice is deterministic); None reads them all.
        max_distractors: the most corpus texts (training positives and negatives) added to
            the held-out positives as documents of the pooled retrieval task.
        min_rows: a figure resting on fewer rows (pairs, triplets or queries) is left out
            of the table and the verdict (listed apart, with its rows): at 30 rows one row
            moves an accuracy by 3.3 points.
        batch_size: encoding batch size.
        device: ``cpu``, ``cuda``... (default: a GPU when one is visible).
        heatmap_pairs: how many held-out pairs the similarity heatmap shows.
        regression_tolerance: a metric that drops by more than this counts as worse.
        show_progress: show progress bars while encoding.
    """

    stsb: tuple[str, ...] = ()
    nli: tuple[str, ...] = ()
    corpus: str | None = None
    datasets: tuple[str, ...] | None = None
    max_heldout_rows: int | None = field(default=10_000, metadata={"flag": "--max-heldout", "zero_is_none": True})
    max_distractors: int = 20_000
    min_rows: int = 30
    batch_size: int = 64
    device: str | None = None
    heatmap_pairs: int = 8
    regression_tolerance: float = field(default=0.01, metadata={"flag": "--tolerance"})
    show_progress: bool = field(default=True, metadata={"flag": "--no-progress"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_heldout_rows is not None and self.max_heldout_rows < 1:
            raise ValueError(f"max_heldout_rows must be at least 1 or None, got {self.max_heldout_rows}")
        if self.max_distractors < 0:
            raise ValueError(f"max_distractors must not be negative, got {self.max_distractors}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be at least 1, got {self.min_rows}")
        if self.heatmap_pairs < 0:
            raise ValueError(f"heatmap_pairs must not be negative, got {self.heatmap_pairs}")
        if not (self.stsb or self.nli or self.corpus):
            raise ValueError("nothing to evaluate: give an STSb file, an NLI file or a corpus folder")

    def as_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (device and progress left out: they do not change results)."""
        values = asdict(self)
        for key in ("device", "show_progress"):
            values.pop(key)
        values["stsb"] = list(self.stsb)
        values["nli"] = list(self.nli)
        values["datasets"] = None if self.datasets is None else list(self.datasets)
        return values
