"""Poison messages against a real broker and Redis: each one lands on the DLQ with its reason and
the original bytes, and the valid events around it are applied (the partition never stops)."""

from __future__ import annotations

import base64
import json

import pytest
from kafka import KafkaConsumer, KafkaProducer
from streaming_support import CatalogueScorer, catalogue_settings, make_event, read_history, read_recs

from crossrec.keys import KeySchema
from crossrec.settings import Settings
from crossrec.streaming.consumer import RecsConsumer

pytestmark = pytest.mark.integration


@pytest.fixture()
def settings(services_settings: Settings, redis_client) -> Settings:
    return catalogue_settings(services_settings, redis_client)


def _dead_letters(settings: Settings) -> list[dict]:
    dlq = KafkaConsumer(
        settings.kafka.dead_letter_topic, **settings.kafka.client_kwargs(),
        auto_offset_reset="earliest", consumer_timeout_ms=5000,
    )
    letters = [json.loads(m.value) for m in dlq]
    dlq.close()
    return letters


def test_every_kind_of_poison_is_dead_lettered_and_the_valid_events_around_it_applied(settings: Settings, redis_client) -> None:
    schema = KeySchema(settings.key_prefix)
    # a history entry some other writer corrupted: the next event of that user must not stop the stream
    redis_client.lpush(schema.history("corrupt-user"), b"\xff{not a history entry")
    huge = json.dumps({**make_event("u1", "office", "o1", 1_600_000_000_000), "pad": "x" * 1_100_000}).encode()
    poison: list[tuple[str, bytes]] = [
        ("malformed_json", b"{not json"),
        ("wrong_type:user_id", json.dumps({**make_event("u1", "office", "o1", 1_600_000_000_000), "user_id": {"id": 1}}).encode()),
        ("wrong_type:item_id", json.dumps({**make_event("u1", "office", "o1", 1_600_000_000_000), "item_id": ["o1"]}).encode()),
        ("missing_field:event_type", json.dumps({"user_id": "u1", "domain": "office", "item_id": "o2", "ts": 1_600_000_000_000}).encode()),
        ("unknown_domain", json.dumps(make_event("u1", "garden", "g1", 1_600_000_000_000)).encode()),
        ("bad_user_id", json.dumps(make_event("}u1", "office", "o1", 1_600_000_000_000)).encode()),  # empty hash tag
        ("unknown_item", json.dumps(make_event("u1", "office", "o-404", 1_600_000_000_000)).encode()),
        ("value_too_large", huge),
        ("unsupported_schema_version", json.dumps({**make_event("u1", "office", "o1", 1_600_000_000_000), "schema_version": 2}).encode()),
        ("not_utf8", b'{"user_id": "u1", "domain": "office", "item_id": "o\xe9\xff"}'),
        ("corrupt_history", json.dumps(make_event("corrupt-user", "office", "o5", 1_600_000_000_500, event_id="c1")).encode()),
    ]
    producer = KafkaProducer(**settings.kafka.client_kwargs(), max_request_size=4_000_000)
    valid_ids = []
    for n, (_, value) in enumerate(poison):
        good = make_event("u1", "office", f"o{n % 10}", 1_600_000_001_000 + n, event_id=f"good-{n}")
        valid_ids.append(good["ts"])
        producer.send(settings.kafka.events_topic, key=b"u1", value=value)
        producer.send(settings.kafka.events_topic, key=b"u1", value=json.dumps(good).encode())
    producer.send(settings.kafka.items_topic, key=b"i", value=json.dumps({"domain": "office", "item_id": "o-un", "title": "UNEMBEDDABLE thing"}).encode())
    producer.send(settings.kafka.items_topic, key=b"i", value=json.dumps({"domain": "office", "item_id": "o-ok", "title": "Desk lamp"}).encode())
    producer.flush()
    producer.close()

    scorer = CatalogueScorer("m1", [f"o{i}" for i in range(10)])
    consumer = RecsConsumer(settings, lambda: scorer, poll_timeout_ms=200)
    total = 2 * len(poison) + 2
    try:
        stats = consumer.run(max_events=total, max_seconds=60)
    finally:
        consumer.close()

    expected = {reason: 1 for reason, _ in poison} | {"embed_failed": 1}
    assert stats.consumed == total and dict(stats.dead_lettered) == expected
    # every valid event is in the history exactly once (newest first), plus the corrupt user's event
    assert sorted(h.ts * 1000 for h in read_history(redis_client, settings, "u1")) == valid_ids
    assert [h.item_id for h in read_history(redis_client, settings, "corrupt-user")] == ["o5"]  # the bad entry removed
    assert read_recs(redis_client, settings, "corrupt-user") is not None  # scored from what was readable
    assert read_recs(redis_client, settings, "u1") is not None
    assert stats.items_added == 1 and scorer.embedded == ["Desk lamp"]

    letters = _dead_letters(settings)
    assert sorted(letter["reason"] for letter in letters) == sorted(expected)
    by_reason = {letter["reason"]: letter for letter in letters}
    assert by_reason["malformed_json"]["value"] == "{not json"  # the original bytes are kept
    assert base64.b64decode(by_reason["not_utf8"]["value_b64"]).endswith(b"o\xe9\xff\"}")
    large = by_reason["value_too_large"]
    assert large["value_bytes"] == len(huge) and large["truncated"] and large["offset"] >= 0
    assert by_reason["embed_failed"]["topic"] == settings.kafka.items_topic
