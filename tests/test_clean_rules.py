"""The Spark expressions of the clean job give exactly what the python rules give.

The streaming consumer validates with ``crossrec.cleaning.normalize``; the batch job with
``crossrec.cleaning.spark_rules``. If the two drifted, an event could be kept by one path and
quarantined by the other, so every tricky input here goes through both (real local Spark).
"""

from __future__ import annotations

import pytest

from crossrec.cleaning.normalize import (
    derive_event_id,
    normalize_id,
    normalize_key,
    normalize_text,
    parse_rating,
    parse_ts_to_ms,
)

TS_INPUTS = [
    "2020-01-01T00:00:00Z", "2020-01-01T00:00:00z", "2020-01-01 00:00:00", "2020-01-01",
    "2020-01-01T02:00:00+02:00", "2020-01-01T02:00:00+0200", "2019-12-31T19:00:00-05",
    "2020-01-01T00:00:00.123Z", "2020-01-01T00:00:00,5Z", "2020-01-01T00:00:00.1239999Z",
    "2020-01-01T00:00Z", "2020-01-01T00:00:00 +01:00", " 2020-01-01T00:00:00Z\u00a0",
    "1577836800000", "1577836800000.9", "1.5778368E12", "1577836800", "2020-02-30T00:00:00Z",
    "2020-02-29T12:00:00Z", "2020-01-01T24:00:00Z", "2020-01-01T00:60:00Z",
    "2020-01-01T00:00:60Z", "2020-13-01", "2020-01-01T00:00:00+24:00", "2020-01-01T00:00:00+01:60",
    "yesterday", "01/02/2020", "", "   ", "1989-12-31T23:59:59Z", "1990-01-01T00:00:00Z",
    "2099-12-31T23:59:59.999Z", "2100-01-01T00:00:00Z", "99999999999999999999999", "-5",
    "2020-1-1", "2020-01-01T00:00:00Zjunk", "\u0662\u0660\u0662\u0660-01-01", None,
]
ID_INPUTS = [
    " U1 ", "\ufeffA7PV\u00a0", "\tArt-1\r\n", "Office", "a b", "\u200b", "", "   ", None,
    "\u3000x\u2003", "\u0130X", "ÀÉÎ",
]
RATING_INPUTS = [
    None, "", " ", "4.5", " 3 ", "+4", "5", "5.0001", "0", "-0.5", "excellent", "nan", "NaN",
    "inf", "Infinity", "1e0", "4.", ".5", "1_0", "1e400", "true",
]
TEXT_INPUTS = [
    "  Red&nbsp;Pen &amp;\tInk\u200b \n", "Office&amp;amp;School", "\uff25\uff52\uff41\uff53\uff45\uff52",
    "Mixed CASE", " \u3000 ", None, "caf\u0065\u0301", "a\x00b",
]


def _one_column(spark, values):  # type: ignore[no-untyped-def]
    return spark.createDataFrame([(v,) for v in values], "v string")


def test_timestamps_match_python(spark) -> None:  # type: ignore[no-untyped-def]
    from crossrec.cleaning.spark_rules import with_ts_ms

    rows = with_ts_ms(_one_column(spark, TS_INPUTS), "v", "ms").collect()
    got = {r["v"]: r["ms"] for r in rows}
    expected = {v: parse_ts_to_ms(v) for v in TS_INPUTS}
    assert got == expected
    assert got["2020-01-01T02:00:00+02:00"] == 1_577_836_800_000  # not vacuously all-null


def test_ids_and_keys_match_python(spark) -> None:  # type: ignore[no-untyped-def]
    from crossrec.cleaning.spark_rules import id_col, key_col

    rows = (
        _one_column(spark, ID_INPUTS)
        .select("v", id_col("v").alias("id"), key_col("v").alias("key"))
        .collect()
    )
    assert {r["v"]: r["id"] for r in rows} == {v: normalize_id(v) for v in ID_INPUTS}
    assert {r["v"]: r["key"] for r in rows} == {v: normalize_key(v) for v in ID_INPUTS}


