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


def test_ties_broken_by_index_only_when_asked() -> None:
    scores = np.zeros((2, 6))
    assert ranks_of_targets(scores, [3, 0], tie_seed=None).tolist() == [4, 1]


def test_ties_are_random_reproducible_and_strict_order_untouched() -> None:
    scores = np.zeros((200, 6))
    r1, r2 = ranks_of_targets(scores, np.zeros(200, int)), ranks_of_targets(scores, np.zeros(200, int))
    assert r1.tolist() == r2.tolist()  # fixed seed: same ranks every run
    assert set(r1.tolist()) == {1, 2, 3, 4, 5, 6}  # uniform over the tied block, not always first
    assert ranks_of_targets(scores, np.zeros(200, int), tie_seed=1).tolist() != r1.tolist()
    # a strictly better target is never moved by the tie rule; ties only within the equal block
    s = np.array([[3.0, 1.0, 1.0, 1.0, 0.0]] * 50)
    assert (ranks_of_targets(s, np.zeros(50, int)) == 1).all()
    r = ranks_of_targets(s, np.full(50, 2))
    assert r.min() >= 2 and r.max() <= 4 and len(set(r.tolist())) > 1


def test_tie_heavy_scorer_gets_no_low_index_popularity_prior() -> None:
    """A scorer that says nothing (all zeros) on a catalogue whose low ids are the popular items:
    with index tie-breaking it would score like popularity; with random ties it scores like chance."""
    rng = np.random.default_rng(0)
    n_items, n_users = 500, 4000
    pop = 1.0 / np.arange(1, n_items + 1)  # item 0 most popular, as in an id-sorted catalogue
    targets = rng.choice(n_items, size=n_users, p=pop / pop.sum())
    blank = np.zeros((n_users, n_items))
    old = compute_metrics(ranks_of_targets(blank, targets, tie_seed=None))["NDCG@10"]
    new = compute_metrics(ranks_of_targets(blank, targets))["NDCG@10"]
    chance = float(np.mean([1 / math.log2(r + 1) for r in range(1, 11)])) * 10 / n_items
    assert old > 0.2  # the hidden prior the index rule gave
    assert new == pytest.approx(chance, abs=0.01) and new < old / 10


def test_paired_bootstrap_separates_real_gap_and_flags_noise() -> None:
    from crossrec.evaluation import paired_bootstrap

    rng = np.random.default_rng(0)
    base = rng.random(1000)
    better = base + 0.05
    ci = paired_bootstrap(better, base)
    assert not ci["includes_zero"] and ci["lo"] > 0 and ci["diff"] == pytest.approx(0.05)
    noisy = base + rng.normal(0, 0.3, size=1000)
    assert paired_bootstrap(noisy, base)["includes_zero"]
    with pytest.raises(ValueError):
        paired_bootstrap(base, base[:10])


def test_paired_bootstrap_resolution_is_half_the_interval_and_shrinks_with_more_users() -> None:
    """What a report quotes as the difference a set of users can separate: four times the users
    must halve it (a resolution that ignored n, or the wrong base, would not)."""
    from crossrec.evaluation import paired_bootstrap

    rng = np.random.default_rng(1)
    base = rng.random(4000) + 0.5
    other = base + rng.normal(0.0, 0.2, size=4000)
    small, large = paired_bootstrap(other[:1000], base[:1000]), paired_bootstrap(other, base)
    assert small["resolution_rel"] == pytest.approx((small["hi"] - small["lo"]) / 2 / base[:1000].mean())
    assert 1.7 < small["resolution_rel"] / large["resolution_rel"] < 2.3
    assert np.isnan(paired_bootstrap(np.zeros(0), np.zeros(0))["resolution_rel"])


def test_segments_label_users_and_items() -> None:
    from crossrec.evaluation import ITEM_SEGMENTS, USER_SEGMENTS, item_segment_of, segment_metrics, user_segment_of

    u = user_segment_of(np.array([0, 1, 2, 3, 10]))
    assert u.tolist() == [USER_SEGMENTS[1], USER_SEGMENTS[2], USER_SEGMENTS[2], USER_SEGMENTS[3], USER_SEGMENTS[3]]
    i = item_segment_of(np.array([0, 1, 4, 5]))
    assert i.tolist() == [ITEM_SEGMENTS[0], ITEM_SEGMENTS[1], ITEM_SEGMENTS[1], ITEM_SEGMENTS[2]]
    seg = segment_metrics(np.array([1, 100, 1, 1]), i, ITEM_SEGMENTS)
    assert seg[ITEM_SEGMENTS[1]]["n_users"] == 2 and seg[ITEM_SEGMENTS[1]]["Recall@10"] == 0.5
    assert seg[ITEM_SEGMENTS[0]]["NDCG@10"] == 1.0 and seg[ITEM_SEGMENTS[2]]["n_users"] == 1


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


def test_rank_batch_equals_mask_then_rank_on_random_tie_heavy_scores() -> None:
    """The copy-free rank_batch must give exactly mask_history + ranks_of_targets (same tie draws)."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(300, 40)).astype(np.float32)  # many ties
    targets = rng.integers(0, 40, size=300)
    hist = [rng.choice(40, size=int(rng.integers(0, 6)), replace=False).tolist() for _ in range(300)]
    hist[0] = [int(targets[0])]  # a masked target: a miss
    fast = rank_batch(scores, targets, hist)
    slow = ranks_of_targets(mask_history(scores, hist), targets)
    assert fast.tolist() == slow.tolist() and fast[0] == MISSED
