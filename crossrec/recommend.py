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
from crossrec.keys import RecItem
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
    tops = recommender.top_k_for_users(histories, k)
    return explained_many(recommender, histories, tops)


def explained_many(
    recommender: Recommender, histories: Mapping[str, History], tops: Mapping[str, Sequence[tuple[str, float]]]
) -> dict[str, list[RecItem]]:
    """``explained`` for many users: the same explanations, every vector fetched and normalised once.

    Per user ``explained`` fetches and normalises its vectors itself (two locked look-ups and two
    normalisations per user); here the batch's distinct items are fetched in two calls and
    normalised once, the row positions of all users are built in one pass, and each user's
    similarity matrix is the same (k, h) product ``explain`` computes, so ties and rounding
    resolve identically.
    """
    users = list(tops)
    keys = dict.fromkeys(key for user in users for key in histories[user])
    known = [key for key in keys if recommender.has_item(*key)]
    hist_pos = {key: j for j, key in enumerate(known)}
    seen = [[key for key in histories[user] if key in hist_pos] for user in users]
    rec_ids = list(dict.fromkeys(item_id for user in users for item_id, _ in tops[user]))
    rec_pos = {item_id: j for j, item_id in enumerate(rec_ids)}
    n_hist = [len(s) for s in seen]
    n_top = [len(tops[user]) for user in users]
    hist_rows = np.fromiter((hist_pos[key] for s in seen for key in s), np.int64, sum(n_hist))
    top_rows = np.fromiter((rec_pos[item_id] for user in users for item_id, _ in tops[user]), np.int64, sum(n_top))
    hist_units = unit_rows(recommender.vectors_for(known)) if known else np.zeros((0, 0), np.float32)
    rec_units = unit_rows(recommender.vectors_for([(recommender.target_domain, i) for i in rec_ids])) if rec_ids else hist_units
    out: dict[str, list[RecItem]] = {}
    h0 = t0 = 0
    for user, s, nh, nt in zip(users, seen, n_hist, n_top):
        top = tops[user]
        if nt and nh:
            best = most_similar(rec_units[top_rows[t0 : t0 + nt]], hist_units[hist_rows[h0 : h0 + nh]])
            out[user] = [RecItem(item_id, score, s[j][1]) for (item_id, score), j in zip(top, best.tolist())]
        else:
            out[user] = [RecItem(item_id, score, None) for item_id, score in top]
        h0 += nh
        t0 += nt
    return out
