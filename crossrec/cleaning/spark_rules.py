"""The rules of ``crossrec.cleaning.normalize`` as Spark column expressions.

Why not just wrap the python functions in UDFs: events are the hot path (hundreds of thousands
of rows per domain), and a python UDF costs a round trip through a python worker per batch.
Ids, timestamps and ratings are therefore built from Spark SQL functions over the *same* regex
strings, character sets and constants; ``tests/test_clean_rules.py`` runs both versions over the same tricky
inputs and requires identical results. Free text (item titles, attributes) needs HTML
unescaping and NFKC, which Spark SQL lacks, so it goes through a vectorised (arrow) pandas UDF
that calls ``normalize_text`` itself; items are few compared with events.

Everything uses ``try_*`` functions because Spark 4 runs with ANSI mode on, where a plain cast
of a bad string raises instead of returning null, and a raise here would crash the job.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import StringType

from crossrec.cleaning import normalize as N
from crossrec.keys import HASH_TAG_END


def _col(c: str | Column) -> Column:
    return F.col(c) if isinstance(c, str) else c


def id_col(c: str | Column) -> Column:
    """``normalize_id``: edge whitespace stripped, case kept, empty -> null."""
    stripped = F.trim(_col(c), F.lit(N.EDGE_WS_CHARS))
    return F.when(stripped != "", stripped)


def bad_user_id_col(user_id: str | Column) -> Column:
    """``keys.user_id_problem`` of a normalised, non-null user id (``id_col``): it starts with
    ``}``, so its Redis Cluster hash tag would be empty (an empty id is ``missing_field:user_id``)."""
    return _col(user_id).startswith(HASH_TAG_END)


def key_col(c: str | Column) -> Column:
    """``normalize_key``: ``id_col`` then lower-case."""
    return F.lower(id_col(c))


ISO_PARTS_REPLACEMENT = "|".join(f"${i}" for i in range(1, 9))  # "$1|$2|...|$8"


def _part(parts: Column, idx: int, default: int | None = 0) -> Column:
    """Group ``idx`` (1-based) of the ISO match as int; ``default`` when the group was absent."""
    text = F.try_element_at(parts, F.lit(idx))
    value = F.when(text != "", text).cast("int")
    return F.coalesce(value, F.lit(default)) if default is not None else value


def _iso_ms(parts: Column) -> Column:
    year, month, day = _part(parts, 1), _part(parts, 2), _part(parts, 3)
    hour, minute, second = _part(parts, 4), _part(parts, 5), _part(parts, 6)
    frac_ms = F.substring(F.rpad(F.try_element_at(parts, F.lit(7)), 3, "0"), 1, 3).cast("int")
    zone = F.try_element_at(parts, F.lit(8))
    digits = F.regexp_replace(F.substring(zone, 2, 10), ":", "")
    off_h = F.coalesce(F.when(F.length(digits) >= 2, F.substring(digits, 1, 2)).cast("int"), F.lit(0))
    off_m = F.coalesce(F.when(F.length(digits) == 4, F.substring(digits, 3, 2)).cast("int"), F.lit(0))
    sign = F.when(F.substring(zone, 1, 1) == "-", F.lit(-1)).otherwise(F.lit(1))
    has_offset = (zone != "") & (zone != "Z") & (zone != "z")
    offset_ms = F.when(has_offset, sign * (off_h * 3600 + off_m * 60) * 1000).otherwise(0)
    offset_ok = ~has_offset | ((off_h <= 23) & (off_m <= 59))
    stamp = F.try_make_timestamp(year, month, day, hour, minute, second, F.lit("UTC"))
    return F.when(
        (second <= 59) & offset_ok,
        F.unix_millis(stamp) + frac_ms.cast("long") - offset_ms.cast("long"),
    )


def with_ts_ms(df: DataFrame, source: str, target: str) -> DataFrame:
    """Adds ``target`` = ``parse_ts_to_ms(source)`` (epoch ms long, or null when invalid).

    Built in three projections on purpose: the ISO regex runs once per row (one
    ``regexp_replace`` into "g1|g2|...|g8", then ``split``) and the later steps read the parts
    as a column. Written as one expression, the regex was re-run for every group and every
    CASE branch (Spark does not share sub-expressions across conditional branches): that single
    column cost more than all the other validation together on the shared data.
    """
    text, parts = f"_{target}_text", f"_{target}_parts"
    staged = df.withColumn(text, id_col(source))
    staged = staged.withColumn(
        parts,
        F.when(
            F.col(text).rlike(N.ISO_TS_RE),
            F.split(F.regexp_replace(F.col(text), N.ISO_TS_RE, ISO_PARTS_REPLACEMENT), r"\|", -1),
        ),
    )
    epoch = F.floor(F.col(text).try_cast("decimal(38,6)")).try_cast("long")
    millis = F.when(F.col(text).rlike(N.EPOCH_MS_RE), epoch).when(
        F.col(parts).isNotNull(), _iso_ms(F.col(parts))
    )
    in_range = F.when((millis >= N.MIN_TS_MS) & (millis < N.MAX_TS_MS), millis)
    return staged.withColumn(target, in_range).drop(text, parts)


def rating_cols(c: str | Column) -> tuple[Column, Column]:
    """``parse_rating``: (rating double or null, is_bad boolean)."""
    text = id_col(c)
    number = text.try_cast("double")
    good_number = (
        text.rlike(N.NUMBER_RE)
        & number.isNotNull()
        & (number >= N.RATING_MIN)
        & (number <= N.RATING_MAX)
    )
    is_bad = text.isNotNull() & ~F.coalesce(good_number, F.lit(False))
    return F.when(~is_bad, number), is_bad


def event_id_col(given: Column, user: Column, domain: Column, item: Column, etype: Column,
                 ts_ms: Column) -> Column:
    """``normalize_id(event_id)`` or ``derive_event_id(...)`` (same sha256 prefix)."""
    key = F.concat_ws(N.EVENT_ID_SEPARATOR, user, domain, item, etype, ts_ms.cast("string"))
    derived = F.substring(F.sha2(key, 256), 1, N.EVENT_ID_HEX_CHARS)
    return F.coalesce(id_col(given), derived)


# Text that is pure ASCII and holds no "&" has no entity to unescape and is its own NFKC form,
# so ``normalize_text`` reduces to "control/whitespace runs -> one space, strip": Spark can do
# that itself, and only the other rows need the python worker.
NEEDS_PYTHON_TEXT_RE = r"[^\x00-\x7f]|&"


def ascii_text_col(c: str | Column) -> Column:
    """``normalize_text`` for values that do not match ``NEEDS_PYTHON_TEXT_RE``."""
    collapsed = F.trim(F.regexp_replace(_col(c), r"[\x00-\x20\x7f]+", " "))
    return F.when(collapsed != "", collapsed)


@pandas_udf(StringType())  # type: ignore[call-overload]
def normalize_text_udf(values: pd.Series) -> pd.Series:
    """``normalize_text`` over an arrow batch (HTML entities and NFKC need python)."""
    from crossrec.cleaning.normalize import normalize_text

    return values.map(lambda v: None if v is None or v != v else normalize_text(v))
