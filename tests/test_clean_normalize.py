"""Pure-python cleaning rules (no Spark): the functions the streaming consumer also calls."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from crossrec.cleaning import reasons as R
from crossrec.cleaning.normalize import (
    derive_event_id,
    normalize_id,
    normalize_key,
    normalize_text,
    parse_rating,
    parse_ts_to_ms,
    validate_event,
    validate_item,
)

T0 = 1_577_836_800_000  # 2020-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-01-01T00:00:00Z", T0),
        ("2020-01-01T00:00:00z", T0),
        ("2020-01-01 00:00:00", T0),  # naive = UTC
        ("2020-01-01", T0),
        ("2020-01-01T02:00:00+02:00", T0),
        ("2020-01-01T02:00:00+0200", T0),
        ("2019-12-31T19:00:00-05", T0),
        ("2020-01-01T00:00:00.123Z", T0 + 123),
        ("2020-01-01T00:00:00.1239999Z", T0 + 123),  # truncated, not rounded
        ("2020-01-01T00:00Z", T0),
        ("  2020-01-01T00:00:00Z\u00a0", T0),
        (T0, T0),
        (str(T0), T0),
        (f"{T0}.7", T0),
        ("1.5778368E12", T0),
        (float(T0), T0),
        (datetime(2020, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), T0),
        (datetime(2020, 1, 1), T0),
    ],
)
def test_parse_ts_accepts_iso_and_epoch_ms(value: object, expected: int) -> None:
    assert parse_ts_to_ms(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None, "", "   ", "yesterday", "2020-02-30T00:00:00Z", "2020-01-01T24:00:00Z",
        "2020-01-01T00:00:60Z", "2020-13-01", "2020-01-01T00:00:00+25:00", "01/02/2020",
        1_577_836_800,  # epoch *seconds*: lands in 1970 as ms, outside the accepted range
        "1577836800", True, -5, float("nan"), "2100-01-01T00:00:00Z", "1e400",
    ],
)
def test_parse_ts_rejects_garbage_and_out_of_range(value: object) -> None:
    assert parse_ts_to_ms(value) is None


def test_normalize_text_unescapes_html_unicode_and_whitespace() -> None:
    assert normalize_text("  Red&nbsp;Pen &amp;\tInk\u200b \n") == "Red Pen & Ink"
    assert normalize_text("Office&amp;amp;School") == "Office&School"  # double-escaped
    assert normalize_text("\uff25\uff52\uff41\uff53\uff45\uff52") == "Eraser"  # fullwidth -> NFKC
    assert normalize_text("caf\u0065\u0301") == "caf\u00e9"  # combining accent composed
    assert normalize_text("Mixed CASE") == "Mixed CASE"  # case kept in text
    assert normalize_text(" \u3000 ") is None
    assert normalize_text(None) is None


def test_ids_strip_whitespace_keys_are_lowercased() -> None:
    assert normalize_id("\ufeff A7PV\u00a0") == "A7PV"  # user ids keep their case
    assert normalize_key(" Office ") == "office"
    assert normalize_id("\t") is None
    assert normalize_id(123) == "123"


def test_parse_rating() -> None:
    assert parse_rating(None) == (True, None)
    assert parse_rating(" ") == (True, None)
    assert parse_rating("4.5") == (True, 4.5)
    assert parse_rating(3) == (True, 3.0)
    for bad in ("excellent", "9", -1, "nan", "inf", True, "1_0"):
        assert parse_rating(bad) == (False, None), bad


def _event(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "user_id": " U1 ", "domain": "ART", "item_id": "Art-1", "event_type": "View",
        "ts": "2020-01-01T00:00:00Z",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def test_validate_event_normalises_and_derives_a_stable_id() -> None:
    clean, reason = validate_event(_event(), {"art"}, {("art", "art-1")})
    assert reason is None and clean is not None
    assert clean == {
        "event_id": derive_event_id("U1", "art", "art-1", "view", T0),
        "user_id": "U1", "domain": "art", "item_id": "art-1", "event_type": "view",
        "ts_ms": T0, "rating": None,
    }
    again, _ = validate_event(_event(user_id="U1"))
    assert again is not None and again["event_id"] == clean["event_id"]
    given, _ = validate_event(_event(event_id=" e-7 "))
    assert given is not None and given["event_id"] == "e-7"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"user_id": ...}, R.missing("user_id")),
        ({"user_id": "  "}, R.missing("user_id")),
        ({"user_id": "}U1"}, R.BAD_USER_ID),  # an empty Redis Cluster hash tag
        ({"user_id": "\u00a0}U1 "}, R.BAD_USER_ID),  # after stripping
        ({"user_id": "}U1", "ts": "soon"}, R.BAD_USER_ID),  # checked before the timestamp
        ({"domain": None}, R.missing("domain")),
        ({"item_id": ""}, R.missing("item_id")),
        ({"event_type": ...}, R.missing("event_type")),
        ({"ts": ...}, R.missing("ts")),
        ({"ts": "soon"}, R.BAD_TIMESTAMP),
        ({"ts": "soon", "event_type": "like"}, R.BAD_TIMESTAMP),  # first failing check wins
        ({"event_type": "like"}, R.BAD_EVENT_TYPE),
        ({"rating": "excellent"}, R.BAD_RATING),
        ({"domain": "garden"}, R.UNKNOWN_DOMAIN),
        ({"item_id": "art-999"}, R.UNKNOWN_ITEM),
    ],
)
def test_validate_event_reasons(overrides: dict[str, object], reason: str) -> None:
    clean, got = validate_event(_event(**overrides), {"art", "office"}, {("art", "art-1")})
    assert clean is None
    assert got == reason
    assert got in R.EVENT_REASONS


def test_validate_event_rejects_non_mapping() -> None:
    assert validate_event(["not", "a", "dict"]) == (None, R.MALFORMED_JSON)  # type: ignore[arg-type]


def test_validate_item_builds_text_from_existing_parts() -> None:
    clean, reason = validate_item(
        {"domain": " Art", "item_id": "ART-1", "title": " Red&nbsp;Pen &amp; Ink ",
         "attributes": "arts &lt;crafts&gt;", "brand": "Pilot", "category": "  "}
    )
    assert reason is None and clean is not None
    assert clean["item_id"] == "art-1" and clean["domain"] == "art"
    assert clean["title"] == "Red Pen & Ink"
    assert clean["category"] is None
    assert clean["text"] == "Red Pen & Ink | arts <crafts> | Pilot"
    assert validate_item({"domain": "art", "item_id": "x"}) == (None, R.missing("title"))
    assert validate_item({"item_id": "x", "title": "t"}) == (None, R.missing("domain"))
