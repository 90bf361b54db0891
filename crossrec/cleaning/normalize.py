"""Pure-python normalisation and validation rules for raw events and items.

These functions are the single definition of "a clean row". The Spark job applies the *same*
rules as Spark SQL expressions (``crossrec.cleaning.spark_rules``, built from the regexes and
constants below, and checked against these functions by ``tests/test_clean_rules.py``), and the
streaming consumer calls ``validate_event`` directly on each Kafka message, so a row is accepted
or rejected for the same reason on both paths. No pyspark import here: the consumer must stay light.

Decisions (and why):
- **user_id**: edge whitespace (ASCII and unicode, incl. NBSP, zero-width space, BOM) is
  stripped, case is *kept*: user ids are opaque keys that other systems (and the release's
  ``users_split.json``) refer to verbatim. After stripping, an id that starts with ``}`` is
  ``bad_user_id``: it cannot be the Redis Cluster hash tag of the user's keys
  (``crossrec.keys.user_id_problem``).
- **domain, event_type, item_id**: stripped *and lower-cased*: they are vocabulary or catalogue
  keys that arrive in mixed case from different producers; items and events go through the
  same rule, so their join is unaffected.
- **text** (title, attributes, ...): HTML entities unescaped (repeatedly, for double-escaped
  ``&amp;amp;``), unicode NFKC, every run of whitespace/control characters -> one space, stripped.
  Case is kept (it carries meaning for cased encoders).
- **timestamps**: ISO 8601 (``YYYY-MM-DD[Thh:mm[:ss[.fff]]][Z|±hh[:mm]]``; no offset = UTC) or
  epoch *milliseconds* (digits, optionally with a fraction or exponent, floored). Anything
  outside [1990-01-01, 2100-01-01) is rejected, which catches epoch seconds sent as ms.
- **event_id**: the given one (stripped) if any, else a deterministic sha256 of
  (user, domain, item, type, ts_ms), so a replayed event gets the same id.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import math
import re
import unicodedata
from collections.abc import Container, Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from crossrec.cleaning import reasons as R
from crossrec.keys import user_id_problem

# Whitespace as any producer might send it: ASCII, C1 NEL, NBSP, the unicode spaces, zero-width
# space, line/paragraph separators and the BOM. A plain character set (not a regex) so that
# python's str.strip and Spark's TRIM(BOTH chars FROM s) apply exactly the same rule, cheaply.
EDGE_WS_CHARS = (
    "\t\n\x0b\x0c\r \x1c\x1d\x1e\x1f\x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200C))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
# Control characters and zero-width marks that must not survive into item text.
_TEXT_JUNK_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_TEXT_WS_RE = re.compile(r"\s+")

ISO_TS_RE = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?)?"
    r" ?(Z|z|[+-][0-9]{2}(?::?[0-9]{2})?)?$"
)
EPOCH_MS_RE = r"^[0-9]+(?:\.[0-9]*)?(?:[eE]\+?[0-9]{1,2})?$"
NUMBER_RE = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?$"

MIN_TS_MS = 631_152_000_000  # 1990-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (exclusive)
EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "review", "rating")
RATING_MIN = 0.0
RATING_MAX = 5.0
EVENT_ID_HEX_CHARS = 32
EVENT_ID_SEPARATOR = "\x1f"
ITEM_TEXT_SEPARATOR = " | "
ITEM_OPTIONAL_TEXT_FIELDS: tuple[str, ...] = ("attributes", "description", "category", "brand")

_ISO_TS = re.compile(ISO_TS_RE)
_EPOCH_MS = re.compile(EPOCH_MS_RE)
_NUMBER = re.compile(NUMBER_RE)


def _scalar_to_str(value: Any) -> str | None:
    """How a raw JSON value becomes text; mirrors what Spark's JSON reader gives a string column."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    import json

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def normalize_id(value: Any) -> str | None:
    """Strip edge whitespace (ASCII and unicode); case kept. Empty -> None (= missing)."""
    text = _scalar_to_str(value)
    if text is None:
        return None
    text = text.strip(EDGE_WS_CHARS)
    return text or None


def normalize_key(value: Any) -> str | None:
    """``normalize_id`` then lower-case: for domain, event_type and item_id."""
    text = normalize_id(value)
    return text.lower() if text is not None else None


def normalize_text(value: Any) -> str | None:
    """Unescape HTML entities, NFKC, collapse whitespace/control characters. Empty -> None."""
    text = _scalar_to_str(value)
    if text is None:
        return None
    for _ in range(3):  # double-escaped text ("&amp;quot;") is common in scraped catalogues
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = unicodedata.normalize("NFKC", text)
    text = _TEXT_JUNK_RE.sub(" ", text)
    text = _TEXT_WS_RE.sub(" ", text).strip()
    return text or None


def _iso_to_ms(match: re.Match[str]) -> int | None:
    year, month, day, hour, minute, second, frac, zone = match.groups()
    h, mi, s = int(hour or 0), int(minute or 0), int(second or 0)
    if s > 59:
        return None
    try:
        datetime(int(year), int(month), int(day), h, mi, s, tzinfo=timezone.utc)
    except ValueError:
        return None
    base_ms = calendar.timegm((int(year), int(month), int(day), h, mi, s)) * 1000
    frac_ms = int((frac or "").ljust(3, "0")[:3])
    offset_ms = 0
    if zone and zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        off_h, off_m = int(digits[:2]), int(digits[2:4] or 0)
        if off_h > 23 or off_m > 59:
            return None
        offset_ms = (off_h * 3600 + off_m * 60) * 1000 * (1 if zone[0] == "+" else -1)
    return base_ms + frac_ms - offset_ms


