"""Tail slots: the merged ranking, its offline ranks, and the choice on the selection set.

Pure logic on small generated arrays; serving through the slots is tested in
``test_routed_serving.py`` against a registered artifact.
"""

from __future__ import annotations

import numpy as np

from crossrec.adaptation.data import EvalSet
from crossrec.adaptation.routing import slotted_ranks
from crossrec.adaptation.tail_slots import WINDOW, choose_tail_slots, merge, tail_items


def test_merge_gives_the_last_places_of_the_top_ten_to_tail_items_not_already_above() -> None:
    order = list(range(15))
    assert merge(order, [20, 3, 21], 1, 12) == [*range(9), 20, 9, 10]
    # 3 is already in the route's first eight: the slots take the next candidates
    assert merge(order, [20, 3, 21], 2, 12) == [*range(8), 20, 21, 8, 9]
    # a candidate the route ranked just below the head moves up into the slot, and only once
    assert merge(order, [9], 1, 12) == [*range(10), 10, 11]
    assert merge(order, [12], 1, 12) == [*range(9), 12, 9, 10]
    assert merge(order, [], 2, 12) == order[:12]  # no tail item to offer: the route's list
    assert merge(order, [20], 1, 5) == order[:5]  # a list shorter than the window shows no slot
    assert merge(order, [20], 0, 12) == order[:12]
    assert tail_items(np.array([0, 4, 5, 9])).tolist() == [True, True, False, False]


def _eval_set(targets: np.ndarray, masks: list[np.ndarray]) -> EvalSet:
    n = len(targets)
    return EvalSet([f"u{i}" for i in range(n)], [np.zeros(0, np.int64)] * n, masks, targets, np.zeros(n, bool))


def test_offline_ranks_with_slots_equal_the_position_in_the_merged_ranking() -> None:
    """``slotted_ranks`` (what the evaluation and the choice use) against building each user's
    whole merged ranking with ``merge`` and finding the held-out item in it."""
    rng = np.random.default_rng(3)
    n, m = 300, 60
    scores = rng.normal(size=(n, m)).astype(np.float32)
    text = np.where(rng.random((n, m)) < 0.3, rng.random((n, m)), 0.0).astype(np.float32)
    is_tail = rng.random(m) < 0.5
    masks = [rng.choice(m, size=rng.integers(0, 6), replace=False).astype(np.int64) for _ in range(n)]
    targets = np.empty(n, np.int64)
    for u in range(n):
        free = np.setdiff1d(np.arange(m), masks[u])
        pool = [c for c in np.argsort(-text[u], kind="stable") if text[u, c] > 0 and is_tail[c] and c not in masks[u]]
        # a third of the users hold out one of their best tail candidates, so slots are hit
        targets[u] = pool[rng.integers(0, min(3, len(pool)))] if pool and u % 3 == 0 else rng.choice(free)
    ev = _eval_set(targets, masks)
    rows = np.arange(n)
    got = slotted_ranks(scores, text, ev, rows, is_tail, (0, 1, 2))
    hits = 0
    for s in (0, 1, 2):
        for u in range(n):
            keep = np.setdiff1d(np.arange(m), masks[u])
            order = keep[np.argsort(-scores[u, keep], kind="stable")].tolist()
            pool = [int(c) for c in np.argsort(-text[u], kind="stable") if text[u, c] > 0 and is_tail[c] and c not in masks[u]]
            ranking = merge(order, pool, s, len(order))
            assert got[s][u] == ranking.index(targets[u]) + 1, (s, u)
            hits += s > 0 and WINDOW - s < got[s][u] <= WINDOW and targets[u] in pool
    assert hits > 20  # the slots were exercised, not only the route's order
    assert not np.array_equal(got[1], got[0])


def _per_user(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    return np.where(rng.random(n) < p, 1.0 / np.log2(rng.integers(2, 12, n)), 0.0)


def test_slots_are_kept_only_for_a_clear_tail_gain_within_the_overall_margin() -> None:
    rng = np.random.default_rng(0)
    n = 6000
    tail = rng.random(n) < 0.35
    base = _per_user(rng, n, 0.12)
    # one slot: a third more tail hits, a few head hits lost (well within 1 %)
    gain = np.where(tail & (base == 0) & (rng.random(n) < 0.05), 0.3, 0.0)
    loss = np.where(~tail & (base > 0) & (rng.random(n) < 0.01), -0.02, 0.0)
    one = base + gain + loss
    # two slots: more for the tail, but a real overall loss
    two = one + np.where(tail & (one == 0) & (rng.random(n) < 0.03), 0.3, 0.0) - np.where(~tail & (one > 0.2) & (rng.random(n) < 0.3), one, 0.0)
    s, evidence, reason = choose_tail_slots({0: base, 1: one, 2: two}, tail, margin=0.01)
    assert s == 1 and evidence["1"]["kept"] and not evidence["2"]["kept"], reason
    assert evidence["1"]["tail"]["lo"] > 0 and evidence["1"]["overall"]["lo"] >= evidence["1"]["non_inferiority_floor"]
    assert evidence["2"]["overall"]["lo"] < evidence["2"]["non_inferiority_floor"]
    assert reason.startswith("1 tail slot(s)") and "within the -1% margin" in reason
    # the same evidence with no margin: off
    s, _, reason = choose_tail_slots({0: base, 1: one, 2: two}, tail, margin=0.0)
    assert s == 0 and "off" in reason
    # a tail change inside the noise is not a reason to take a place from the route
    noisy = base + np.where(tail, rng.normal(0, 0.01, n), 0.0)
    s, evidence, reason = choose_tail_slots({0: base, 1: noisy}, tail, margin=0.05)
    assert s == 0 and evidence["1"]["tail"]["lo"] <= 0 and reason.startswith("no tail slots")
    # slots that move nothing (no tail item near any user's last target item) say so; a zero
    # baseline is quoted in NDCG@10, not as an infinite percentage
    s, _, reason = choose_tail_slots({0: base, 1: base.copy()}, tail, margin=0.05)
    assert s == 0 and "would move no selection user's" in reason
    zero = np.zeros(n)
    s, _, reason = choose_tail_slots({0: zero, 1: np.where(tail & (rng.random(n) < 0.1), 0.5, 0.0)}, tail, margin=0.05)
    assert s == 1 and "inf" not in reason and "(from zero)" in reason
