"""Mining, step 4: ranked candidates in; each anchor's chosen negatives out.

In: for each distinct anchor its candidates (text ids and scores, best first), the
pairs' positives and their scores, the texts' case-folded groups and a
:class:`~pipeline.mining.config.MiningConfig`. Out: a :class:`Selection`: up to
``num_negatives`` negatives per anchor and every candidate skipped, counted under the
first rule that fired (:data:`SKIP_RULES`), with sentence-transformers'
``mine_hard_negatives`` semantics (ranks count surviving candidates; margins are
measured against the anchor's lowest positive score) behind a false-negative guard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.mining.config import MiningConfig

SKIP_RULES = (
    "is_positive",
    "equals_anchor",
    "equals_positive",
    "absolute_margin",
    "relative_margin",
    "max_score",
    "min_score",
    "range_min",
)


@dataclass
class Selection:
    """Chosen negatives per anchor, best first.

    Attributes:
        tids: (n_anchors, num_negatives) text ids, -1 where none was found.
        scores: (n_anchors, num_negatives) anchor-negative scores (-inf where none).
        counts: (n_anchors,) negatives found per anchor.
        skipped: candidates skipped, by rule (each counted under the first rule that fired).
        candidates: candidates retrieved (excluding padding).
        beyond_range_max: surviving candidates left out by ``range_max``.
    """

    tids: np.ndarray
    scores: np.ndarray
    counts: np.ndarray
    skipped: dict[str, int]
    candidates: int
    beyond_range_max: int


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def select_negatives(
    candidate_tids: np.ndarray,
    candidate_scores: np.ndarray,
    anchor_tids: np.ndarray,
    pair_anchor: np.ndarray,
    pair_positive_tids: np.ndarray,
    pair_positive_scores: np.ndarray,
    guard_group: np.ndarray,
    config: MiningConfig,
    range_max: int,
    text_seeds: np.ndarray | None = None,
) -> Selection:
    """Pick negatives for each distinct anchor from its ranked candidates.

    Args:
        candidate_tids: (n_anchors, K) candidate text ids, best first, -1 for padding.
        candidate_scores: (n_anchors, K) their scores (float32).
        anchor_tids: (n_anchors,) the text id of each anchor.
        pair_anchor: (n_pairs,) the anchor index of each pair.
        pair_positive_tids: (n_pairs,) the positive's text id of each pair.
        pair_positive_scores: (n_pairs,) the anchor-positive score of each pair.
        guard_group: (n_texts,) group ids of texts equal after normalization and case folding.
        config: the selection settings.
        range_max: the resolved ``range_max``.
        text_seeds: (n_texts,) uint64 per-text values for ``random`` sampling (text hashes),
            so a choice depends on the texts, not on row order.

    Returns:
        The :class:`Selection`.
    """
    n_anchors = candidate_tids.shape[0]
    scores = candidate_scores.astype(np.float32, copy=True)
    valid = candidate_tids >= 0
    safe_tids = np.where(valid, candidate_tids, 0)
    anchor_index = np.arange(n_anchors, dtype=np.int64)[:, None]

    n_texts = np.int64(len(guard_group))
    pos_codes = np.unique(pair_anchor.astype(np.int64) * n_texts + pair_positive_tids)
    is_positive = np.isin(anchor_index * n_texts + safe_tids, pos_codes)
    cand_group = guard_group[safe_tids]
    equals_anchor = cand_group == guard_group[anchor_tids][:, None]
    group_codes = np.unique(pair_anchor.astype(np.int64) * n_texts + guard_group[pair_positive_tids])
    equals_positive = np.isin(anchor_index * n_texts + cand_group, group_codes)

    # sentence-transformers measures margins against the anchor's lowest positive score.
    lowest_positive = np.full(n_anchors, np.inf, dtype=np.float32)
    np.minimum.at(lowest_positive, pair_anchor, pair_positive_scores.astype(np.float32))
    lowest = lowest_positive[:, None]
    rules: list[tuple[str, np.ndarray]] = [
        ("is_positive", is_positive),
        ("equals_anchor", equals_anchor),
        ("equals_positive", equals_positive),
    ]
    if config.absolute_margin is not None:
        rules.append(("absolute_margin", scores + np.float32(config.absolute_margin) > lowest))
    if config.relative_margin is not None:
        threshold = lowest - np.abs(lowest) * np.float32(config.relative_margin)
        rules.append(("relative_margin", scores > threshold))
    if config.max_score is not None:
        rules.append(("max_score", scores > np.float32(config.max_score)))
    if config.min_score is not None:
        rules.append(("min_score", scores < np.float32(config.min_score)))

    alive = valid.copy()
    skipped = {name: 0 for name in SKIP_RULES}
    for name, mask in rules:
        hit = alive & mask
        skipped[name] = int(hit.sum())
        alive &= ~mask

    # Candidates arrive sorted by score; ranks count survivors only, as in sentence-transformers.
    rank = np.cumsum(alive, axis=1) - 1
    skipped["range_min"] = int((alive & (rank < config.range_min)).sum())
    beyond = int((alive & (rank >= range_max)).sum())
    options = alive & (rank >= config.range_min) & (rank < range_max)

    k = config.num_negatives
    if config.sampling_strategy == "random":
        seeds = text_seeds if text_seeds is not None else np.arange(len(guard_group), dtype=np.uint64)
        anchor_seed = _mix64(seeds[anchor_tids] ^ _mix64(np.full(n_anchors, config.seed, dtype=np.uint64)))
        priority = _mix64(anchor_seed[:, None] ^ seeds[safe_tids])
        priority = np.where(options, priority, np.iinfo(np.uint64).max)
        picked_cols = np.argsort(priority, axis=1, kind="stable")[:, :k]
        picked = np.zeros_like(options)
        np.put_along_axis(picked, picked_cols, True, axis=1)
        picked &= options
    else:
        picked = options & (np.cumsum(options, axis=1) <= k)

    counts = picked.sum(axis=1)
    # Column order is score order: the picked columns, left to right, best first.
    cols = np.argsort(~picked, axis=1, kind="stable")[:, :k]
    if cols.shape[1] < k:
        pad = np.zeros((n_anchors, k - cols.shape[1]), dtype=cols.dtype)
        cols = np.concatenate([cols, pad], axis=1)
    filled = np.arange(k)[None, :] < counts[:, None]
    tids = np.where(filled, np.take_along_axis(candidate_tids, cols, axis=1), -1)
    chosen_scores = np.where(filled, np.take_along_axis(scores, cols, axis=1), -np.inf).astype(np.float32)
    return Selection(
        tids=tids.astype(np.int64),
        scores=chosen_scores,
        counts=counts.astype(np.int64),
        skipped=skipped,
        candidates=int(valid.sum()),
        beyond_range_max=beyond,
    )
