"""Exact and near duplicate removal over validated events.

- Exact duplicate: same ``event_id``. A given id is the producer's identity of the event
  (idempotent re-sends share it); without one the id is a hash of the content, so identical
  rows share it. The earliest copy (then the smallest raw text) is kept.
- Near duplicate: same user, domain, item and event type as the previous remaining event of
  that group, at most ``window_s`` seconds later (double clicks, client retries with new ids).
  The comparison is with the *previous event*, so a burst of repeats closer together than the
  window collapses to its first event. ``window_s=None`` turns near-dup removal off; ``0``
  removes only repeats with the identical timestamp.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from crossrec.cleaning import reasons as R


def label_duplicates(valid: DataFrame, window_s: float | None) -> DataFrame:
    """``valid`` (events that passed the per-row checks) with ``reason`` set on duplicates.

    One frame out, same rows as in: both windows are evaluated in the same pass, and the caller
    splits kept/rejected by ``reason`` after persisting, so the windows run once.
    """
    exact_rank = F.row_number().over(Window.partitionBy("event_id").orderBy("ts_ms", "raw"))
    # Hash by user once: the near-dup window and the later per-user windows of ``split`` are all
    # keyed by user_id first, so they reuse this one shuffle instead of one each.
    ranked = valid.withColumn("_first", exact_rank == 1).repartition("user_id")
    reason = F.when(~F.col("_first"), F.lit(R.EXACT_DUPLICATE))
    if window_s is not None and window_s >= 0:
        # Exact duplicates sit in their own window partition, so they never hide a near one.
        group = Window.partitionBy(
            "user_id", "domain", "item_id", "event_type", "_first"
        ).orderBy("ts_ms", "event_id")
        gap = F.col("ts_ms") - F.lag("ts_ms").over(group)
        window_ms = int(round(window_s * 1000))
        reason = reason.when(F.coalesce(gap <= window_ms, F.lit(False)), F.lit(R.NEAR_DUPLICATE))
    return ranked.withColumn("reason", reason).drop("_first")
