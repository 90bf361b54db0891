"""The batched top-k that the publisher and the consumer share (pure logic, no model needed)."""

from __future__ import annotations

import numpy as np

from crossrec.adaptation.inference import Recommender


def _recommender(n_items: int) -> Recommender:
    rec = object.__new__(Recommender)  # _top_many reads only the target ids
    rec._target_ids = [f"i{j}" for j in range(n_items)]
    return rec


def test_batched_top_k_equals_a_per_row_sort_with_masks_ties_and_short_rows() -> None:
    rng = np.random.default_rng(3)
    n, m, k = 40, 300, 7
    logits = rng.normal(size=(n, m)).astype(np.float32)
    logits[:, :20] = np.round(logits[:, :20])  # many equal scores
    logits[5] = 0.0  # a row of ties only
    masks = [np.unique(rng.integers(0, m, size=rng.integers(0, 30))) for _ in range(n)]
    masks[7] = np.arange(m - 3)  # only three items left
    got = _recommender(m)._top_many(logits.copy(), masks, k)
    for row, mask, top in zip(logits, masks, got):
        allowed = np.setdiff1d(np.arange(m), mask)
        ranked = sorted(allowed.tolist(), key=lambda j: (-row[j], j))[:k]  # best first, ties: lower position
        assert [item for item, _ in top] == [f"i{j}" for j in ranked]
        assert [p for _, p in top] == [float(1 / (1 + np.exp(-np.float64(row[j])))) for j in ranked]
    assert len(got[7]) == 3 and [i for i, _ in got[5]] == [f"i{j}" for j in range(k) if j not in set(masks[5])][: len(got[5])]


def test_batched_top_k_of_an_empty_batch_or_catalogue() -> None:
    assert _recommender(5)._top_many(np.zeros((0, 5), np.float32), [], 3) == []
    assert _recommender(0)._top_many(np.zeros((2, 0), np.float32), [np.zeros(0, np.int64)] * 2, 3) == [[], []]
