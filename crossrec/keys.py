"""The Redis read contract with downstream services: key names and value formats.

This module is the only place that knows how keys are spelled and values encoded. The batch
publisher, the streaming consumer, the Python client and the HTTP API all go through it, so a
change here is a change of the public contract (bump ``SCHEMA_VERSION`` and document it in
README.md).

Keys (``{p}`` is ``settings.key_prefix``, ``crossrec`` by default; ``{U}`` is the user id *inside
literal braces*, a Redis Cluster hash tag, so every key of one user lives in one slot and a
script or transaction over a user's keys runs unchanged on a cluster):

=====================================  ======  ===================================================
key                                    type    value
=====================================  ======  ===================================================
``{p}:recs:{domain}:{U}``              string  JSON list, ready to serve (see ``RecList.to_json``)
``{p}:popular:{domain}``               string  the domain's popular items, same format
``{p}:model:current``                  string  the model version that serves now
``{p}:item:{domain}:{item_id}``        hash    ``title``, ``category``, ``brand`` (display data),
                                               ``updated_at`` (unix s of the write)
``{p}:history:{U}``                    list    newest-first JSON ``HistoryEvent``s, capped
``{p}:dedupe:{U}``                     zset    event ids the consumer applied recently (score: event time)
``{p}:itemvec:{encoder_version}``      hash    ``domain\x1fitem_id`` -> float32 vector of a streamed item
=====================================  ======  ===================================================

Schema 2 (this one) differs from 1 in two ways: per-user keys carry the ``{U}`` hash tag, and a
list is stored *ready to serve*: each item with its rank, title, category, brand and explanation
(title and domain of the history item that explains it), so a read is one ``GET`` whose bytes
the API passes through. Titles are resolved when the list is written; a renamed item shows its new
title in a list from that list's next write (the nightly publish or the user's next event).

A list written from a routed model also names the route it took (``"route"``, see
``RecList.to_json``); the key is absent in lists of unrouted models and of older writers, which
read as ``route=None``, so the schema version stays 2.

A recommendation list is one string written with a single ``SET``, so readers never see half a
list: the replacement is atomic.

User ids that cannot be a hash tag: Redis hashes the text between the first ``{`` and the first
``}`` after it, and hashes the *whole key* when that text is empty. A user id that is empty or
starts with ``}`` makes ``{}``, so that user's keys would fall in different slots and the
scripts over them fail on a cluster (``CROSSSLOT``). ``user_id_problem`` is the one rule; every
entry point applies it (the stream's message validation and the batch cleaner quarantine such
events as ``bad_user_id``, the publisher skips and counts such users, the client and the API
reject them), and ``KeySchema`` refuses to build such a key as the last line of defence.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

SCHEMA_VERSION = 2
HISTORY_CAP = 50
HASH_TAG_END = "}"  # a user id starting with it makes an empty hash tag (see user_id_problem)


def user_id_problem(user_id: str) -> str | None:
    """Why ``user_id`` cannot name a user's keys, or None when it can.

    The one rule for ids that break the ``{U}`` hash tag (module docstring); Spark applies the
    same rule as a column expression (``crossrec.cleaning.spark_rules.bad_user_id_col``).
    """
    if not user_id:
        return "user_id is empty, which makes an empty Redis Cluster hash tag"
    if user_id.startswith(HASH_TAG_END):
        return f"user_id {user_id[:40]!r} starts with {HASH_TAG_END!r}, which makes an empty Redis Cluster hash tag"
    return None


def _tag(user_id: str) -> str:
    """``{U}`` for a user's keys; ValueError for an id that would make an empty hash tag."""
    problem = user_id_problem(user_id)
    if problem is not None:
        raise ValueError(problem)
    return f"{{{user_id}}}"

Row = tuple[str | None, str | None, str | None]  # title, category, brand of one item
NO_ROW: Row = (None, None, None)


def because_text(title: str | None, item_id: str) -> str:
    """The one wording of an explanation (writers store it, so every reader shows the same)."""
    return f"because you bought {title or item_id}"


class RecItem(NamedTuple):
    """One recommended item. A named tuple rather than a frozen dataclass: the consumer and the
    nightly publish build one per listed item (5,000 per 500-user batch at the default top_k of
    10), and a named tuple is built in half the time (measured 0.32 against 0.63 µs)."""

    item_id: str
    score: float
    because: str | None = None  # the history item that explains this recommendation


class RoutedItems(list):  # type: ignore[type-arg]
    """A scorer's ranked ``RecItem``s for one user, with the route that produced them.

    A plain ``list`` to every caller that only ranks and writes items (the consumer's ``Scorer``
    protocol returns ``list[RecItem]``); ``route`` names the routed model's route (``model``,
    ``item_knn``, ``source_cooc``, ``text_knn``, ``popularity``, ``blend``; followed by ``+tail``
    when the route's tail slots placed an item in the list), or ``None`` for an unrouted model.
    """

    def __init__(self, items: Iterable[Any] = (), route: str | None = None) -> None:
        super().__init__(items)
        self.route = route


def route_of(items: Sequence[Any]) -> str | None:
    """The route a scorer's list took (``None`` for a plain list)."""
    return getattr(items, "route", None)


