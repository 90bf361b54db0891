"""Catalogue updates are durable and shared: an item that arrives on the ``items`` topic is embedded
by the real MiniLM encoder once, stored in Redis, and then scored by a restarted consumer, another
member of the group, a freshly loaded model and the nightly publish (real model, broker, Redis)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer
from streaming_support import isolated_settings, train_small_model

from crossrec.batch_publish import publish
from crossrec.keys import KeySchema, RecList
from crossrec.settings import Settings
from crossrec.streaming.catalog import model_encoder_version, read_item_vectors
from crossrec.streaming.consumer import RecsConsumer
from crossrec.streaming.scoring import load_scorer

pytestmark = pytest.mark.integration

NEW_ITEM = {"domain": "office", "item_id": "office-new", "title": "Heavy duty desktop stapler", "brand": "acme", "schema_version": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A promoted model over 384-d item embeddings: the size MiniLM gives a streamed item's text."""
    return train_small_model(tmp_path_factory.mktemp("catalog") / "work", dim=384, item_tower="text")


@pytest.fixture()
def settings(services_settings: Settings, trained: Path, redis_client) -> Settings:
    kafka = isolated_settings(services_settings).kafka  # fresh topics and group, created
    # top_k above the catalogue size: a list then holds every unmasked target item, so "is the new
    # item scored" does not depend on where this small model happens to rank it.
    settings = services_settings.model_copy(update={"work_dir": trained, "kafka": kafka, "top_k": 100})
    publish(settings, trained / "clean")
    return settings


def _send(settings: Settings, topic: str, key: bytes, values: list[dict]) -> None:
    producer = KafkaProducer(**settings.kafka.client_kwargs())
    for value in values:
        producer.send(topic, key=key, value=json.dumps(value).encode())
    producer.flush()
    producer.close()


def _list(redis_client, settings: Settings, user: str) -> list[str]:
    raw = redis_client.get(KeySchema(settings.key_prefix).recs(settings.target_domain, user))
    return [r.item_id for r in RecList.from_json(raw).items] if raw else []


def test_a_streamed_item_survives_restart_reload_publish_and_is_scored_by_another_member(settings: Settings, redis_client) -> None:
    _send(settings, settings.kafka.items_topic, b"office-new", [
        NEW_ITEM,
        {**NEW_ITEM, "item_id": "office-two", "title": "Recycled copy paper"},
    ])
    first = RecsConsumer(settings, lambda: load_scorer(settings), poll_timeout_ms=200)
    try:
        stats = first.run(max_events=2, max_seconds=60)
    finally:
        first.close()
    assert stats.items_added == 2 and not stats.dead_lettered
    scorer = load_scorer(settings)  # a model load, as after a restart or a nightly promotion
    assert scorer is not None and scorer.recommender.has_item("office", "office-new")
    stored = read_item_vectors(redis_client, KeySchema(settings.key_prefix), model_encoder_version(settings, scorer.recommender))
    assert {(d, i) for d, i, _ in stored} == {("office", "office-new"), ("office", "office-two")}
    assert all(v.shape == (384,) for _, _, v in stored)

    # two fresh members of the group (new processes would load exactly this way): whichever gets
    # the user's partition scores the new item; neither has seen the items topic message itself
    _send(settings, settings.kafka.events_topic, b"LIVEUSER", [
        {"user_id": "LIVEUSER", "domain": "office", "item_id": "office-001", "event_type": "purchase", "ts": 1_800_000_000_000, "schema_version": 1},
    ])
    members = [RecsConsumer(settings, lambda: load_scorer(settings), poll_timeout_ms=200) for _ in range(2)]
    try:
        # Both members run at once, as two processes would (one run() each: a run loads the model
        # once, so members taking turns with short runs spent their time loading, not polling).
        threads = [threading.Thread(target=m.run, kwargs={"max_seconds": 90}, daemon=True) for m in members]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and sum(m.stats.lists_written for m in members) < 1:
            time.sleep(0.1)
        for member in members:
            member.stop()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for member in members:
            member.close()
    assert sum(m.stats.applied for m in members) == 1
    assert "office-new" in _list(redis_client, settings, "LIVEUSER")

    # the nightly publish (a model loaded from the registry) keeps scoring it too
    publish(settings, settings.work_dir / "clean")
    assert "office-new" in _list(redis_client, settings, "U0000")


def test_an_item_the_model_cannot_take_is_dead_lettered_and_the_stream_goes_on(settings: Settings, redis_client) -> None:
    """A real ``Recommender.add_item`` failure (the model refuses a vector of the wrong size, as
    after an encoder swapped under a model): that item goes to the DLQ, the event after it is
    applied, and no vector is stored for it."""
    scorer = load_scorer(settings)
    assert scorer is not None
    original = scorer.embed
    scorer.embed = lambda texts: original(texts)[:, :100]  # type: ignore[method-assign]
    _send(settings, settings.kafka.items_topic, b"k", [NEW_ITEM])
    _send(settings, settings.kafka.events_topic, b"LIVEUSER", [
        {"user_id": "LIVEUSER", "domain": "office", "item_id": "office-002", "event_type": "click", "ts": 1_800_000_000_000, "schema_version": 1},
    ])
    consumer = RecsConsumer(settings, lambda: scorer, poll_timeout_ms=200)
    try:
        stats = consumer.run(max_events=2, max_seconds=60)
    finally:
        consumer.close()
    assert stats.dead_lettered == {"add_item_failed": 1} and stats.applied == 1 and stats.items_added == 0
    assert not read_item_vectors(redis_client, KeySchema(settings.key_prefix), scorer.encoder_version)
