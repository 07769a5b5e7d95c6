"""Prefect artifacts of the flows: manifests in, tables and progress out.

In: stage manifests (``manifest.json`` dicts). Out: table artifacts (rows kept and
dropped by reason, one row per dataset; the quartiles of mined datasets' scores and
margins, with where their histograms are drawn) and a progress artifact advanced stage
by stage.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact


def manifest_rows(manifests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One table row per manifest: dataset, rows read/kept/train/held out, then one column per drop reason."""
    reasons = sorted({reason for m in manifests for reason in (m.get("dropped") or {})})
    rows = []
    for manifest in sorted(manifests, key=lambda m: str(m.get("dataset"))):
        dropped = manifest.get("dropped") or {}
        row: dict[str, Any] = {
            "dataset": manifest.get("dataset"),
            "stage": manifest.get("stage"),
            "rows_read": manifest.get("rows_read"),
            "rows_kept": manifest.get("rows_kept"),
            "rows_train": manifest.get("rows_train"),
            "rows_heldout": manifest.get("rows_heldout"),
            "failures": len(manifest.get("failures") or []),
        }
        row.update({f"dropped: {reason}": int(dropped.get(reason, 0)) for reason in reasons})
        rows.append(row)
    return rows


def publish_stage_table(stage: str, manifests: Sequence[Mapping[str, Any]], description: str) -> None:
    """A table artifact ``pairforge-<stage>`` of the stage's manifests (kept and dropped by reason)."""
    create_table_artifact(
        key=f"pairforge-{stage}",
        table=manifest_rows(manifests),
        description=description,
    )


def score_rows(manifests: Sequence[Mapping[str, Any]], corpus: str) -> list[dict[str, Any]]:
    """One row per mined dataset: quartiles of positive scores, chosen-negative scores and margins, the plot's path."""
    rows = []
    for manifest in sorted(manifests, key=lambda m: str(m.get("dataset"))):
        stats = manifest.get("mining") or {}
        row: dict[str, Any] = {"dataset": manifest.get("dataset")}
        for key, label in (("positive_scores", "positive"), ("negative_scores", "negative"), ("margins", "margin")):
            for q in ("p25", "median", "p75"):
                row[f"{label} {q}"] = (stats.get(key) or {}).get(q)
        row["histograms"] = f"{corpus}/{manifest.get('dataset')}/{stats['plot']}" if stats.get("plot") else None
        rows.append(row)
    return rows


def publish_score_table(manifests: Sequence[Mapping[str, Any]], corpus: str) -> None:
    """A table artifact ``pairforge-mining-scores``: does the margin over-filter? (see :func:`score_rows`)."""
    create_table_artifact(
        key="pairforge-mining-scores",
        table=score_rows(manifests, corpus),
        description="mined datasets: quartiles of positive scores, chosen-negative scores and margins (positive - negative)",
    )


class Progress:
    """A progress artifact advanced stage by stage (percent of the stages finished)."""

    def __init__(self, stages: Sequence[str], key: str = "pairforge-progress") -> None:
        self.stages = list(stages)
        self.done = 0
        self.artifact_id = create_progress_artifact(
            progress=0.0, key=key, description=f"stages: {', '.join(self.stages)}"
        )

    def advance(self, stage: str) -> None:
        """Mark ``stage`` finished."""
        self.done += 1
        percent = 100.0 * self.done / max(len(self.stages), 1)
        update_progress_artifact(
            artifact_id=self.artifact_id, progress=percent, description=f"finished {stage} ({self.done}/{len(self.stages)})"
        )
