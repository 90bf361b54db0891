"""Full-ranking evaluation: metrics as a registry of pure functions over rank arrays.

Why full ranking: sampled-negative metrics are known to reorder models, so every held-out item is
ranked against ALL candidate items of the target domain. Items already in the user's history are
masked (score -inf) before ranking, exactly as design.md section 4 prescribes.

The protocol has one held-out item per user, so everything here works on the 1-based rank of that
item. Ties are broken by candidate index (a lower index wins), which makes ranks deterministic and
identical to what a stable ``argsort``/top-k would show a user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

MetricFn = Callable[[np.ndarray], np.ndarray]
METRICS: dict[str, MetricFn] = {}


def metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Register a per-user metric ``f(ranks) -> values`` under ``name``."""

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return wrap


def _at_k(k: int) -> tuple[MetricFn, MetricFn, MetricFn, MetricFn]:
    def recall(ranks: np.ndarray) -> np.ndarray:
        return (ranks <= k).astype(np.float64)

    def precision(ranks: np.ndarray) -> np.ndarray:
        return (ranks <= k).astype(np.float64) / k

    def f1(ranks: np.ndarray) -> np.ndarray:
        p, r = precision(ranks), recall(ranks)
        denom = p + r
        return np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)

    def ndcg(ranks: np.ndarray) -> np.ndarray:
        # one relevant item -> ideal DCG is 1
        out = np.zeros(len(ranks), dtype=np.float64)
        hit = ranks <= k
        out[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
        return out

    return recall, precision, f1, ndcg


for _k in (10, 50):
    _r, _p, _f, _n = _at_k(_k)
    metric(f"Recall@{_k}")(_r)
    metric(f"NDCG@{_k}")(_n)
    if _k == 10:
        metric(f"Precision@{_k}")(_p)
        metric(f"F1@{_k}")(_f)


@metric("MRR")
def mrr(ranks: np.ndarray) -> np.ndarray:
    return 1.0 / ranks.astype(np.float64)


MISSED = np.iinfo(np.int64).max // 2  # rank of a target that cannot be recommended

HEADLINE = ("NDCG@10", "Recall@10", "Recall@50", "MRR", "Precision@10", "F1@10")


def mask_history(scores: np.ndarray, history: Sequence[Iterable[int]]) -> np.ndarray:
    """Return a copy of ``scores`` with each user's history items set to -inf.

    ``history[u]`` holds candidate indices (target-domain items the user already has); indices
    outside the candidate set must have been dropped by the caller.
    """
    out = np.array(scores, dtype=np.float64, copy=True)
    if out.ndim != 2 or len(history) != out.shape[0]:
        raise ValueError(f"scores must be (users, items) with one history per user; got {out.shape} and {len(history)}")
    for u, items in enumerate(history):
        idx = np.fromiter(items, dtype=np.int64)
        if idx.size:
            out[u, idx] = -np.inf
    return out


def ranks_of_targets(scores: np.ndarray, targets: Sequence[int] | np.ndarray) -> np.ndarray:
    """1-based rank of each user's target among all candidates (already masked scores).

    rank = 1 + #(strictly higher) + #(equal with a lower index). A masked target (it was in the
    history) gets rank n_items + 1, i.e. a miss for every metric; the caller counts those.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    n_users, n_items = scores.shape
    if targets.shape != (n_users,):
        raise ValueError("one target per user is required")
    if n_users and (targets.min() < 0 or targets.max() >= n_items):
        raise ValueError("target index outside the candidate set")
    t = scores[np.arange(n_users), targets][:, None]
    higher = (scores > t).sum(axis=1)
    cols = np.arange(n_items)[None, :]
    ties_before = ((scores == t) & (cols < targets[:, None])).sum(axis=1)
    ranks = 1 + higher + ties_before
    ranks[np.isneginf(t[:, 0])] = MISSED
    return ranks.astype(np.int64)


def rank_batch(scores: np.ndarray, targets: Sequence[int], history: Sequence[Iterable[int]]) -> np.ndarray:
    """Mask then rank: the one call the trainer makes per evaluation batch."""
    return ranks_of_targets(mask_history(scores, history), targets)


def compute_metrics(ranks: np.ndarray, names: Sequence[str] | None = None) -> dict[str, float]:
    """Mean of each registered metric over users (empty input -> NaN, never a crash)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    out: dict[str, float] = {}
    for name in names or METRICS:
        fn = METRICS[name]
        out[name] = float(fn(ranks).mean()) if ranks.size else float("nan")
    out["n_users"] = int(ranks.size)
    return out
