"""Full-ranking evaluation: metrics as a registry of pure functions over rank arrays.

Why full ranking: sampled-negative metrics are known to reorder models, so every held-out item is
ranked against ALL candidate items of the target domain. Items already in the user's history are
masked (score -inf) before ranking, exactly as design.md section 4 prescribes.

The protocol has one held-out item per user, so everything here works on the 1-based rank of that
item. Ties are broken at random with a fixed seed (the target lands uniformly among the items tied
with it): breaking them by candidate index would hand tie-heavy scorers (item-KNN, cold views) a
hidden popularity prior, because the catalogue is sorted by id and low ids are the popular ones.
The seed makes the ranks reproducible run to run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

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


TIE_SEED = 0


def ranks_of_targets(scores: np.ndarray, targets: Sequence[int] | np.ndarray, tie_seed: int | None = TIE_SEED) -> np.ndarray:
    """1-based rank of each user's target among all candidates (already masked scores).

    rank = 1 + #(strictly higher) + U, with U uniform on {0, ..., #(other items tied with it)}
    drawn from a generator seeded with ``tie_seed`` (``None``: the old lower-index-wins rule, kept
    only for callers that must match a stable sort). A masked target (it was in the history) gets
    rank ``MISSED``, i.e. a miss for every metric; the caller counts those.
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
    if tie_seed is None:
        cols = np.arange(n_items)[None, :]
        ties_before = ((scores == t) & (cols < targets[:, None])).sum(axis=1)
    else:
        n_tied = (scores == t).sum(axis=1)  # includes the target itself (>= 1 unless masked)
        u = np.random.default_rng(tie_seed).random(n_users)
        ties_before = np.minimum((u * np.maximum(n_tied, 1)).astype(np.int64), np.maximum(n_tied - 1, 0))
    ranks = 1 + higher + ties_before
    ranks[np.isneginf(t[:, 0])] = MISSED
    return ranks.astype(np.int64)


def rank_batch(scores: np.ndarray, targets: Sequence[int], history: Sequence[Iterable[int]], tie_seed: int | None = TIE_SEED) -> np.ndarray:
    """Mask then rank: the one call the trainer makes per evaluation batch.

    Same result as ``ranks_of_targets(mask_history(scores, history), targets)`` without copying the
    score matrix: the comparisons run on the raw scores and each user's masked items are then taken
    back out of the counts (a few items per user against tens of thousands of candidates). Why:
    blends and routes are fitted by ranking thousands of users over the full catalogue many times.
    """
    if tie_seed is None:
        return ranks_of_targets(mask_history(scores, history), targets, None)
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    n_users, n_items = scores.shape if scores.ndim == 2 else (-1, -1)
    if scores.ndim != 2 or len(history) != n_users:
        raise ValueError(f"scores must be (users, items) with one history per user; got {scores.shape} and {len(history)}")
    if targets.shape != (n_users,):
        raise ValueError("one target per user is required")
    if n_users and (targets.min() < 0 or targets.max() >= n_items):
        raise ValueError("target index outside the candidate set")
    t = scores[np.arange(n_users), targets]
    higher = (scores > t[:, None]).sum(axis=1)
    n_tied = (scores == t[:, None]).sum(axis=1)
    missed = np.isneginf(t.astype(np.float64))
    for u, items in enumerate(history):
        idx = np.unique(np.fromiter(items, dtype=np.int64))
        if idx.size == 0:
            continue
        if (idx == targets[u]).any():
            missed[u] = True
            continue
        row = scores[u, idx]
        higher[u] -= int((row > t[u]).sum())
        n_tied[u] -= int((row == t[u]).sum())
    rnd = np.random.default_rng(tie_seed).random(n_users)
    ties_before = np.minimum((rnd * np.maximum(n_tied, 1)).astype(np.int64), np.maximum(n_tied - 1, 0))
    ranks = (1 + higher + ties_before).astype(np.int64)
    ranks[missed] = MISSED
    return ranks


def compute_metrics(ranks: np.ndarray, names: Sequence[str] | None = None) -> dict[str, float]:
    """Mean of each registered metric over users (empty input -> NaN, never a crash)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    out: dict[str, float] = {}
    for name in names or METRICS:
        fn = METRICS[name]
        out[name] = float(fn(ranks).mean()) if ranks.size else float("nan")
    out["n_users"] = int(ranks.size)
    return out


def per_user(ranks: np.ndarray, name: str = "NDCG@10") -> np.ndarray:
    """Per-user values of one metric (what a paired bootstrap resamples)."""
    return METRICS[name](np.asarray(ranks, dtype=np.int64))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """CI of mean(a) - mean(b) over users resampled with replacement (paired: same users in both).

    Why paired: two scorers evaluated on the same users share the per-user difficulty, so the
    spread of the *difference* is much smaller than either spread; that is what decides whether a
    5 % gap on a thousand users is signal. ``includes_zero`` is the keep-the-simpler-choice flag.
    ``resolution_rel`` is half the interval's width over ``mean(b)``: about the smallest relative
    difference these users can separate from zero, so a report can say when a set of users is too
    small for the differences it is asked to decide.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same users on both sides; got {a.shape} and {b.shape}")
    if a.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "rel": float("nan"), "includes_zero": True, "n_users": 0, "resolution_rel": float("nan")}
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
    base = float(b.mean())
    return {
        "diff": float(d.mean()),
        "lo": lo,
        "hi": hi,
        "rel": float(d.mean() / base) if base > 0 else float("inf"),
        "includes_zero": bool(lo <= 0.0 <= hi),
        "n_users": int(d.size),
        "resolution_rel": (hi - lo) / 2 / base if base > 0 else float("inf"),
    }


USER_SEGMENTS = ("no target history (constructed)", "no target history (natural)", "1-2 target events", "3+ target events")
ITEM_SEGMENTS = ("item unseen in training", "item 1-4 training interactions", "item 5+ training interactions")
TAIL_MAX_COUNT = 5  # an item with fewer training interactions is a tail item: the first two item segments
TAIL_SEGMENTS = ITEM_SEGMENTS[:2]


def user_segment_of(n_target_hist: np.ndarray) -> np.ndarray:
    """Segment label per user from the number of target-domain events before the held-out one."""
    n = np.asarray(n_target_hist)
    return np.where(n == 0, USER_SEGMENTS[1], np.where(n <= 2, USER_SEGMENTS[2], USER_SEGMENTS[3]))


def item_segment_of(train_counts: np.ndarray) -> np.ndarray:
    """Segment label per held-out item from its number of training interactions."""
    c = np.asarray(train_counts)
    return np.where(c == 0, ITEM_SEGMENTS[0], np.where(c < TAIL_MAX_COUNT, ITEM_SEGMENTS[1], ITEM_SEGMENTS[2]))


def pooled(seg: Mapping[str, Mapping[str, float]], labels: Sequence[str], metric: str = "NDCG@10") -> tuple[float, int]:
    """(mean of ``metric`` over the union of segments ``labels``, weighted by their user counts; its users)."""
    n = sum(int(seg[lab]["n_users"]) for lab in labels)
    if n == 0:
        return float("nan"), 0
    return sum(seg[lab][metric] * seg[lab]["n_users"] for lab in labels if seg[lab]["n_users"]) / n, n


def segment_metrics(ranks: np.ndarray, labels: np.ndarray, order: Sequence[str]) -> dict[str, dict[str, float]]:
    """compute_metrics per segment label (every label in ``order``; empty ones report n_users 0)."""
    ranks, labels = np.asarray(ranks), np.asarray(labels)
    return {seg: compute_metrics(ranks[labels == seg]) for seg in order}
