"""Helpers of the streaming tests: isolated topics, producing, reading Redis back, and a small
deterministic implementation of the consumer's ``Scorer`` interface (not a stand-in for Kafka or
Redis: the tests using it are about delivery semantics)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

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


# -- real `crossrec stream` processes ------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parent.parent


def stream_env(settings: Settings, **streaming: object) -> dict[str, str]:
    """The environment that makes a `crossrec stream` process use exactly ``settings``."""
    kafka = settings.kafka
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSREC_")}
    env.update({
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CROSSREC_CONFIG": str(REPO_ROOT / "tests" / "data" / "empty.yaml"),
        "CROSSREC_WORK_DIR": str(settings.work_dir),
        "CROSSREC_TOP_K": str(settings.top_k),
        "CROSSREC_REDIS__URL": settings.redis.url,
        "CROSSREC_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CROSSREC_KAFKA__EVENTS_TOPIC": kafka.events_topic,
        "CROSSREC_KAFKA__ITEMS_TOPIC": kafka.items_topic,
        "CROSSREC_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "CROSSREC_KAFKA__CONSUMER_GROUP": kafka.consumer_group,
        "CROSSREC_STREAMING__METRICS_PORT": "0",
    })
    env.update({f"CROSSREC_STREAMING__{k.upper()}": str(v) for k, v in streaming.items()})
    return env


def spawn_stream(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """A real consumer process (its own session, so a test can signal it alone)."""
    handle = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    return subprocess.Popen(
        [sys.executable, "-m", "crossrec.cli", "stream", *args],
        env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
    )


def committed_total(settings: Settings) -> tuple[int, int]:
    """(committed, end) summed over the events topic's partitions, as the broker stores them."""
    from crossrec.streaming.lag import group_lag

    rows = group_lag(settings, [settings.kafka.events_topic])
    return sum(r.committed or 0 for r in rows), sum(r.end for r in rows)


def wait_for(condition, timeout_s: float, what: str, step_s: float = 0.1):
    """Poll ``condition`` until it returns a truthy value; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def produce_user_events(settings: Settings, users: list[str], per_user: int, items: list[tuple[str, str]], ts0: int) -> dict[str, list[int]]:
    """``per_user`` valid events for each user (keyed by user); returns user -> the events' ts_ms.

    Every event has a distinct timestamp, so a history can be checked entry by entry: each
    produced event must be there exactly once.
    """
    producer = KafkaProducer(**settings.kafka.client_kwargs(), linger_ms=5)
    sent: dict[str, list[int]] = {}
    n = 0
    for round_ in range(per_user):
        for user in users:
            domain, item = items[(n * 7 + round_) % len(items)]
            ts = ts0 + n
            producer.send(settings.kafka.events_topic, key=user.encode(),
                          value=json.dumps(make_event(user, domain, item, ts, event_id=f"{user}-{ts}")).encode())
            sent.setdefault(user, []).append(ts)
            n += 1
    producer.flush()
    producer.close()
    return sent


def histories_ts(redis_client, settings: Settings, users: list[str]) -> dict[str, list[int]]:
    """user -> sorted ts_ms of every history entry (duplicates kept, so they show)."""
    schema = KeySchema(settings.key_prefix)
    pipe = redis_client.pipeline(transaction=False)
    for user in users:
        pipe.lrange(schema.history(user), 0, -1)
    return {u: sorted(round(HistoryEvent.from_json(e).ts * 1000) for e in raw) for u, raw in zip(users, pipe.execute())}


def train_small_model(work: Path, *, dim: int = 16, **model: object) -> Path:
    """A work dir with synthetic clean data, embeddings of ``dim`` and one promoted model."""
    from crossrec.adaptation.model import ModelConfig
    from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
    from crossrec.adaptation.synthetic import write_synthetic
    from crossrec.adaptation.trainer import TrainConfig

    work = write_synthetic(work, n_users=30, n_items=20, dim=dim)
    run_adapt(
        AdaptOptions(
            input_dir=work, output_dir=work / "adapt", strategies=["pretrain_finetune_all"], seeds=[0],
            fractions=[], split_path=work / "users_split.json", registry_dir=work / "registry",
            model=ModelConfig(dim=16, max_len=12, **model), train=TrainConfig(max_epochs=1, pretrain_epochs=1, patience=1),  # type: ignore[arg-type]
        ),
        say=lambda _: None,
    )
    return work
