"""The real model end to end: train on a tiny fixture, publish every user's list, then let live
events through the consumer refresh lists, with explanations, against real Redis and broker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from crossrec.adaptation.model import ModelConfig
from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
from crossrec.adaptation.synthetic import write_synthetic
from crossrec.adaptation.trainer import TrainConfig
from crossrec.batch_publish import publish
from crossrec.client import RecClient
from crossrec.keys import KeySchema
from crossrec.services import ensure_topics
from crossrec.settings import Settings
from crossrec.streaming.consumer import RecsConsumer
from crossrec.streaming.scoring import load_scorer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work dir with the synthetic clean data, embeddings and one promoted model."""
    work = write_synthetic(tmp_path_factory.mktemp("e2e") / "work", n_users=40, n_items=30, dim=16)
    run_adapt(
        AdaptOptions(
            input_dir=work, output_dir=work / "adapt", strategies=["pretrain_finetune_all"], seeds=[0],
            fractions=[], split_path=work / "users_split.json", registry_dir=work / "registry",
            model=ModelConfig(dim=16, max_len=12), train=TrainConfig(max_epochs=2, pretrain_epochs=2, patience=1),
        ),
        say=lambda _: None,
    )
    return work


@pytest.fixture()
def settings(services_settings: Settings, trained: Path, redis_client) -> Settings:
    tag = uuid.uuid4().hex[:8]
    kafka = services_settings.kafka.model_copy(update={
        "events_topic": f"ev-{tag}", "items_topic": f"it-{tag}", "dead_letter_topic": f"dlq-{tag}",
        "consumer_group": f"g-{tag}",
    })
    settings = services_settings.model_copy(update={"work_dir": trained, "kafka": kafka, "top_k": 5})
    ensure_topics(settings)
    return settings


def test_publish_writes_every_user_with_explanations_then_the_pointer(settings: Settings, redis_client) -> None:
    summary = publish(settings, settings.work_dir / "clean")
    assert summary.model_version == "v0001"
    assert summary.users == summary.lists_written == 40 and summary.histories_seeded == 40
    assert set(summary.popular) == {"art", "office"} and min(summary.popular.values()) > 0
    schema = KeySchema(settings.key_prefix)
    assert redis_client.get(schema.current_model()) == b"v0001"
    with RecClient(settings) as client:
        recs = client.get("U0000", "office", 5)
        history = client.history("U0000", limit=50)
    assert not recs.fallback and recs.model_version == "v0001" and len(recs.items) == 5
    bought = {e.item_id for e in history.entries}
    assert all(r.because is not None and r.because.item_id in bought for r in recs.items)
    assert all(r.title for r in recs.items)
    # the list leaves out what the user already has in the target domain
    office_bought = {e.item_id for e in history.entries if e.domain == "office"}
    assert not office_bought & {r.item_id for r in recs.items}

    # a second publish keeps histories the consumer may have extended
    redis_client.lpush(schema.history("U0000"), json.dumps({"domain": "office", "item_id": "office-000", "event_type": "click", "ts": 2e9}))
    again = publish(settings, settings.work_dir / "clean")
    assert again.histories_seeded == 0
    assert b"2000000000" in redis_client.lindex(schema.history("U0000"), 0)


def test_live_events_and_new_items_refresh_lists_with_the_real_model(settings: Settings, redis_client) -> None:
    publish(settings, settings.work_dir / "clean")
    scorer = load_scorer(settings)
    assert scorer is not None and scorer.version == "v0001"
    producer = KafkaProducer(**settings.kafka.client_kwargs())
    events = [
        {"user_id": "NEWUSER", "domain": "art", "item_id": "art-001", "event_type": "purchase", "ts": 1_800_000_000_000, "schema_version": 1},
        {"user_id": "NEWUSER", "domain": "office", "item_id": "office-004", "event_type": "purchase", "ts": 1_800_000_001_000, "schema_version": 1},
        {"user_id": "NEWUSER", "domain": "office", "item_id": "office-404", "event_type": "purchase", "ts": 1_800_000_002_000, "schema_version": 1},
    ]
    for event in events:
        producer.send(settings.kafka.events_topic, key=b"NEWUSER", value=json.dumps(event).encode())
    producer.flush()
    producer.close()

    consumer = RecsConsumer(settings, lambda: load_scorer(settings), poll_timeout_ms=200)
    try:
        stats = consumer.run(max_events=3, max_seconds=60)
    finally:
        consumer.close()
    assert stats.applied == 2 and stats.lists_written >= 1
    assert stats.dead_lettered == {"unknown_item": 1}  # office-404 is in no catalogue: refused, kept in the DLQ
    with RecClient(settings) as client:
        recs = client.get("NEWUSER", "office", 5)
    assert not recs.fallback and recs.source == "stream" and recs.model_version == "v0001"
    assert "office-004" not in {r.item_id for r in recs.items}  # bought: masked
    assert {r.because.item_id for r in recs.items if r.because} <= {"art-001", "office-004"}
    # the event on an item no catalogue knows is not in the history (it is on the DLQ with its reason)
    with RecClient(settings) as client:
        assert [e.item_id for e in client.history("NEWUSER").entries] == ["office-004", "art-001"]