def test_bad_user_id_matches_the_key_rule(spark) -> None:  # type: ignore[no-untyped-def]
    from crossrec.cleaning.spark_rules import bad_user_id_col, id_col
    from crossrec.keys import user_id_problem

    inputs = [*ID_INPUTS, "}u1", " }u1", "\u00a0}", "u}1", "{u1}", "}{", "u1}"]
    rows = _one_column(spark, inputs).select("v", bad_user_id_col(id_col("v")).alias("bad")).collect()
    got = {r["v"]: bool(r["bad"]) for r in rows}
    expected = {v: normalize_id(v) is not None and user_id_problem(normalize_id(v)) is not None for v in inputs}
    assert got == expected
    assert got["}u1"] and got[" }u1"] and not got["u}1"]  # not vacuously all-false


def test_ratings_match_python(spark) -> None:  # type: ignore[no-untyped-def]
    from crossrec.cleaning.spark_rules import rating_cols

    rating, bad = rating_cols("v")
    rows = _one_column(spark, RATING_INPUTS).select("v", rating.alias("r"), bad.alias("bad")).collect()
    got = {r["v"]: (not r["bad"], r["r"]) for r in rows}
    assert got == {v: parse_rating(v) for v in RATING_INPUTS}


def test_derived_event_id_matches_python(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from crossrec.cleaning.spark_rules import event_id_col

    df = spark.createDataFrame(
        [("U1", "art", "art-1", "view", 1_577_836_800_000, None),
         ("U1", "art", "art-1", "view", 1_577_836_800_000, " given-1 ")],
        "u string, d string, i string, t string, ts long, given string",
    )
    ids = [r["id"] for r in df.select(
        event_id_col(F.col("given"), F.col("u"), F.col("d"), F.col("i"), F.col("t"), F.col("ts")).alias("id")
    ).collect()]
    assert ids == [derive_event_id("U1", "art", "art-1", "view", 1_577_836_800_000), "given-1"]


def test_text_udf_is_the_python_function(spark) -> None:  # type: ignore[no-untyped-def]
    from crossrec.cleaning.spark_rules import normalize_text_udf

    rows = _one_column(spark, TEXT_INPUTS).select("v", normalize_text_udf("v").alias("t")).collect()
    assert {r["v"]: r["t"] for r in rows} == {v: normalize_text(v) for v in TEXT_INPUTS}


@pytest.mark.parametrize("bad", ["{not json", '{"a": 1} trailing', "[1, 2]", "42"])
def test_malformed_lines_are_flagged_not_dropped(spark, tmp_path, bad) -> None:  # type: ignore[no-untyped-def]
    from crossrec.cleaning.readers import discover_inputs, read_raw

    good = '{"user_id": "u", "domain": "art", "item_id": "a", "event_type": "view", "ts": 1}'
    (tmp_path / "events.jsonl").write_text(f"{good}\n\n{bad}\n")
    df, unreadable = read_raw(spark, discover_inputs(tmp_path), "events")
    rows = sorted(df.select("raw", "malformed").collect(), key=lambda r: r["malformed"])
    assert not unreadable
    assert [(r["raw"], r["malformed"]) for r in rows] == [(good, False), (bad, True)]


ASCII_TEXT_INPUTS = ["  Red Pen\t\tInk \n", "a\x00\x01b", "x\x7fy", " \r\n ", "Mixed CASE", "plain", ""]


def test_ascii_fast_path_equals_the_python_function(spark) -> None:  # type: ignore[no-untyped-def]
    import re

    from crossrec.cleaning.spark_rules import NEEDS_PYTHON_TEXT_RE, ascii_text_col

    assert not any(re.search(NEEDS_PYTHON_TEXT_RE, v) for v in ASCII_TEXT_INPUTS)
    assert all(re.search(NEEDS_PYTHON_TEXT_RE, v) for v in ("a &amp; b", "caf\u00e9", "\u00a0"))
    rows = _one_column(spark, ASCII_TEXT_INPUTS).select("v", ascii_text_col("v").alias("t")).collect()
    assert {r["v"]: r["t"] for r in rows} == {v: normalize_text(v) for v in ASCII_TEXT_INPUTS}
