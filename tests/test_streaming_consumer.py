"""The consumer against a real broker and a real Redis: apply, dead-letter, resume, no duplicates.

The scorer here is a small deterministic implementation of the consumer's own ``Scorer``
interface (not a stand-in for Kafka or Redis): these tests are about delivery semantics; the real
model's scoring is tested in the adaptation tests and end to end in test_streaming_e2e.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from streaming_support import CatalogueScorer, catalogue_settings, make_event, produce, read_history, read_recs

from crossrec.keys import KeySchema
from crossrec.settings import Settings
from crossrec.streaming.consumer import RecsConsumer

pytestmark = pytest.mark.integration


@pytest.fixture()
def settings(services_settings: Settings, redis_client) -> Settings:
    return catalogue_settings(services_settings, redis_client)


def _consumer(settings: Settings, scorer: CatalogueScorer | None) -> RecsConsumer:
    return RecsConsumer(settings, lambda: scorer, poll_timeout_ms=200)


def test_events_become_history_and_fresh_lists(settings: Settings, redis_client) -> None:
    scorer = CatalogueScorer("m1", ["o1", "o2", "o3", "o4"])
    produce(settings, settings.kafka.events_topic, [
        make_event("u1", "art", "a1", 1_600_000_000_000),
        make_event("u1", "office", "o4", 1_600_000_001_000),
        make_event("u2", "office", "o1", 1_600_000_002_000),
    ])
    consumer = _consumer(settings, scorer)
    try:
        stats = consumer.run(max_events=3, max_seconds=30)
    finally:
        consumer.close()
    assert stats.applied == 3 and stats.commits >= 1 and not stats.dead_lettered
    assert [h.item_id for h in read_history(redis_client, settings, "u1")] == ["o4", "a1"]  # newest first
    recs = read_recs(redis_client, settings, "u1")
    assert recs is not None and recs.source == "stream" and recs.model_version == "m1"
    assert [r.item_id for r in recs.items] == ["o3", "o2", "o1"]  # o4 is in the history: excluded
    assert recs.items[0].because == "o4"


def test_bad_messages_go_to_the_dead_letter_topic_with_reasons(settings: Settings, redis_client) -> None:
    good = make_event("u1", "office", "o1", 1_600_000_000_000)
    produce(settings, settings.kafka.events_topic, [
        b"{not json",
        {"user_id": "u1", "domain": "office", "item_id": "o2", "ts": 1_600_000_000_000},  # no event_type
        make_event("u1", "garden", "g1", 1_600_000_000_000),
        {**make_event("u1", "office", "o3", 0), "ts": "yesterday"},
        {**good, "schema_version": 99},
        good,
    ])
    consumer = _consumer(settings, CatalogueScorer("m1", ["o1", "o2"]))
    try:
        stats = consumer.run(max_events=6, max_seconds=30)
    finally:
        consumer.close()
    assert stats.applied == 1
    assert dict(stats.dead_lettered) == {
        "malformed_json": 1,
        "missing_field:event_type": 1,
        "unknown_domain": 1,
        "bad_timestamp": 1,
        "unsupported_schema_version": 1,
    }
    dlq = KafkaConsumer(
        settings.kafka.dead_letter_topic, **settings.kafka.client_kwargs(),
        auto_offset_reset="earliest", consumer_timeout_ms=5000,
    )
    letters = [json.loads(m.value) for m in dlq]
    dlq.close()
    assert sorted(l["reason"] for l in letters) == sorted(stats.dead_lettered)
    assert any(l["value"] == "{not json" for l in letters)  # the original bytes are kept


def test_a_found_item_is_not_looked_up_again_and_a_missing_one_is_asked_again(settings: Settings, redis_client) -> None:
    """The known-item check remembers items found in the catalogue (no EXISTS for them later),
    never items not found: one published after its first event is accepted at its next."""
    def exists_calls() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_exists", {}).get("calls", 0))

    schema = KeySchema(settings.key_prefix)
    consumer = _consumer(settings, CatalogueScorer("m1", ["o1", "o2", "o99"]))
    try:
        produce(settings, settings.kafka.events_topic, [make_event("u1", "office", "o1", 1_600_000_000_000), make_event("u2", "office", "o99", 1_600_000_000_001)])
        stats = consumer.run(max_events=2, max_seconds=30)
        assert stats.applied == 1 and dict(stats.dead_lettered) == {"unknown_item": 1}
        before = exists_calls()
        produce(settings, settings.kafka.events_topic, [make_event("u1", "office", "o1", 1_600_000_000_002)])
        stats = consumer.run(max_events=3, max_seconds=30)
        assert stats.applied == 2 and exists_calls() == before  # o1 was found before: no look-up
        redis_client.hset(schema.item("office", "o99"), mapping={"title": "office o99"})  # published since
        produce(settings, settings.kafka.events_topic, [make_event("u2", "office", "o99", 1_600_000_000_003)])
        stats = consumer.run(max_events=4, max_seconds=30)
        assert stats.applied == 3 and dict(stats.dead_lettered) == {"unknown_item": 1}
        assert exists_calls() == before + 1
    finally:
        consumer.close()
    assert [h.item_id for h in read_history(redis_client, settings, "u2")] == ["o99"]


def test_crash_before_commit_loses_nothing_and_duplicates_nothing(settings: Settings, redis_client) -> None:
    events = [make_event("u1", "office", f"o{i}", 1_600_000_000_000 + i, event_id=f"e{i}") for i in range(6)]
    produce(settings, settings.kafka.events_topic, events)
    scorer = CatalogueScorer("m1", [f"o{i}" for i in range(10)])

    crashed = _consumer(settings, scorer)
    crashed._maybe_reload_scorer(force=True)
    polled = []
    for _ in range(20):
        polled += [r for rs in crashed.consumer.poll(timeout_ms=500).values() for r in rs]
        if len(polled) >= 6:
            break
    outcome = crashed.process(polled)  # Redis written ...
    crashed.close()  # ... but the process "dies" before committing offsets
    assert outcome.applied == 6

    restarted = _consumer(settings, scorer)
    try:
        stats = restarted.run(max_events=6, max_seconds=30)
    finally:
        restarted.close()
    assert stats.consumed == 6 and stats.duplicates == 6 and stats.applied == 0  # re-delivered, skipped
    items = [h.item_id for h in read_history(redis_client, settings, "u1")]
    assert sorted(items) == sorted(f"o{i}" for i in range(6)) and len(items) == 6

    again = _consumer(settings, scorer)  # offsets now committed: nothing comes back
    try:
        assert again.run(max_seconds=4).consumed == 0
    finally:
        again.close()


def test_catalogue_update_makes_a_new_item_recommendable(settings: Settings, redis_client) -> None:
    scorer = CatalogueScorer("m1", ["o1"])
    produce(settings, settings.kafka.items_topic, [
        {"domain": "office", "item_id": "o-new", "title": "  Stapler &amp; Staples ", "brand": "acme"},
        {"domain": "office", "item_id": "o-bad"},  # no title
    ])
    produce(settings, settings.kafka.events_topic, [make_event("u9", "office", "o1", 1_700_000_000_000)])
    consumer = _consumer(settings, scorer)
    try:
        stats = consumer.run(max_events=3, max_seconds=30)
    finally:
        consumer.close()
    assert stats.items_added == 1 and stats.dead_lettered == {"missing_field:title": 1}
    assert scorer.embedded == ["Stapler & Staples | acme"]
    assert [(d, i) for d, i, _ in scorer.added] == [("office", "o-new")]
    schema = KeySchema(settings.key_prefix)
    assert redis_client.hget(schema.item("office", "o-new"), "title") == b"Stapler & Staples"
    stored = redis_client.hget(schema.item_vectors("test-encoder"), "office\x1fo-new")
    assert np.frombuffer(stored, "<f4").tolist() == scorer.added[0][2]  # the text vector is durable
    recs = read_recs(redis_client, settings, "u9")
    assert recs is not None and recs.items[0].item_id == "o-new"


def test_no_model_yet_keeps_history_and_writes_no_list(settings: Settings, redis_client) -> None:
    produce(settings, settings.kafka.events_topic, [make_event("u5", "office", "o1", 1_700_000_000_000)])
    consumer = _consumer(settings, None)
    try:
        stats = consumer.run(max_events=1, max_seconds=30)
    finally:
        consumer.close()
    assert stats.applied == 1 and stats.lists_written == 0
    assert read_recs(redis_client, settings, "u5") is None  # readers use the popular fallback
    assert len(read_history(redis_client, settings, "u5")) == 1


def test_model_pointer_change_reloads_the_scorer(settings: Settings, redis_client) -> None:
    scorers = {"m1": CatalogueScorer("m1", ["o1", "o2"]), "m2": CatalogueScorer("m2", ["o1", "o2"])}
    pointer = KeySchema(settings.key_prefix).current_model()
    consumer = RecsConsumer(
        settings, lambda: scorers[redis_client.get(pointer).decode()], poll_timeout_ms=200, reload_check_s=0
    )
    try:
        consumer.run(max_seconds=1)
        assert consumer.scorer is scorers["m1"]
        redis_client.set(pointer, "m2")
        produce(settings, settings.kafka.events_topic, [make_event("u7", "office", "o1", 1_700_000_000_000)])
        consumer.run(max_events=1, max_seconds=30)
    finally:
        consumer.close()
    assert consumer.scorer is scorers["m2"] and consumer.stats.model_reloads == 2
    recs = read_recs(redis_client, settings, "u7")
    assert recs is not None and recs.model_version == "m2"
