"""Tonight's candidate and the current model, both scored on today's validation users.

Why: the current model's stored validation number was measured on the data of the night it was
trained. Users, histories and items have moved since, so comparing tonight's candidate with that
number compares two different exams. Here both registry versions are loaded exactly as serving
loads them (:class:`~crossrec.adaptation.inference.Recommender`, item vectors from the artifact),
and ranked on the same users, the same held-out events and the same full target catalogue; a
target item the older model never saw is a miss for it, which is the cost of its staleness. The
per-user NDCG@10 pairs give the paired bootstrap CI of the difference (crossrec.evaluation), the
same test the adapt gate uses: when it includes zero the difference is not signal.
"""

from __future__ import annotations

from typing import Any

from crossrec.evaluation import compute_metrics, paired_bootstrap, per_user

METRIC = "NDCG@10"


def rescore(data, registry, candidate: str, current: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Score both versions on today's validation users; the numbers and the paired CI (cand - cur)."""
    from crossrec.adaptation.data import valid_key_histories
    from crossrec.adaptation.inference import Recommender

    hists, targets = valid_key_histories(data)
    ranks = {v: Recommender(v, registry.path(v)).ranks(hists, targets) for v in dict.fromkeys([candidate, current])}
    cand, cur = ranks[candidate], ranks[current]
    return {
        "metric": METRIC,
        "n_users": len(targets),
        "data_fingerprint": data.fingerprint,
        "candidate": {"version": candidate, METRIC: compute_metrics(cand)[METRIC]},
        "current": {"version": current, METRIC: compute_metrics(cur)[METRIC]},
        "ci": paired_bootstrap(per_user(cand), per_user(cur)),
    }


def summarise(record: dict[str, Any] | None) -> str:
    """One line: what the two models scored today and the CI of the difference."""
    if not record:
        return "no re-scoring on today's data"
    ci = record["ci"]
    return (f"on today's {record['n_users']} validation users: candidate {record['candidate']['version']} "
            f"{record['candidate'][METRIC]:.4f}, current {record['current']['version']} {record['current'][METRIC]:.4f}; "
            f"paired 95% CI of the difference [{ci['lo']:+.4f}, {ci['hi']:+.4f}]")


__all__ = ["rescore", "summarise"]