def parse_ts_to_ms(value: Any) -> int | None:
    """ISO 8601 string, epoch-ms number/string or datetime -> epoch ms (UTC); None if invalid.

    A naive time (no offset) is taken as UTC. Values outside [1990, 2100) are invalid.
    """
    if value is None or isinstance(value, bool):
        return None
    millis: int | None
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        millis = math.floor(aware.timestamp() * 1000)
    elif isinstance(value, int):
        millis = value
    elif isinstance(value, float):
        millis = math.floor(value) if math.isfinite(value) else None
    else:
        text = normalize_id(value)
        if text is None:
            return None
        if _EPOCH_MS.match(text):
            try:
                millis = math.floor(Decimal(text))
            except (InvalidOperation, OverflowError):
                millis = None
        elif (match := _ISO_TS.match(text)) is not None:
            millis = _iso_to_ms(match)
        else:
            millis = None
    if millis is None or not (MIN_TS_MS <= millis < MAX_TS_MS):
        return None
    return millis


def parse_rating(value: Any) -> tuple[bool, float | None]:
    """(ok, rating). Absent/empty is ok (None); otherwise a finite number in [0, 5]."""
    if value is None:
        return True, None
    if isinstance(value, bool):
        return False, None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = normalize_id(value)
        if text is None:
            return True, None
        if not _NUMBER.match(text):
            return False, None
        number = float(text)
    if not math.isfinite(number) or not (RATING_MIN <= number <= RATING_MAX):
        return False, None
    return True, number


def derive_event_id(user_id: str, domain: str, item_id: str, event_type: str, ts_ms: int) -> str:
    """Deterministic id for events that came without one (same content -> same id)."""
    key = EVENT_ID_SEPARATOR.join((user_id, domain, item_id, event_type, str(ts_ms)))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:EVENT_ID_HEX_CHARS]


def validate_event(
    record: Mapping[str, Any],
    known_domains: Container[str] | None = None,
    known_items: Container[tuple[str, str]] | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """Normalise one raw event; ``(clean, None)`` or ``(None, reason)`` (see ``reasons``).

    ``known_domains`` / ``known_items`` (``(domain, item_id)`` pairs) are optional because a
    caller without a catalogue (e.g. a schema-only check) can still use the per-row rules.
    Duplicate detection needs state across rows and is not done here.
    """
    if not isinstance(record, Mapping):
        return None, R.MALFORMED_JSON
    user_id = normalize_id(record.get("user_id"))
    domain = normalize_key(record.get("domain"))
    item_id = normalize_key(record.get("item_id"))
    event_type = normalize_key(record.get("event_type"))
    raw_ts = record.get("ts")
    ts_present = raw_ts is not None and not (
        isinstance(raw_ts, str) and normalize_id(raw_ts) is None
    )
    for name, val in (
        ("user_id", user_id),
        ("domain", domain),
        ("item_id", item_id),
        ("event_type", event_type),
        ("ts", raw_ts if ts_present else None),
    ):
        if val is None:
            return None, R.missing(name)
    assert user_id is not None
    if user_id_problem(user_id) is not None:
        return None, R.BAD_USER_ID
    ts_ms = parse_ts_to_ms(raw_ts)
    if ts_ms is None:
        return None, R.BAD_TIMESTAMP
    if event_type not in EVENT_TYPES:
        return None, R.BAD_EVENT_TYPE
    rating_ok, rating = parse_rating(record.get("rating"))
    if not rating_ok:
        return None, R.BAD_RATING
    assert domain is not None and item_id is not None and user_id is not None
    if known_domains is not None and domain not in known_domains:
        return None, R.UNKNOWN_DOMAIN
    if known_items is not None and (domain, item_id) not in known_items:
        return None, R.UNKNOWN_ITEM
    event_id = normalize_id(record.get("event_id")) or derive_event_id(
        user_id, domain, item_id, event_type, ts_ms
    )
    return {
        "event_id": event_id,
        "user_id": user_id,
        "domain": domain,
        "item_id": item_id,
        "event_type": event_type,
        "ts_ms": ts_ms,
        "rating": rating,
    }, None


def item_text(title: str, parts: list[str | None]) -> str:
    """The text to embed: title, then every optional part that exists, joined by " | "."""
    return ITEM_TEXT_SEPARATOR.join([title, *(p for p in parts if p)])


def validate_item(record: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Normalise one raw catalogue item; ``(clean, None)`` or ``(None, reason)``."""
    if not isinstance(record, Mapping):
        return None, R.MALFORMED_JSON
    item_id = normalize_key(record.get("item_id"))
    domain = normalize_key(record.get("domain"))
    title = normalize_text(record.get("title"))
    for name, val in (("item_id", item_id), ("domain", domain), ("title", title)):
        if val is None:
            return None, R.missing(name)
    assert title is not None
    optional = {name: normalize_text(record.get(name)) for name in ITEM_OPTIONAL_TEXT_FIELDS}
    return {
        "item_id": item_id,
        "title": title,
        "attributes": optional["attributes"],
        "category": optional["category"],
        "brand": optional["brand"],
        "text": item_text(title, [optional[n] for n in ITEM_OPTIONAL_TEXT_FIELDS]),
        "domain": domain,
    }, None
