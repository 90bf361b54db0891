"""Tail slots: the last places of a routed top ten go to the rarely-seen items nearest by text.

Why: a blend fitted on overall NDCG@10 ranks by what the interactions know, so items with few or no
training interactions (the tail: fewer than ``TAIL_MAX_COUNT``) rarely reach the top ten even when
their text is the closest to the user's last target item. The training-free text scorer alone ranks
those items about three times better than the ID baseline does, but putting it into the blend with a
large weight costs the head more than it gives the tail. Reserving the last ``s`` of the first
``WINDOW`` places for the tail items nearest the user's last target item by text (``text_knn``) is
the usual way a catalogue exposes its new items: the top ``WINDOW - s`` places stay the route's.

The ranking with ``s`` slots: places 1..WINDOW-s are the route's first items, places
WINDOW-s+1..WINDOW are the tail items with the highest ``text_knn`` score (positive, not in the
user's history, not already placed), then the route's order continues without the items the slots
took. A user without such items (no target history, or no tail neighbour) keeps the route's list.

The choice is a trade, so it is made as one, per segment, on the selection set: ``s`` is kept only
when the tail events' paired bootstrap CI of the gain excludes zero and the overall NDCG@10 is
non-inferior, its CI's lower bound above ``-margin`` x the route's own mean (``margin`` is
``TrainConfig.tail_slot_margin``: the loss a deployment accepts for exposing its tail; 0 turns slots
off). Otherwise the route's list is served unchanged and the table says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from crossrec.evaluation import TAIL_MAX_COUNT, paired_bootstrap

WINDOW = 10  # the slots are the last places of the first WINDOW (the cutoff the choice is made at)
SLOT_GRID = (1, 2)


def tail_items(train_counts: np.ndarray) -> np.ndarray:
    """Boolean per target item: fewer than ``TAIL_MAX_COUNT`` training interactions."""
    return np.asarray(train_counts) < TAIL_MAX_COUNT


def pick_slots(route_order: Sequence[int], slot_items: Sequence[int], s: int) -> list[int]:
    """What ``s`` slots hold: the first ``s`` of ``slot_items`` (best first) that are not among
    the route's first ``WINDOW - s`` items."""
    if s <= 0:
        return []
    head = set(route_order[: max(0, WINDOW - s)])
    return [c for c in slot_items if c not in head][:s]


def merge(route_order: Sequence[int], slot_items: Sequence[int], s: int, k: int) -> list[int]:
    """The first ``k`` of the ranking with ``s`` tail slots: the route's first ``WINDOW - s``
    items, then the slots (``pick_slots``), then the route's order without what the slots took.
    ``route_order`` must hold at least ``k + s`` items when the route has them, so the list is
    still ``k`` long after the slots' removals."""
    head = list(route_order[: max(0, WINDOW - s)])
    slots = pick_slots(route_order, slot_items, s)
    taken = set(slots)
    rest = [x for x in route_order[len(head) :] if x not in taken]
    return (head + slots + rest)[:k]


def slot_pool(text_scores: torch.Tensor, is_tail: np.ndarray, masked: torch.Tensor | None = None, depth: int = WINDOW + max(SLOT_GRID)) -> np.ndarray:
    """(users, depth) target columns, -1 padded: each user's tail items by descending ``text_knn``
    score, positive scores only. ``masked`` (same shape, bool) marks the columns a user may not get
    (their history). ``depth`` covers every slot after the route's head items are skipped."""
    n, m = text_scores.shape
    if n == 0 or m == 0:
        return np.full((n, 0), -1, np.int64)
    allowed = torch.from_numpy(np.asarray(is_tail[:m], dtype=bool))[None, :] & (text_scores > 0)
    if masked is not None:
        allowed &= ~masked
    t = torch.where(allowed, text_scores, torch.full_like(text_scores, -np.inf))
    top = torch.topk(t, min(depth, m), dim=1)
    cols = top.indices.numpy().astype(np.int64)
    cols[~np.isfinite(top.values.numpy())] = -1
    return cols


def slot_items_for(pool: np.ndarray, route_head: np.ndarray, s: int) -> np.ndarray:
    """(users, s) the items each user's ``s`` slots hold (-1: an unfilled slot): the pool's first
    items not among the route's first ``WINDOW - s`` (``route_head``, -1 padded)."""
    out = np.full((pool.shape[0], s), -1, np.int64)
    for u in range(pool.shape[0]):
        picked = pick_slots(route_head[u].tolist(), [c for c in pool[u].tolist() if c >= 0], s)
        out[u, : len(picked)] = picked
    return out


