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


def _decode(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise BadMessage("empty_value")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(MALFORMED_JSON, str(exc)[:200]) from exc
    if not isinstance(data, dict):
        raise BadMessage(MALFORMED_JSON, "value is not a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise BadMessage("unsupported_schema_version", repr(version))
    return data


def parse_event(raw: bytes | None, known_domains: set[str]) -> EventMessage:
    clean, reason = validate_event(_decode(raw), known_domains=known_domains)
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


def parse_item(raw: bytes | None, known_domains: set[str]) -> ItemMessage:
    clean, reason = validate_item(_decode(raw))
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
