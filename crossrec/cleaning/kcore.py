"""Optional per-domain k-core filter (a training-set choice, so off unless asked for).

Within each domain, repeatedly drop users with fewer than ``k`` events there and items with fewer
than ``k`` events, until nothing changes: the classic iterative k-core, computed per domain so
that a user who is sparse in one domain keeps their events in the other. Counts are of events
after de-duplication.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from crossrec.cleaning import reasons as R


def kcore_filter(events: DataFrame, k: int, max_iter: int = 100) -> tuple[DataFrame, DataFrame]:
    """(kept, removed-with-reason ``kcore``); ``events`` needs unique ``event_id``."""
    if k < 1:
        raise ValueError(f"k-core needs k >= 1, got {k}")
    current = events.select("event_id", "domain", "user_id", "item_id").localCheckpoint()
    size = current.count()
    for _ in range(max_iter):
        users = current.groupBy("domain", "user_id").count().filter(F.col("count") >= k)
        items = current.groupBy("domain", "item_id").count().filter(F.col("count") >= k)
        nxt = (
            current.join(users.select("domain", "user_id"), ["domain", "user_id"], "left_semi")
            .join(items.select("domain", "item_id"), ["domain", "item_id"], "left_semi")
            .localCheckpoint()
        )
        new_size = nxt.count()
        current = nxt
        if new_size == size:
            break
        size = new_size
    keep_ids = current.select("event_id")
    kept = events.join(keep_ids, "event_id", "left_semi")
    removed = events.join(keep_ids, "event_id", "left_anti").withColumn("reason", F.lit(R.KCORE))
    return kept, removed
