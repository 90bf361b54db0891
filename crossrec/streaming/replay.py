"""Replay raw logs onto Kafka in the event contract: the demo's and load tests' traffic source.

Each event gets a deterministic ``event_id`` when the log has none (same rule as the cleaner),
so replaying the same file twice produces duplicates the consumer recognises and skips.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

from rich.progress import Progress

from crossrec.cleaning.normalize import validate_event
from crossrec.settings import Settings
from crossrec.streaming.messages import SCHEMA_VERSION


def iter_json_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                yield line


def to_event_message(line: str) -> tuple[bytes | None, bytes]:
    """(key, value) for one raw line; undecodable lines are sent as they are (the DLQ gets them)."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None, line.encode()
    if not isinstance(event, dict):
        return None, line.encode()
    event.setdefault("schema_version", SCHEMA_VERSION)
    clean, _ = validate_event(event)
    if clean is not None and not event.get("event_id"):
        event["event_id"] = clean["event_id"]  # invalid events go as they are: the consumer DLQs them
    key = str(event.get("user_id", "")).encode() or None
    return key, json.dumps(event, separators=(",", ":")).encode()


def replay(
    settings: Settings,
    path: Path,
    *,
    topic: str | None = None,
    limit: int | None = None,
    rate_per_s: float | None = None,
    users: set[str] | None = None,
) -> int:
    """Produce up to ``limit`` lines of ``path`` (optionally only ``users``' events); returns the count."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**settings.kafka.client_kwargs(), acks="all", linger_ms=5)
    target = topic or settings.kafka.events_topic
    sent = 0
    started = time.monotonic()
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"replaying to {target}", total=limit)
            for line in iter_json_lines(path):
                key, value = to_event_message(line)
                if users is not None and (key is None or key.decode() not in users):
                    continue
                producer.send(target, key=key, value=value)
                sent += 1
                progress.advance(task)
                if rate_per_s:
                    ahead = sent / rate_per_s - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                if limit is not None and sent >= limit:
                    break
        producer.flush()
    finally:
        producer.close()
    return sent