def ranks_with_slots(scores: np.ndarray, base_ranks: np.ndarray, targets: np.ndarray, slot_items: np.ndarray) -> np.ndarray:
    """1-based ranks of the held-out items in the ranking with slots, from the route's ranks.

    ``slot_items`` (users, s) come from ``slot_items_for``, so none is among the route's first
    ``WINDOW - s``. A held-out item in a slot takes that slot's place; one in the route's head keeps
    its rank; one further down moves down by the slot items the route scored below it (they now
    stand above it; a slot item whose score ties with it is not counted).
    """
    s = slot_items.shape[1]
    ranks = np.asarray(base_ranks, np.int64).copy()
    for u in range(len(ranks)):
        filled = slot_items[u][slot_items[u] >= 0]
        if filled.size == 0:
            continue
        hit = np.flatnonzero(filled == targets[u])
        if hit.size:
            ranks[u] = WINDOW - s + 1 + int(hit[0])
        elif ranks[u] > WINDOW - s:
            ranks[u] += int((scores[u, filled] < scores[u, targets[u]]).sum())
    return ranks


def choose_tail_slots(per_user: Mapping[int, np.ndarray], tail_event: np.ndarray, margin: float) -> tuple[int, dict[str, dict], str]:
    """(slots kept, each candidate's evidence, reason) from per-user selection NDCG@10 with
    ``s`` slots (``per_user[0]``: the route's own list); ``tail_event`` marks the users whose
    held-out item is a tail item. Among the ``s`` whose tail gain's CI excludes zero and whose
    overall CI lower bound is above ``-margin`` x the route's mean, the one with the largest tail
    gain is kept; none: 0."""
    base = per_user[0]
    tail_event = np.asarray(tail_event, bool)
    base_mean = float(base.mean()) if base.size else 0.0
    evidence: dict[str, dict] = {}
    ok: list[int] = []
    for s, vals in per_user.items():
        if s == 0:
            continue
        overall = paired_bootstrap(vals, base)
        tail = paired_bootstrap(vals[tail_event], base[tail_event]) if tail_event.any() else {"diff": 0.0, "lo": 0.0, "hi": 0.0, "rel": 0.0}
        floor = -margin * base_mean
        passes = margin > 0 and tail["lo"] > 0 and overall["lo"] >= floor
        evidence[str(s)] = {"overall": overall, "tail": tail, "non_inferiority_floor": floor, "kept": False}
        if passes:
            ok.append(s)
    n_tail = int(tail_event.sum())
    if margin <= 0:
        return 0, evidence, "tail slots off (tail_slot_margin 0)"
    if all(np.array_equal(vals, base) for vals in per_user.values()):
        return 0, evidence, "no tail slots: they would move no selection user's held-out item (no tail item near these users' last target item)"
    if not ok:
        parts = [f"{s} slot(s): tail {_gain(e['tail'])} (CI lo {e['tail']['lo']:+.4f}), overall {_gain(e['overall'])} (CI lo {e['overall']['lo']:+.4f}, floor {e['non_inferiority_floor']:+.4f})" for s, e in evidence.items()]
        return 0, evidence, f"no tail slots: none gains on the {n_tail} tail events with a CI above zero while overall stays within -{margin:.0%} ({'; '.join(parts)})"
    best = max(ok, key=lambda s: float(per_user[s][tail_event].mean()))
    e = evidence[str(best)]
    e["kept"] = True
    return best, evidence, (
        f"{best} tail slot(s): the {n_tail} tail events gain {_gain(e['tail'])} (95% CI [{e['tail']['lo']:+.4f}, {e['tail']['hi']:+.4f}]); "
        f"overall {_gain(e['overall'])} (CI [{e['overall']['lo']:+.4f}, {e['overall']['hi']:+.4f}], within the -{margin:.0%} margin)"
    )


def _gain(ci: Mapping[str, float]) -> str:
    """A CI's gain as a percentage of the baseline, or in NDCG@10 when the baseline is zero."""
    rel = float(ci.get("rel", 0.0))
    return f"{rel:+.1%}" if np.isfinite(rel) else f"{float(ci['diff']):+.4f} NDCG@10 (from zero)"
