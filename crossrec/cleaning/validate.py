"""Per-row validation in Spark: every raw row gets its normalised fields and a ``reason``.

``reason`` is null for a good row, else the first failed check of ``crossrec.cleaning.reasons``
(the same order as ``normalize.validate_event`` / ``validate_item``). Rows are labelled, never
filtered here, so the row count out equals the row count in and nothing can be lost between
reading and the quarantine.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from crossrec.cleaning import normalize as N
from crossrec.cleaning import reasons as R
from crossrec.cleaning.spark_rules import (
    NEEDS_PYTHON_TEXT_RE,
    ascii_text_col,
    bad_user_id_col,
    event_id_col,
    id_col,
    key_col,
    normalize_text_udf,
    rating_cols,
    with_ts_ms,
)


def _first_failure(checks: list[tuple[Column, str]]) -> Column:
    expr = None
    for failed, reason in checks:
        expr = F.when(failed, F.lit(reason)) if expr is None else expr.when(failed, F.lit(reason))
    assert expr is not None
    return expr


def label_items(raw: DataFrame) -> DataFrame:
    """Normalised items + ``reason`` (malformed_json, missing_field:*, duplicate_item).

    Of several rows for the same (domain, item_id) the one with the most filled optional fields
    wins (ties: the smallest raw text, for determinism); the others are ``duplicate_item``.
    """
    text_fields = ("title", *N.ITEM_OPTIONAL_TEXT_FIELDS)
    needs_python = reduce(
        lambda a, b: a | b,
        [F.coalesce(F.col(n).rlike(NEEDS_PYTHON_TEXT_RE), F.lit(False)) for n in text_fields],
    )

    def normalised(rows: DataFrame, text_fn: Callable[[Column], Column]) -> DataFrame:
        return rows.select(
            "source_file",
            "raw",
            "malformed",
            key_col("domain").alias("domain"),
            key_col("item_id").alias("item_id"),
            *[text_fn(F.col(n)).alias(n) for n in text_fields],
        )

    # Python only for the rows that need it (entities, non-ASCII); a UDF inside CASE WHEN would
    # still be evaluated for every row, hence the split and union.
    df = normalised(raw.filter(~needs_python), ascii_text_col).unionByName(
        normalised(raw.filter(needs_python), normalize_text_udf)
    )
    checks = [(F.col("malformed"), R.MALFORMED_JSON)] + [
        (F.col(name).isNull(), R.missing(name)) for name in R.ITEM_REQUIRED_FIELDS
    ]
    df = df.withColumn("reason", _first_failure(checks))
    filled = sum(F.col(n).isNotNull().cast("int") for n in N.ITEM_OPTIONAL_TEXT_FIELDS)
    rank = F.row_number().over(
        Window.partitionBy("domain", "item_id", F.col("reason").isNull()).orderBy(
            filled.desc(), F.col("raw")
        )
    )
    df = df.withColumn(
        "reason", F.when(F.col("reason").isNull() & (rank > 1), R.DUPLICATE_ITEM).otherwise(F.col("reason"))
    )
    text = F.concat_ws(N.ITEM_TEXT_SEPARATOR, "title", *N.ITEM_OPTIONAL_TEXT_FIELDS)
    return df.withColumn("text", F.when(F.col("title").isNotNull(), text)).drop("malformed")


def label_events(raw: DataFrame, known_domains: list[str], item_keys: DataFrame) -> DataFrame:
    """Normalised events + ``reason`` for the per-row checks (everything but duplicates/k-core).

    ``item_keys`` holds (domain, item_id) of the *kept* catalogue, one row per key, so the
    broadcast left join can neither duplicate nor drop an event.
    """
    rating, rating_bad = rating_cols("rating")
    df = raw.select(
        "source_file",
        "raw",
        "malformed",
        id_col("user_id").alias("user_id"),
        key_col("domain").alias("domain"),
        key_col("item_id").alias("item_id"),
        key_col("event_type").alias("event_type"),
        id_col("ts").isNotNull().alias("_has_ts"),
        F.col("ts").alias("_ts_raw"),
        rating.alias("rating"),
        rating_bad.alias("_rating_bad"),
        F.col("event_id").alias("_given_id"),
    )
    df = with_ts_ms(df, "_ts_raw", "ts_ms").drop("_ts_raw")
    known = item_keys.select("domain", "item_id", F.lit(True).alias("_known_item"))
    df = df.join(F.broadcast(known), on=["domain", "item_id"], how="left")
    checks = [
        (F.col("malformed"), R.MALFORMED_JSON),
        (F.col("user_id").isNull(), R.missing("user_id")),
        (F.col("domain").isNull(), R.missing("domain")),
        (F.col("item_id").isNull(), R.missing("item_id")),
        (F.col("event_type").isNull(), R.missing("event_type")),
        (~F.col("_has_ts"), R.missing("ts")),
        (bad_user_id_col("user_id"), R.BAD_USER_ID),
        (F.col("ts_ms").isNull(), R.BAD_TIMESTAMP),
        (~F.col("event_type").isin(*N.EVENT_TYPES), R.BAD_EVENT_TYPE),
        (F.col("_rating_bad"), R.BAD_RATING),
        (~F.col("domain").isin(*known_domains), R.UNKNOWN_DOMAIN),
        (F.col("_known_item").isNull(), R.UNKNOWN_ITEM),
    ]
    df = df.withColumn("reason", _first_failure(checks))
    df = df.withColumn(
        "event_id",
        event_id_col(F.col("_given_id"), F.col("user_id"), F.col("domain"), F.col("item_id"),
                     F.col("event_type"), F.col("ts_ms")),
    )
    return df.drop("malformed", "_has_ts", "_rating_bad", "_given_id", "_known_item")
