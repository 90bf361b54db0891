"""Per-user time order, positions, the leave-last-out split and the sequence table.

Order within a user is (ts_ms, event_id): the id breaks timestamp ties deterministically, so
positions and splits never change between runs on the same input.
Split rule (design contract): the user's last target-domain event is ``test``, the target-domain
event before it ``valid``, everything else ``train``; users without target events are all train.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

TRAIN, VALID, TEST = "train", "valid", "test"


def assign_positions_and_splits(events: DataFrame, target_domain: str) -> DataFrame:
    """Adds ``position`` (int, 0-based in the user's mixed-domain sequence) and ``split``."""
    in_order = Window.partitionBy("user_id").orderBy("ts_ms", "event_id")
    from_end = Window.partitionBy("user_id", "domain").orderBy(F.desc("ts_ms"), F.desc("event_id"))
    rank_from_end = F.row_number().over(from_end)
    is_target = F.col("domain") == F.lit(target_domain)
    return events.withColumn("position", (F.row_number().over(in_order) - 1).cast("int")).withColumn(
        "split",
        F.when(is_target & (rank_from_end == 1), TEST)
        .when(is_target & (rank_from_end == 2), VALID)
        .otherwise(TRAIN),
    )


def build_sequences(events: DataFrame) -> DataFrame:
    """user_id, n_events, history = list<struct<domain, item_id, event_type, ts_ms>> in time order."""
    entries = F.sort_array(
        F.collect_list(F.struct("position", "domain", "item_id", "event_type", "ts_ms"))
    )
    history = F.transform(
        entries,
        lambda e: F.struct(
            e["domain"].alias("domain"),
            e["item_id"].alias("item_id"),
            e["event_type"].alias("event_type"),
            e["ts_ms"].alias("ts_ms"),
        ),
    )
    return events.groupBy("user_id").agg(
        F.count(F.lit(1)).cast("int").alias("n_events"), history.alias("history")
    )
