"""Model + history -> ranked ``RecItem``s with explanations: the one path the consumer and the
batch publisher share, so a list computed at night and one refreshed by an event look the same.

The explanation of each recommended item is the history item whose adapted vector f_i is most
similar to it. f_i lives in the space the adaptor shares across domains, so an Office
recommendation can be explained by an Art purchase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from crossrec.adaptation.inference import History, Recommender
from crossrec.keys import RecItem, RoutedItems, route_of
from crossrec.publish import explain


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
    return {user: with_route(explained(recommender, histories[user], top), route_of(top)) for user, top in tops.items()}


def with_route(items: list[RecItem], route: str | None) -> list[RecItem]:
    return items if route is None else RoutedItems(items, route)
