"""Full-rank metrics against hand-computed cases, history masking and tie handling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossrec.evaluation import METRICS, MISSED, compute_metrics, mask_history, rank_batch, ranks_of_targets


def test_single_user_hand_computed() -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.3]])
    ranks = rank_batch(scores, [2], [[]])
    assert ranks.tolist() == [2]
    m = compute_metrics(ranks)
    assert m["Recall@10"] == 1.0
    assert m["NDCG@10"] == pytest.approx(1 / math.log2(3))
    assert m["MRR"] == pytest.approx(0.5)
    assert m["Precision@10"] == pytest.approx(0.1)
    assert m["F1@10"] == pytest.approx(2 * 0.1 * 1.0 / 1.1)
    assert m["n_users"] == 1


def test_masking_history_moves_target_up() -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.3]])
    ranks = rank_batch(scores, [2], [[0]])  # item 0 was already bought: masked
    assert ranks.tolist() == [1]
    assert compute_metrics(ranks)["NDCG@10"] == pytest.approx(1.0)


def test_masked_target_is_a_miss() -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.3]])
    ranks = rank_batch(scores, [0], [[0]])
    assert ranks.tolist() == [MISSED]  # a miss even though the catalogue has only 4 items
    m = compute_metrics(ranks)
    assert m["Recall@10"] == 0.0 and m["Recall@50"] == 0.0 and m["NDCG@10"] == 0.0 and m["MRR"] < 1e-12


def test_mask_does_not_mutate_input() -> None:
    scores = np.array([[1.0, 2.0, 3.0]])
    masked = mask_history(scores, [[2]])
    assert scores[0, 2] == 3.0 and np.isneginf(masked[0, 2])


def test_ties_broken_by_index() -> None:
    scores = np.zeros((2, 6))
    assert ranks_of_targets(scores, [3, 0]).tolist() == [4, 1]


def test_cutoffs_and_mean_over_users() -> None:
    # user 0: target rank 1; user 1: target rank 20 (inside 50, outside 10); user 2: rank 60
    n = 80
    scores = np.tile(-np.arange(n, dtype=float), (3, 1))  # item i has rank i+1
    ranks = rank_batch(scores, [0, 19, 59], [[], [], []])
    assert ranks.tolist() == [1, 20, 60]
    m = compute_metrics(ranks)
    assert m["Recall@10"] == pytest.approx(1 / 3)
    assert m["Recall@50"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx(1 / 3)
    assert m["NDCG@50"] == pytest.approx((1 + 1 / math.log2(21)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 20 + 1 / 60) / 3)


def test_registry_contains_seed_metrics_and_empty_is_nan() -> None:
    for name in ("Recall@10", "Recall@50", "NDCG@10", "MRR", "Precision@10", "F1@10"):
        assert name in METRICS
    m = compute_metrics(np.zeros(0, dtype=np.int64))
    assert math.isnan(m["NDCG@10"]) and m["n_users"] == 0


def test_bad_shapes_raise_clear_errors() -> None:
    with pytest.raises(ValueError):
        mask_history(np.zeros((2, 3)), [[0]])
    with pytest.raises(ValueError):
        ranks_of_targets(np.zeros((1, 3)), [3])
