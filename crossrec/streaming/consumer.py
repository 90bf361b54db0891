"""The recommendations consumer: Kafka events -> user history -> fresh top-K in Redis.

Delivery guarantee: offsets are committed only after everything a batch caused is durable
(history and lists in Redis, bad messages on the dead-letter topic), so a crash or restart
re-delivers at most the uncommitted batch and loses nothing. Re-delivery is harmless because
each event is applied through a Lua script that marks ``{p}:seen:{event_id}`` and pushes the
history entry atomically: an event already seen is skipped, so history never holds a duplicate.

The scorer is re-loaded when the model pointer in Redis changes (a nightly promotion), so the
consumer never needs a restart to pick up a new model.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from crossrec.keys import HistoryEvent, KeySchema, RecItem, RecList
from crossrec.publish import ItemDisplay, RecWriter
from crossrec.settings import Settings
from crossrec.streaming.messages import BadMessage, EventMessage, ItemMessage, parse_event, parse_item

log = logging.getLogger(__name__)

SEEN_TTL_S = 7 * 24 * 3600  # longer than any plausible re-delivery window

# KEYS[1] = seen marker, KEYS[2] = history list; ARGV = event json, cap, ttl.
_APPLY_EVENT_LUA = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  return 1
end
return 0
"""


class Scorer(Protocol):
    """What the consumer needs from a model; ``crossrec.streaming.scoring`` adapts the real one."""

    version: str

    def recommend(self, history: list[HistoryEvent], k: int) -> list[RecItem]: ...

    def add_item(self, domain: str, item_id: str, text: str) -> None: ...


ScorerFactory = Callable[[], "Scorer | None"]


@dataclass
class ConsumerStats:
    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    items_added: int = 0
    lists_written: int = 0
    commits: int = 0
    model_reloads: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["dead_lettered"] = dict(self.dead_lettered)
        return data


class RecsConsumer:
    """A member of the ``kafka.consumer_group`` group; run several for more partitions/throughput."""

    def __init__(
        self,
        settings: Settings,
        scorer_factory: ScorerFactory,
        *,
        poll_timeout_ms: int = 500,
        max_poll_records: int = 500,
        reload_check_s: float = 10.0,
        heartbeat_file: Path | None = None,
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.settings = settings
        self.schema = KeySchema(settings.key_prefix)
        self.writer = RecWriter.from_settings(settings)
        self._apply_event = self.writer.client.register_script(_APPLY_EVENT_LUA)
        self.scorer_factory = scorer_factory
        self.scorer: Scorer | None = None
        self.known_domains = set(settings.domains)
        self.poll_timeout_ms = poll_timeout_ms
        self.reload_check_s = reload_check_s
        self.heartbeat_file = heartbeat_file
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._last_reload_check = 0.0
        kafka = settings.kafka
        self.consumer = KafkaConsumer(
            kafka.events_topic,
            kafka.items_topic,
            **kafka.client_kwargs(),
            group_id=kafka.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
            session_timeout_ms=6000,  # measured: default timeouts make group joins take ~23 s
            heartbeat_interval_ms=2000,
            client_id="crossrec-consumer",
        )
        self.producer = KafkaProducer(**kafka.client_kwargs(), acks="all", client_id="crossrec-dlq")

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.producer.close()
        self.writer.close()

    def run(
        self,
        *,
        max_seconds: float | None = None,
        max_events: int | None = None,
        idle_exit_s: float | None = None,
        on_batch: Callable[[ConsumerStats], None] | None = None,
    ) -> ConsumerStats:
        """Poll until stopped, or a bound is hit (for demos, tests and one-shot catch-up runs)."""
        started = time.monotonic()
        last_message = started
        self._maybe_reload_scorer(force=True)
        while not self._stop.is_set():
            batch = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
            records = [rec for recs in batch.values() for rec in recs]
            now = time.monotonic()
            if records:
                self.process(records)
                self.producer.flush()
                self.consumer.commit()
                self.stats.commits += 1
                last_message = now
                if on_batch is not None:
                    on_batch(self.stats)
            self._beat()
            self._maybe_reload_scorer()
            if max_seconds is not None and now - started >= max_seconds:
                break
            if max_events is not None and self.stats.consumed >= max_events:
                break
            if idle_exit_s is not None and now - last_message >= idle_exit_s:
                break
        return self.stats

    # -- processing --------------------------------------------------------------------------
    def process(self, records: Iterable[Any]) -> None:
        """Apply one polled batch; the caller commits offsets only after this returns."""
        kafka = self.settings.kafka
        touched_users: dict[str, None] = {}  # ordered set
        for record in records:
            self.stats.consumed += 1
            try:
                if record.topic == kafka.items_topic:
                    self._apply_item(parse_item(record.value, self.known_domains))
                else:
                    event = parse_event(record.value, self.known_domains)
                    self._apply_history(event)
                    # Refresh even for a duplicate: a crash may have come after the history write
                    # but before the list write, and re-scoring is idempotent.
                    touched_users[event.user_id] = None
            except BadMessage as bad:
                self._dead_letter(record, bad.reason)
        for user_id in touched_users:
            self._refresh_recs(user_id)

    def _apply_history(self, event: EventMessage) -> None:
        entry = HistoryEvent(event.domain, event.item_id, event.event_type, event.ts_ms / 1000.0)
        applied = self._apply_event(
            keys=[self.schema.seen(event.event_id), self.schema.history(event.user_id)],
            args=[entry.to_json(), self.writer.history_cap, SEEN_TTL_S],
        )
        if applied:
            self.stats.applied += 1
        else:
            self.stats.duplicates += 1

    def _apply_item(self, item: ItemMessage) -> None:
        self.writer.write_items([ItemDisplay(item.domain, item.item_id, item.title, item.category, item.brand)])
        if self.scorer is not None:
            self.scorer.add_item(item.domain, item.item_id, item.text)
        self.stats.items_added += 1

    def _refresh_recs(self, user_id: str) -> None:
        if self.scorer is None:
            return  # no model promoted yet: readers fall back to the popular list
        raw = self.writer.client.lrange(self.schema.history(user_id), 0, -1)
        history = [HistoryEvent.from_json(r) for r in reversed(raw)]  # oldest first
        items = self.scorer.recommend(history, self.settings.top_k)
        recs = RecList(items=items, model_version=self.scorer.version, source="stream")
        self.writer.write_recs(self.settings.target_domain, user_id, recs)
        self.stats.lists_written += 1

    def _dead_letter(self, record: Any, reason: str) -> None:
        payload = {
            "reason": reason,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key.decode("utf-8", "replace") if record.key else None,
            "value": record.value.decode("utf-8", "replace") if record.value else None,
        }
        self.producer.send(self.settings.kafka.dead_letter_topic, key=record.key, value=json.dumps(payload).encode())
        self.stats.dead_lettered[reason] += 1

    # -- housekeeping ------------------------------------------------------------------------
    def _maybe_reload_scorer(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_reload_check < self.reload_check_s:
            return
        self._last_reload_check = now
        current = self.writer.current_model()
        if not force and (current is None or (self.scorer is not None and current == self.scorer.version)):
            return
        scorer = self.scorer_factory()
        if scorer is not None and (self.scorer is None or scorer.version != self.scorer.version):
            log.info("consumer now scores with model %s", scorer.version)
            self.scorer = scorer
            self.stats.model_reloads += 1

    def _beat(self) -> None:
        if self.heartbeat_file is not None:
            self.heartbeat_file.touch()