@dataclass(frozen=True)
class RecList:
    """One user's (or a domain's popular) top-K: what scorers produce and writers store.

    ``to_json`` adds the display data (the ready-to-serve form); ``from_json`` reads back the
    ids, scores and metadata, ignoring the display fields.
    """

    items: list[RecItem]
    model_version: str
    updated_at: float = field(default_factory=time.time)  # unix seconds
    source: str = "batch"  # batch | stream | popular
    route: str | None = None  # the routed model's route for this user; None: no routing

    def to_json(
        self,
        domain: str | None = None,
        display: Mapping[tuple[str, str], Row] | None = None,
        probe: Sequence[str] = (),
    ) -> str:
        """The stored value: ``{"v","source","model_version","updated_at","items":[...]}``, plus
        ``"route"`` when the list came from a routed model (lists without it, from unrouted models
        and older writers, read as ``route=None``).

        Each item is ``{"rank","item_id","score","title","category","brand","because"}`` with
        ``because`` = ``{"item_id","title","domain","text"}`` or null. ``display`` maps
        ``(domain, item_id)`` to a row; the explaining item is looked up in each of ``probe``'s
        domains in order (explanations are usually cross-domain), the first hit wins.
        """
        rows = display or {}
        out_items = []
        for rank, it in enumerate(self.items, start=1):
            title, category, brand = rows.get((domain, it.item_id), NO_ROW) if domain else NO_ROW
            because = None
            if it.because:
                b_title: str | None = None
                b_domain: str | None = None
                for d in probe:
                    row = rows.get((d, it.because))
                    if row is not None and row[0]:
                        b_title, b_domain = row[0], d
                        break
                because = {"item_id": it.because, "title": b_title, "domain": b_domain,
                           "text": because_text(b_title, it.because)}
            out_items.append({"rank": rank, "item_id": it.item_id, "score": it.score, "title": title,
                              "category": category, "brand": brand, "because": because})
        payload = {"v": SCHEMA_VERSION, "source": self.source, "model_version": self.model_version,
                   "updated_at": self.updated_at, "items": out_items}
        if self.route is not None:
            payload["route"] = self.route
        # msgspec: the JSON of json.dumps(payload, separators=(",", ":"), ensure_ascii=False), 7x
        # faster (measured 5 against 38 µs per 10-item list; the consumer encodes every list of a
        # batch). Only the spelling of some floats differs (1e-7 for 1e-07); they parse to the same value.
        # Stricter than json.dumps: plain str and float only (no numpy scalars, which every producer
        # converts), and a NaN score would be written as null.
        return msgspec.json.encode(payload).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> RecList:
        data = json.loads(raw)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> RecList:
        if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
            version = data.get("v") if isinstance(data, dict) else None
            raise ValueError(f"unsupported recommendation schema version {version!r}")
        items = []
        for item in data["items"]:
            because = item.get("because")
            items.append(RecItem(item["item_id"], float(item["score"]), because["item_id"] if because else None))
        return cls(items=items, model_version=data["model_version"], updated_at=float(data["updated_at"]),
                   source=data.get("source", "batch"), route=data.get("route"))


@dataclass(frozen=True)
class HistoryEvent:
    domain: str
    item_id: str
    event_type: str
    ts: float  # unix seconds

    def to_json(self) -> str:
        # The fields by hand, in their order: the same text as ``asdict``, without its deep copy
        # (the consumer serialises every event of a batch).
        return json.dumps({"domain": self.domain, "item_id": self.item_id, "event_type": self.event_type, "ts": self.ts},
                          separators=(",", ":"))

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
        return f"{self.prefix}:recs:{domain}:{_tag(user_id)}"

    def popular(self, domain: str) -> str:
        return f"{self.prefix}:popular:{domain}"

    def current_model(self) -> str:
        return f"{self.prefix}:model:current"

    def item(self, domain: str, item_id: str) -> str:
        return f"{self.prefix}:item:{domain}:{item_id}"

    def history(self, user_id: str) -> str:
        return f"{self.prefix}:history:{_tag(user_id)}"

    def recs_pattern(self, domain: str) -> str:
        """A SCAN pattern over every user's list in a domain (for tooling, not hot paths)."""
        return f"{self.prefix}:recs:{domain}:{{*"

    def user_of_recs_key(self, domain: str, key: str | bytes) -> str:
        """The user id of a key that ``recs_pattern(domain)`` matched."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[len(self.prefix) + len(domain) + 8 : -1]  # strip "{p}:recs:{domain}:{" and "}"

    def dedupe(self, user_id: str) -> str:
        """The consumer's recent applied event ids of one user (a ZSET scored by event time).

        The user id is a hash tag, so the key shares a Redis Cluster slot with the user's other
        keys and the apply script may touch both atomically.
        """
        return f"{self.prefix}:dedupe:{_tag(user_id)}"

    def item_vectors(self, encoder_version: str) -> str:
        """Text embeddings of items added by the stream (hash: ``domain<0x1f>item_id`` -> float32 bytes)."""
        return f"{self.prefix}:itemvec:{encoder_version}"
