"""Helpers of the streaming tests: isolated topics, producing, reading Redis back, and a small
deterministic implementation of the consumer's ``Scorer`` interface (not a stand-in for Kafka or
Redis: the tests using it are about delivery semantics)."""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
from kafka import KafkaProducer

from crossrec.keys import HistoryEvent, KeySchema, RecItem, RecList
from crossrec.settings import Settings


class CatalogueScorer:
    """Recommends the target-domain catalogue items the user has not touched, newest added first.

    ``embed`` gives a deterministic 4-d vector per text and refuses texts containing
    "UNEMBEDDABLE" (what a real encoder does with input it cannot handle is raise).
    """

    encoder_version = "test-encoder"

    def __init__(self, version: str, items: list[str]) -> None:
        self.version = version
        self.items = list(items)
        self.embedded: list[str] = []
        self.added: list[tuple[str, str, list[float]]] = []

    def covers(self, domain: str) -> bool:
        return domain in ("art", "office")

    def recommend_many(self, histories: Mapping[str, Sequence[HistoryEvent]], k: int) -> dict[str, list[RecItem]]:
        out = {}
        for user, history in histories.items():
            seen = {h.item_id for h in history}
            ranked = [i for i in reversed(self.items) if i not in seen][:k]
            because = history[-1].item_id if history else None
            out[user] = [RecItem(i, 1.0 / (n + 1), because) for n, i in enumerate(ranked)]
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if any("UNEMBEDDABLE" in t for t in texts):
            raise ValueError("cannot embed this text")
        self.embedded += list(texts)
        return np.asarray([[zlib.crc32(t.encode()) % 97, len(t), 1.0, 0.5] for t in texts], dtype=np.float32)

    def add_item(self, domain: str, item_id: str, vector: np.ndarray) -> None:
        self.added.append((domain, item_id, [float(x) for x in vector]))
        if domain == "office" and item_id not in self.items:
            self.items.append(item_id)


def isolated_settings(settings: Settings) -> Settings:
    """Fresh topics and group per test so tests never read each other's messages."""
    tag = uuid.uuid4().hex[:8]
    kafka = settings.kafka.model_copy(
        update={
            "events_topic": f"events-{tag}",
            "items_topic": f"items-{tag}",
            "dead_letter_topic": f"dlq-{tag}",
            "consumer_group": f"group-{tag}",
        }
    )
    from crossrec.services import ensure_topics

    isolated = settings.model_copy(update={"kafka": kafka, "top_k": 3})
    ensure_topics(isolated)
    return isolated


def make_event(user: str, domain: str, item: str, ts_ms: int, event_id: str | None = None) -> dict:
    event = {"user_id": user, "domain": domain, "item_id": item, "event_type": "purchase", "ts": ts_ms, "schema_version": 1}
    if event_id:
        event["event_id"] = event_id
    return event


def produce(settings: Settings, topic: str, values: list[object]) -> None:
    producer = KafkaProducer(**settings.kafka.client_kwargs())
    for value in values:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.send(topic, key=b"k", value=raw)
    producer.flush()
    producer.close()


def read_history(redis_client, settings: Settings, user: str) -> list[HistoryEvent]:
    raw = redis_client.lrange(KeySchema(settings.key_prefix).history(user), 0, -1)
    return [HistoryEvent.from_json(r) for r in raw]


def read_recs(redis_client, settings: Settings, user: str) -> RecList | None:
    raw = redis_client.get(KeySchema(settings.key_prefix).recs(settings.target_domain, user))
    return RecList.from_json(raw) if raw else None


CATALOGUE = [("art", f"a{i}") for i in range(10)] + [("office", f"o{i}") for i in range(10)]


def catalogue_settings(services_settings: Settings, redis_client) -> Settings:
    """Isolated topics, a current model pointer ``m1``, and the display hashes of ``CATALOGUE``
    (an event on an item without one is refused as unknown)."""
    settings = isolated_settings(services_settings)
    schema = KeySchema(settings.key_prefix)
    redis_client.set(schema.current_model(), "m1")
    for domain, item_id in CATALOGUE:
        redis_client.hset(schema.item(domain, item_id), mapping={"title": f"{domain} {item_id}"})
    return settings
