"""The Redis read contract with downstream services: key names and value formats.

This module is the only place that knows how keys are spelled and values encoded. The batch
publisher, the streaming consumer, the Python client and the HTTP API all go through it, so a
change here is a change of the public contract (bump ``SCHEMA_VERSION`` and document it in
README.md).

Keys (``{p}`` is ``settings.key_prefix``, ``crossrec`` by default):

=====================================  ======  ===================================================
key                                    type    value
=====================================  ======  ===================================================
``{p}:recs:{domain}:{user_id}``        string  JSON ``RecList`` (top-K, scores, model, updated_at)
``{p}:popular:{domain}``               string  JSON ``RecList`` of the domain's popular items
``{p}:model:current``                  string  the model version that serves now
``{p}:item:{domain}:{item_id}``        hash    ``title``, ``category``, ``brand`` (display data)
``{p}:history:{user_id}``              list    newest-first JSON ``HistoryEvent``s, capped
``{p}:seen:{event_id}``                string  marker (with TTL) that the consumer applied an event
=====================================  ======  ===================================================

A recommendation list is one string written with a single ``SET``, so readers never see half a
list: the replacement is atomic.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
HISTORY_CAP = 50


@dataclass(frozen=True)
class RecItem:
    item_id: str
    score: float
    because: str | None = None  # the history item that explains this recommendation


@dataclass(frozen=True)
class RecList:
    """One user's (or a domain's popular) top-K, as stored under a single key."""

    items: list[RecItem]
    model_version: str
    updated_at: float = field(default_factory=time.time)  # unix seconds
    source: str = "batch"  # batch | stream | popular

    def to_json(self) -> str:
        payload: dict[str, Any] = asdict(self)
        payload["v"] = SCHEMA_VERSION
        return json.dumps(payload, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> RecList:
        data = json.loads(raw)
        if data.get("v") != SCHEMA_VERSION:
            raise ValueError(f"unsupported recommendation schema version {data.get('v')!r}")
        return cls(
            items=[RecItem(**item) for item in data["items"]],
            model_version=data["model_version"],
            updated_at=float(data["updated_at"]),
            source=data.get("source", "batch"),
        )


@dataclass(frozen=True)
class HistoryEvent:
    domain: str
    item_id: str
    event_type: str
    ts: float  # unix seconds

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> HistoryEvent:
        return cls(**json.loads(raw))


class KeySchema:
    """Builds key names under one prefix so that a shared Redis stays tidy."""

    def __init__(self, prefix: str = "crossrec") -> None:
        if not prefix or ":" in prefix:
            raise ValueError("key prefix must be non-empty and must not contain ':'")
        self.prefix = prefix

    def recs(self, domain: str, user_id: str) -> str:
        return f"{self.prefix}:recs:{domain}:{user_id}"

    def popular(self, domain: str) -> str:
        return f"{self.prefix}:popular:{domain}"

    def current_model(self) -> str:
        return f"{self.prefix}:model:current"

    def item(self, domain: str, item_id: str) -> str:
        return f"{self.prefix}:item:{domain}:{item_id}"

    def history(self, user_id: str) -> str:
        return f"{self.prefix}:history:{user_id}"

    def seen(self, event_id: str) -> str:
        return f"{self.prefix}:seen:{event_id}"

    def recs_pattern(self, domain: str) -> str:
        """A SCAN pattern over every user's list in a domain (for tooling, not hot paths)."""
        return f"{self.prefix}:recs:{domain}:*"

    def dedupe(self, user_id: str) -> str:
        """The consumer's recent applied event ids of one user (a ZSET scored by event time).

        The user id is a hash tag, so the key shares a Redis Cluster slot with the user's other
        keys and the apply script may touch both atomically.
        """
        return f"{self.prefix}:dedupe:{{{user_id}}}"

    def item_vectors(self, encoder_version: str) -> str:
        """Text embeddings of items added by the stream (hash: ``domain<0x1f>item_id`` -> float32 bytes)."""
        return f"{self.prefix}:itemvec:{encoder_version}"
