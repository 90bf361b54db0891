"""Model + history -> ranked ``RecItem``s with explanations: the one path the consumer and the
batch publisher share, so a list computed at night and one refreshed by an event look the same.

The explanation of each recommended item is the history item whose adapted vector f_i is most
similar to it. f_i lives in the space the adaptor shares across domains, so an Office
recommendation can be explained by an Art purchase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from crossrec.adaptation.inference import History, Recommender
from crossrec.keys import RecItem, RoutedItems, route_of
from crossrec.publish import explain, most_similar, unit_rows


def explained(recommender: Recommender, history: History, top: Sequence[tuple[str, float]]) -> list[RecItem]:
    """Attach to each (item_id, score) the history item that explains it (None without history)."""
    if not top:
        return []
    known = [key for key in history if recommender.has_item(*key)]
    if not known:
        return [RecItem(item_id, score, None) for item_id, score in top]
    rec_vecs = recommender.vectors_for([(recommender.target_domain, item_id) for item_id, _ in top])
    because = explain(rec_vecs, recommender.vectors_for(known), [item_id for _, item_id in known])
    return [RecItem(item_id, score, reason) for (item_id, score), reason in zip(top, because)]


def recommend(recommender: Recommender, history: History, k: int) -> list[RecItem]:
    return explained(recommender, history, recommender.score_history(history, k))


def recommend_many(recommender: Recommender, histories: Mapping[str, History], k: int) -> dict[str, list[RecItem]]:
    """Each user's explained list; a routed model's lists stay ``RoutedItems`` with their route."""
    tops = recommender.top_k_for_users(histories, k)
    lists = explained_many(recommender, histories, tops)
    return {user: with_route(items, route_of(tops[user])) for user, items in lists.items()}


def explained_many(
    recommender: Recommender, histories: Mapping[str, History], tops: Mapping[str, Sequence[tuple[str, float]]]
) -> dict[str, list[RecItem]]:
    """``explained`` for many users: the same explanations, every vector fetched and normalised once.

    Per user ``explained`` looks its items up and normalises their vectors itself; here all
    history items of the batch are looked up in one call, each distinct item's vector is
    fetched and normalised once, and each user's similarity matrix is the same (k, h) product
    ``explain`` computes (its known history items, in order), so ties and rounding resolve
    identically.
    """
    users = list(tops)
    keys = [key for user in users for key in histories[user]]
    rows = recommender.rows_for(keys)
    known = rows >= 0
    hist_rows, hist_pos = np.unique(rows[known], return_inverse=True)
    pos = np.full(len(keys), -1, np.int64)
    pos[known] = hist_pos
    rec_ids = list(dict.fromkeys(item_id for user in users for item_id, _ in tops[user]))
    rec_pos = {item_id: j for j, item_id in enumerate(rec_ids)}
    target = recommender.target_domain
    hist_units = unit_rows(recommender.vectors_at(hist_rows))
    rec_units = unit_rows(recommender.vectors_at(recommender.rows_for([(target, i) for i in rec_ids]))) if rec_ids else hist_units
    out: dict[str, list[RecItem]] = {}
    start = 0
    for user in users:
        top, n = tops[user], len(histories[user])
        user_pos = pos[start : start + n]
        at = np.flatnonzero(user_pos >= 0)  # the user's known history items, in history order
        if top and at.size:
            best = most_similar(rec_units[[rec_pos[item_id] for item_id, _ in top]], hist_units[user_pos[at]])
            because = [keys[start + int(j)][1] for j in at[best]]
            out[user] = [RecItem(item_id, score, b) for (item_id, score), b in zip(top, because)]
        else:
            out[user] = [RecItem(item_id, score, None) for item_id, score in top]
        start += n
    return out


def with_route(items: list[RecItem], route: str | None) -> list[RecItem]:
    return items if route is None else RoutedItems(items, route)
