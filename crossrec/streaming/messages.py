"""Decoding and validating Kafka messages against the event and catalogue contracts.

The rules are the batch cleaner's (``crossrec.cleaning.normalize``), so an event that the nightly
job would keep is exactly an event that the consumer applies, and one it would quarantine goes to
the dead-letter topic with the same reason name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from crossrec.cleaning.normalize import validate_event, validate_item
from crossrec.cleaning.reasons import MALFORMED_JSON, UNKNOWN_DOMAIN

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 1_000_000  # the default of ``streaming.max_message_bytes``

# Reasons of the streaming path that the batch cleaner has no use for.
EMPTY_VALUE = "empty_value"
TOO_LARGE = "value_too_large"
NOT_UTF8 = "not_utf8"
UNSUPPORTED_SCHEMA = "unsupported_schema_version"
WRONG_TYPE = "wrong_type"  # wrong_type:<field>


class BadMessage(ValueError):
    """A message that cannot be applied; ``reason`` is a short machine-readable name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class EventMessage:
    event_id: str
    user_id: str
    domain: str
    item_id: str
    event_type: str
    ts_ms: int


@dataclass(frozen=True)
class ItemMessage:
    domain: str
    item_id: str
    title: str
    text: str  # what the encoder embeds: title plus whatever attributes exist
    category: str | None
    brand: str | None


def _decode(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    """Bytes -> JSON object, checked in the cheapest order (size before parsing a huge value)."""
    if not raw:
        raise BadMessage(EMPTY_VALUE)
    if len(raw) > max_bytes:
        raise BadMessage(TOO_LARGE, f"{len(raw)} bytes > {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage(NOT_UTF8, str(exc)[:200]) from exc
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadMessage(MALFORMED_JSON, str(exc)[:200]) from exc
    if not isinstance(data, dict):
        raise BadMessage(MALFORMED_JSON, "value is not a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:  # True == 1 must not pass
        raise BadMessage(UNSUPPORTED_SCHEMA, repr(version)[:50])
    return data


def _check_scalars(data: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Ids and names must be JSON strings or integers: the cleaner would stringify an object or
    a list into an id (``'{"a":1}'``), which on a live topic is a producer bug, not an id."""
    for name in fields:
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise BadMessage(f"{WRONG_TYPE}:{name}", type(value).__name__)


def parse_event(raw: bytes | None, known_domains: set[str], max_bytes: int = MAX_MESSAGE_BYTES) -> EventMessage:
    data = _decode(raw, max_bytes)
    _check_scalars(data, ("event_id", "user_id", "domain", "item_id", "event_type"))
    clean, reason = validate_event(data, known_domains=known_domains)
    if clean is None:
        raise BadMessage(reason or "invalid_event")
    return EventMessage(
        event_id=clean["event_id"],
        user_id=clean["user_id"],
        domain=clean["domain"],
        item_id=clean["item_id"],
        event_type=clean["event_type"],
        ts_ms=int(clean["ts_ms"]),
    )


def parse_item(raw: bytes | None, known_domains: set[str], max_bytes: int = MAX_MESSAGE_BYTES) -> ItemMessage:
    data = _decode(raw, max_bytes)
    _check_scalars(data, ("domain", "item_id"))
    clean, reason = validate_item(data)
    if clean is None:
        raise BadMessage(reason or "invalid_item")
    if clean["domain"] not in known_domains:
        raise BadMessage(UNKNOWN_DOMAIN, clean["domain"])
    return ItemMessage(
        domain=clean["domain"],
        item_id=clean["item_id"],
        title=clean["title"],
        text=clean["text"],
        category=clean["category"],
        brand=clean["brand"],
    )
