"""The recommendations consumer: Kafka events -> user history -> fresh top-K in Redis.

Per poll (at most ``streaming.max_poll_records`` messages, which bounds a batch's memory):

1. **validate** every message (the cleaner's rules; an event on an item with no catalogue hash
   is refused when ``streaming.require_known_items``);
2. **apply**: catalogue items are embedded in one encoder call and stored (display hash and text
   vector, see :mod:`crossrec.streaming.catalog`); events go to the histories through the dedupe
   script, all in one pipeline that also reads back each touched user's history (see
   :mod:`crossrec.streaming.history`);
3. **score** every touched user of the batch with one matmul over the target catalogue;
4. **write** every list in one pipeline;
4b. **push** the touched users' fresh features to Feast (:mod:`crossrec.features.push`), in a
    child process (or on a worker thread) while the next batches are polled and scored (see below);
5. **commit** the batch's offsets, once the dead-letter sends of the batch are confirmed and a
   Feast push carrying its users has returned.

Delivery guarantee: offsets are committed only after everything a batch caused is durable, so a
crash re-delivers at most the uncommitted batches and loses nothing; re-delivery is harmless because
the dedupe script skips an event already applied, and a re-delivered event re-scores and re-pushes
its user.

The Feast push (tens of ms per batch, mostly Feast's own Python) runs on the push lane
(:mod:`crossrec.streaming.pushlane`): pushes one at a time and in order, batches that arrive
during a push merged into the next one; the pushes run in a child process with its own Feast
store (:mod:`crossrec.streaming.pushproc`, ``streaming.push_process``), or on one worker thread. A push starts at most every ``streaming.push_interval_s``. A batch's offsets are committed
only once a push carrying its users returned; past ``streaming.max_pending_events`` uncommitted
events the loop waits for the push (so at most that many plus one poll are uncommitted); a crash
re-delivers them and their users are pushed again. A push that fails on Redis goes back into the next push (newer
histories win) and its batches stay uncommitted until one succeeds; any other push failure is
logged and counted by :class:`~crossrec.features.push.FeaturePusher`, never silent.

A message that cannot be handled (bad bytes, an
unknown item, a text the encoder cannot embed, a corrupt stored history, a scoring failure) goes
to the dead-letter topic with a reason and the partition goes on. A dependency error (Redis or
the broker) retries the whole batch with exponential backoff (tenacity) until it is back; the
heartbeat file is not touched meanwhile, so the health check turns unhealthy, and the process
never exits for an outage.

The scorer is re-loaded when the model pointer in Redis changes (a nightly promotion), so the
consumer never needs a restart to pick up a new model.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from crossrec.features.push import SKIPPED_NO_REGISTRY, FeaturePusher
from crossrec.keys import HistoryEvent, KeySchema, RecItem, RecList, route_of
from crossrec.publish import ItemDisplay, RecWriter
from crossrec.settings import Settings
from crossrec.streaming.catalog import queue_item_vectors
from crossrec.streaming.faults import DEPENDENCY_ERRORS, dead_letter_payload, dependency_name
from crossrec.streaming.group import group_member_kwargs
from crossrec.streaming.history import APPLIED, DUPLICATE, OUTSIDE_WINDOW, HistoryApplier, HistoryDecoder, PendingEvent
from crossrec.streaming.messages import BadMessage, EventMessage, ItemMessage, parse_event, parse_item
from crossrec.streaming.metrics import STAGES, ConsumerMetrics
from crossrec.streaming.pushlane import PushLane
from crossrec.streaming.pushproc import ChildPush

log = logging.getLogger(__name__)

FRESHNESS_SAMPLES = 200_000  # newest produce-to-list latencies kept for the stats file
KNOWN_ITEMS = 200_000  # catalogue items a consumer remembers as found (about 40 MB at most)

# Dead-letter reasons the consumer adds to the parser's.
UNKNOWN_ITEM = "unknown_item"
EMBED_FAILED = "embed_failed"
ADD_ITEM_FAILED = "add_item_failed"
CORRUPT_HISTORY = "corrupt_history"
SCORING_FAILED = "scoring_failed"
OUTSIDE_DEDUPE_WINDOW = "outside_dedupe_window"


class Scorer(Protocol):
    """What the consumer needs from a model; ``crossrec.streaming.scoring`` adapts the real one."""

    version: str

    @property
    def encoder_version(self) -> str:
        """Key of the stored item vectors (the encoder's weights, pooling and dtype)."""
        ...

    def covers(self, domain: str) -> bool: ...

    def recommend_many(self, histories: Mapping[str, Sequence[HistoryEvent]], k: int) -> dict[str, list[RecItem]]: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def add_item(self, domain: str, item_id: str, vector: np.ndarray) -> None: ...


ScorerFactory = Callable[[], "Scorer | None"]


@dataclass
class ConsumerStats:
    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    items_added: int = 0
    lists_written: int = 0
    commits: int = 0
    batches: int = 0
    model_reloads: int = 0
    dependency_errors: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    # Main-loop time per stage; "push" is the time the loop waited for a batch's Feast push.
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    push_busy_s: float = 0.0  # the Feast pushes' own run time on their worker thread (overlaps batches)
    pushes: int = 0  # Feast pushes that returned (one may carry several batches)
    # (list written at, unix ms; produce-to-list latency, ms) of the newest events
    freshness: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=FRESHNESS_SAMPLES))

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "freshness"}
        data["dead_lettered"] = dict(self.dead_lettered)
        data["stage_s"] = dict(self.stage_s)
        if self.freshness:
            fresh = np.asarray([latency for _, latency in self.freshness])
            data["freshness_ms"] = {
                "n": int(fresh.size),
                "p50": float(np.percentile(fresh, 50)),
                "p99": float(np.percentile(fresh, 99)),
                "max": float(fresh.max()),
            }
        return data


@dataclass
class _Batch:
    """What one attempt at a batch produced; merged into the stats only once it is committed."""

    applied: int = 0
    duplicates: int = 0
    items_added: int = 0
    lists_written: int = 0
    dead: list[tuple[Any, str, str]] = field(default_factory=list)  # (record, reason, detail)
    stage_s: dict[str, float] = field(default_factory=dict)
    freshness: list[tuple[float, float]] = field(default_factory=list)
    corrupt: dict[str, list[bytes]] = field(default_factory=dict)  # user -> unreadable history entries
    raw_histories: dict[str, list[bytes]] = field(default_factory=dict)  # each touched user's stored history after the apply
    histories: dict[str, list[HistoryEvent]] | None = None  # what scoring decoded; the feature push reuses it
    touched: list[str] = field(default_factory=list)  # users whose features the batch pushes


@dataclass
class _Pending:
    """A processed batch whose offsets wait for its Feast push (``ticket``) to be committed."""

    records: list[Any]
    outcome: _Batch
    polled_at: float  # perf_counter when its poll started (batch latency runs to its commit)
    ticket: int  # PushLane ticket; 0 = nothing to wait for


class _Clock:
    """Adds the time since the last mark to a stage (the batch split the benchmark reports)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.into[stage] = self.into.get(stage, 0.0) + now - self.last
        self.last = now


class RecsConsumer:
    """A member of the ``kafka.consumer_group`` group; run several for more partitions/throughput."""

    def __init__(
        self,
        settings: Settings,
        scorer_factory: ScorerFactory,
        *,
        poll_timeout_ms: int | None = None,
        max_poll_records: int | None = None,
        reload_check_s: float | None = None,
        heartbeat_file: Path | None = None,
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        cfg = settings.streaming
        self.settings = settings
        self.cfg = cfg
        self.schema = KeySchema(settings.key_prefix)
        self.writer = RecWriter.from_settings(settings)
        self.history = HistoryApplier(
            self.writer.client, self.schema, history_cap=self.writer.history_cap, dedupe_window=cfg.dedupe_window
        )
        self.decoder = HistoryDecoder()
        self._known_items: set[tuple[str, str]] = set()  # catalogue hashes found once (never deleted)
        self.scorer_factory = scorer_factory
        self.scorer: Scorer | None = None
        self.known_domains = set(settings.domains)
        self.poll_timeout_ms = poll_timeout_ms if poll_timeout_ms is not None else cfg.poll_timeout_ms
        self.max_poll_records = max_poll_records or cfg.max_poll_records
        self.reload_check_s = reload_check_s if reload_check_s is not None else cfg.reload_check_s
        self.heartbeat_file = heartbeat_file
        self.stats = ConsumerStats()
        self.metrics = ConsumerMetrics()
        self.feature_push: FeaturePusher | ChildPush | None = None
        self._push_lane: PushLane | None = None
        if cfg.push_features and cfg.push_process:
            self.feature_push = ChildPush(settings, self._count_child_push)
            self._push_lane = PushLane(submit=self.feature_push.submit, min_interval_s=cfg.push_interval_s)
        elif cfg.push_features:
            self.feature_push = FeaturePusher(settings, lambda outcome: self.metrics.feature_pushes.labels(outcome).inc())
            self._push_lane = PushLane(self.feature_push.push, cfg.push_interval_s)
        self._pending: deque[_Pending] = deque()  # processed, not yet committed, oldest first
        self.healthy = False  # becomes True once both dependencies answered
        self._stop = threading.Event()
        self._last_reload_check = 0.0
        self._last_probe = 0.0
        self._next_offsets: dict[Any, int] = {}  # TopicPartition -> next offset to commit
        kafka = settings.kafka
        self.consumer = KafkaConsumer(
            kafka.events_topic,
            kafka.items_topic,
            **group_member_kwargs(settings, self.max_poll_records),
            client_id="crossrec-consumer",
        )
        self.producer = KafkaProducer(
            **kafka.client_kwargs(),
            acks="all",
            client_id="crossrec-dlq",
            max_block_ms=int(cfg.dlq_timeout_s * 1000),  # a send never blocks longer than its confirm
            metadata_max_age_ms=cfg.metadata_max_age_ms,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def serve_metrics(self, port: int | None = None) -> None:
        """Expose the Prometheus metrics on ``port`` (default ``streaming.metrics_port``; 0 = off)."""
        port = self.cfg.metrics_port if port is None else port
        if not port:
            return
        try:
            self.metrics.serve(port)
        except OSError as exc:
            # Metrics are for watching the consumer, not a reason to stop it: say so loudly.
            log.error("metrics not served: port %d unavailable (%s); set streaming.metrics_port", port, exc)

    def close(self) -> None:
        if self._push_lane is not None:
            self._push_lane.close()  # a push in flight finishes; its batches stay uncommitted unless settled
        if isinstance(self.feature_push, ChildPush):
            self.feature_push.close()  # the child finishes its push and exits
        for close in (lambda: self.consumer.close(autocommit=False), self.producer.close, self.writer.close):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - closing during an outage must not mask the exit
                log.warning("close: %s", exc)

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
        self._retrying(lambda: self._maybe_reload_scorer(force=True))
        if self.feature_push is not None:
            push = self.feature_push
            self._retrying(lambda: push.open())  # Feast's import (seconds) before the first batch, not in it
        _freeze_heap()
        while not self._stop.is_set():
            poll_started = time.perf_counter()
            batch = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
            records = [rec for recs in batch.values() for rec in recs]
            now = time.monotonic()
            if not records and not self.consumer.assignment():
                last_message = now  # idle time counts only once the group gave us partitions
            if records:
                poll_s = time.perf_counter() - poll_started
                if self._retrying(lambda: self._handle(records, poll_s)):
                    last_message = now
                    # Commit what is pushed; wait only when too many events are uncommitted.
                    self._retrying(lambda: self._settle(wait_all=self._pending_count() > self.cfg.max_pending_events))
                    if on_batch is not None:
                        on_batch(self.stats)
            elif self._pending:
                self._retrying(lambda: self._settle(wait_all=True))  # idle: commit everything once pushed
            self._housekeeping()
            if max_seconds is not None and now - started >= max_seconds:
                break
            if max_events is not None and self.stats.consumed + self._pending_count() >= max_events:
                break
            if idle_exit_s is not None and now - last_message >= idle_exit_s:
                break
        if self._pending:
            self._retrying(lambda: self._settle(wait_all=True))  # stopped in an outage: left uncommitted, re-delivered
        return self.stats

    def _pending_count(self) -> int:
        return sum(len(p.records) for p in self._pending)

    # -- one batch ---------------------------------------------------------------------------
    def _handle(self, records: list[Any], poll_s: float) -> None:
        """Process, confirm dead letters, hand the users to the push lane; the batch is then
        pending until ``_settle`` commits it.

        Raises a dependency error to be retried: the whole call is redone, which the dedupe makes
        safe; nothing of the batch is pending before the call succeeds.
        """
        started = time.perf_counter()
        outcome = self.process(records)
        clock = _Clock(outcome.stage_s)
        self._confirm_dead_letters(outcome.dead, records)
        clock.mark("commit")
        ticket = 0
        if self._push_lane is not None and outcome.touched:
            ticket = self._push_lane.add(self._push_histories(outcome))
            try:
                self._push_lane.poll()  # starts the push now if the worker is free
            except DEPENDENCY_ERRORS:
                pass  # an earlier push failed; the lane queued it again and _settle reports it
        clock.mark("push")
        outcome.stage_s["poll"] = poll_s
        self._pending.append(_Pending(records, outcome, started - poll_s, ticket))

    def _count_child_push(self, outcome: str) -> None:
        """A push's outcome in the child-process mode (a child's answer arrives on the pool's
        thread, and then the child is up; a skip for want of a registry needs no child)."""
        self.metrics.feature_pushes.labels(outcome).inc()
        if outcome != SKIPPED_NO_REGISTRY:
            self.metrics.dependency_up.labels("push_child").set(1)

    def _push_histories(self, out: _Batch) -> Mapping[str, Sequence[HistoryEvent]]:
        if isinstance(self.feature_push, ChildPush):
            return dict.fromkeys(out.touched, ())  # the child reads the users' histories itself
        if out.histories is not None:
            return out.histories
        # No model scored the batch: decode what the apply read back (unreadable entries are left
        # out: the push has no one to report them to; the scoring path reports them).
        return {user: self.decoder.decode(out.raw_histories.get(user, []))[0] for user in out.touched}

    def _settle(self, wait_all: bool = False) -> None:
        """Commit the oldest pending batches whose pushes are done (all of them with ``wait_all``).

        One commit covers them (offsets are cumulative per partition). A push that failed on a
        dependency raises here (the retry loop backs off) and its batches stay uncommitted.
        """
        from kafka.errors import CommitFailedError

        if not self._pending:
            return
        lane = self._push_lane
        stage_s: dict[str, float] = {}
        clock = _Clock(stage_s)
        if lane is not None:
            if wait_all:
                lane.wait(max(p.ticket for p in self._pending))
            else:
                lane.poll()
        clock.mark("push")
        done = lane.done if lane is not None else 0
        ready: list[_Pending] = []
        while self._pending and self._pending[0].ticket <= done:
            ready.append(self._pending.popleft())
        if not ready:
            self._add_stage_time(stage_s)
            return
        try:
            self.consumer.commit(self._offsets([r for p in ready for r in p.records]), timeout_ms=int(self.cfg.commit_timeout_s * 1000))
            self.stats.commits += 1
        except CommitFailedError as exc:
            # The group rebalanced while we worked (e.g. a long outage): another member owns the
            # partition now and gets these batches again from the last commit; the dedupe makes the
            # second application a no-op, so dropping the commit is safe and retrying it is not.
            log.warning("commit refused after a rebalance; the batches will be re-delivered: %s", exc)
        except BaseException:
            self._pending.extendleft(reversed(ready))  # not committed: still pending
            raise
        clock.mark("commit")
        committed_at = time.perf_counter()
        for p in ready:
            self._merge(p.records, p.outcome, committed_at - p.polled_at)
        self._add_stage_time(stage_s)
        if lane is not None:
            self.stats.push_busy_s, self.stats.pushes = lane.busy_s, lane.pushes

    def _add_stage_time(self, stage_s: Mapping[str, float]) -> None:
        """Settle time is the loop's too, though no single batch owns it."""
        for stage, seconds in stage_s.items():
            self.stats.stage_s[stage] = self.stats.stage_s.get(stage, 0.0) + seconds

    def process(self, records: Sequence[Any]) -> _Batch:
        """Validate, apply, score and write one polled batch; commits and pushes nothing (the
        caller does: ``out.touched`` are the users to push, ``out.histories`` their histories).

        Dead letters are sent (not yet confirmed) as they are found; ``_handle`` confirms them
        before it commits.
        """
        out = _Batch()
        clock = _Clock(out.stage_s)
        items, events = self._validate(records, out)
        clock.mark("validate")
        self._apply_items(items, out)
        touched = self._apply_events(events, out)
        clock.mark("apply")
        lists = self._score(touched, out) if self.scorer is not None else {}
        clock.mark("score")
        self._write(lists, touched, out)
        clock.mark("write")
        out.touched = list(touched)
        return out

    def _validate(self, records: Sequence[Any], out: _Batch) -> tuple[list[tuple[Any, ItemMessage]], list[tuple[Any, EventMessage]]]:
        items_topic = self.settings.kafka.items_topic
        limit = self.cfg.max_message_bytes
        items: list[tuple[Any, ItemMessage]] = []
        events: list[tuple[Any, EventMessage]] = []
        for record in records:
            try:
                if record.topic == items_topic:
                    items.append((record, parse_item(record.value, self.known_domains, limit)))
                else:
                    events.append((record, parse_event(record.value, self.known_domains, limit)))
            except BadMessage as bad:
                self._dead_letter(out, record, bad.reason, str(bad))
        if self.cfg.require_known_items and events:
            events = self._known_items_only(events, {(it.domain, it.item_id) for _, it in items}, out)
        return items, events

    def _known_items_only(
        self, events: list[tuple[Any, EventMessage]], new_items: set[tuple[str, str]], out: _Batch
    ) -> list[tuple[Any, EventMessage]]:
        """Drop (dead-letter) events whose item has no catalogue hash.

        An item found once is remembered: nothing in the platform deletes an item hash (the
        nightly publish merges, the stream adds), so only items not yet found cost a look-up, all
        of them in one round trip; a batch of known items costs none. An item not found is asked
        again at its next event (it may have been published since). The memory is bounded by
        ``KNOWN_ITEMS`` (then it starts over).
        """
        known = self._known_items
        keys = sorted({(e.domain, e.item_id) for _, e in events} - new_items - known)
        if keys:
            pipe = self.writer.client.pipeline(transaction=False)
            for domain, item_id in keys:
                pipe.exists(self.schema.item(domain, item_id))
            found = [key for key, exists in zip(keys, pipe.execute()) if exists]
            if len(known) + len(found) > KNOWN_ITEMS:
                known.clear()
            known.update(found)
        kept = []
        for record, event in events:
            key = (event.domain, event.item_id)
            if key in known or key in new_items:
                kept.append((record, event))
            else:
                self._dead_letter(out, record, UNKNOWN_ITEM, f"{event.domain}/{event.item_id}")
        return kept

    def _apply_items(self, items: list[tuple[Any, ItemMessage]], out: _Batch) -> None:
        """Embed (one encoder call), add to the model, then store display data and vectors."""
        if not items or self.scorer is None:
            if items:
                # Without a model the item cannot be embedded in a known encoder space yet; it keeps
                # its display data, and the DLQ keeps the message to replay once a model exists.
                self.writer.write_items(ItemDisplay(i.domain, i.item_id, i.title, i.category, i.brand) for _, i in items)
                for record, _ in items:
                    self._dead_letter(out, record, "no_model_yet")
            return
        scorer = self.scorer
        vectors = self._embed_isolated([i.text for _, i in items])
        stored: list[tuple[str, str, np.ndarray]] = []
        displays: list[ItemDisplay] = []
        for (record, item), vector in zip(items, vectors):
            if isinstance(vector, Exception):
                self._dead_letter(out, record, EMBED_FAILED, repr(vector))
                continue
            try:
                if scorer.covers(item.domain):
                    scorer.add_item(item.domain, item.item_id, vector)
            except Exception as exc:  # noqa: BLE001 - this item's fault (size, model type): DLQ it
                self._dead_letter(out, record, ADD_ITEM_FAILED, repr(exc))
                continue
            stored.append((item.domain, item.item_id, vector))
            displays.append(ItemDisplay(item.domain, item.item_id, item.title, item.category, item.brand))
        self.writer.write_items(displays)  # display hashes stamped with updated_at: the nightly merge keeps them
        pipe = self.writer.client.pipeline(transaction=False)
        queue_item_vectors(pipe, self.schema, scorer.encoder_version, stored)
        pipe.execute()
        out.items_added += len(stored)

    def _embed_isolated(self, texts: list[str]) -> list[np.ndarray | Exception]:
        """One encoder call for all texts; if it fails, one call per text finds the bad ones."""
        assert self.scorer is not None
        try:
            return list(self.scorer.embed(texts))
        except Exception:  # noqa: BLE001 - some text broke the batch: find which, one by one
            results: list[np.ndarray | Exception] = []
            for text in texts:
                try:
                    results.append(self.scorer.embed([text])[0])
                except Exception as exc:  # noqa: BLE001 - that text's fault
                    results.append(exc)
            return results

    def _apply_events(self, events: list[tuple[Any, EventMessage]], out: _Batch) -> dict[str, list[Any]]:
        """Dedupe + push every event in one pipeline, which also reads back each user's history;
        returns user -> the batch's records of them."""
        pending = [
            PendingEvent(e.user_id, e.event_id, e.ts_ms, HistoryEvent(e.domain, e.item_id, e.event_type, e.ts_ms / 1000.0))
            for _, e in events
        ]
        touched: dict[str, list[Any]] = {}
        outcomes, out.raw_histories = self.history.apply_and_read(pending)
        for (record, event), outcome in zip(events, outcomes):
            if outcome == OUTSIDE_WINDOW:
                self._dead_letter(out, record, OUTSIDE_DEDUPE_WINDOW, f"{event.user_id}/{event.event_id}")
                continue
            if outcome == APPLIED:
                out.applied += 1
            elif outcome == DUPLICATE:
                out.duplicates += 1
            # Refresh even for a duplicate: a crash may have come after the history write but
            # before the list write, and re-scoring is idempotent.
            touched.setdefault(event.user_id, []).append(record)
        return touched

    def _score(self, touched: dict[str, list[Any]], out: _Batch) -> dict[str, list[RecItem]]:
        """Decode every touched history (read back by the apply) and score all users in one matmul."""
        assert self.scorer is not None
        histories: dict[str, list[HistoryEvent]] = {}
        for user in touched:
            entries, bad = self.decoder.decode(out.raw_histories[user])
            if bad:
                # The events that led here are reported; the unreadable entries are removed in
                # the write pipeline, so the user's next events score normally again.
                out.corrupt[user] = bad
                for record in touched[user]:
                    self._dead_letter(out, record, CORRUPT_HISTORY, repr(bad[0][:200]))
            histories[user] = entries
        out.histories = histories
        k = self.settings.top_k
        try:
            return self.scorer.recommend_many(histories, k)
        except Exception:  # noqa: BLE001 - one user broke the batch matmul: score one by one
            lists: dict[str, list[RecItem]] = {}
            for user, history in histories.items():
                try:
                    lists.update(self.scorer.recommend_many({user: history}, k))
                except Exception as exc:  # noqa: BLE001 - this user's events are reported
                    for record in touched[user]:
                        self._dead_letter(out, record, SCORING_FAILED, repr(exc))
            return lists

    def _write(self, lists: dict[str, list[RecItem]], touched: dict[str, list[Any]], out: _Batch) -> None:
        """Every list (and the removal of corrupt history entries) in one pipeline."""
        if not lists and not out.corrupt:
            return
        assert self.scorer is not None
        pipe = self.writer.client.pipeline(transaction=False)
        for user, bad in out.corrupt.items():
            for entry in bad:
                pipe.lrem(self.schema.history(user), 0, entry)  # type: ignore[arg-type]
        domain = self.settings.target_domain
        version = self.scorer.version
        users = list(lists)
        bodies = self.writer.serve_many(domain, [RecList(items=lists[u], model_version=version, source="stream", route=route_of(lists[u])) for u in users])
        for user, body in zip(users, bodies):
            pipe.set(self.schema.recs(domain, user), body)
        pipe.execute()
        out.lists_written += len(lists)
        written_ms = time.time() * 1000.0
        for user in lists:
            out.freshness.extend((written_ms, written_ms - record.timestamp) for record in touched[user])

    # -- dead letters, commits, stats -------------------------------------------------------
    def _dead_letter(self, out: _Batch, record: Any, reason: str, detail: str = "") -> None:
        out.dead.append((record, reason, detail))

    def _confirm_dead_letters(self, dead: list[tuple[Any, str, str]], records: Sequence[Any]) -> None:
        """Send the batch's dead letters and wait for the broker's acks (before any commit)."""
        topic = self.settings.kafka.dead_letter_topic
        futures = [
            self.producer.send(topic, key=record.key, value=dead_letter_payload(record, reason, detail))
            for record, reason, detail in dead
        ]
        for future in futures:
            future.get(timeout=self.cfg.dlq_timeout_s)

    def _offsets(self, records: Sequence[Any]) -> dict[Any, Any]:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets: dict[Any, Any] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in offsets or record.offset + 1 > offsets[tp].offset:
                offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        for tp, meta in offsets.items():
            self._next_offsets[tp] = meta.offset
        return offsets

    def _merge(self, records: Sequence[Any], out: _Batch, batch_s: float) -> None:
        s, m = self.stats, self.metrics
        s.consumed += len(records)
        s.batches += 1
        s.applied += out.applied
        s.duplicates += out.duplicates
        s.items_added += out.items_added
        s.lists_written += out.lists_written
        for topic, n in Counter(r.topic for r in records).items():
            m.consumed.labels(topic).inc(n)
        m.applied.inc(out.applied)
        m.duplicates.inc(out.duplicates)
        m.items_added.inc(out.items_added)
        m.lists_written.inc(out.lists_written)
        for _, reason, _ in out.dead:
            s.dead_lettered[reason] += 1
            m.dead_lettered.labels(reason).inc()
        for stage, seconds in out.stage_s.items():
            s.stage_s[stage] = s.stage_s.get(stage, 0.0) + seconds
            m.stage_seconds.labels(stage).observe(seconds)
        m.batch_seconds.observe(batch_s)
        s.freshness.extend(out.freshness)
        for _, ms in out.freshness:
            m.freshness_seconds.observe(max(ms, 0.0) / 1000.0)
        self._set_healthy(True)

    # -- dependency errors -------------------------------------------------------------------
    def _retrying(self, work: Callable[[], None]) -> bool:
        """Run ``work`` until it succeeds or the consumer is stopped; False if stopped first.

        Only dependency errors are retried (tenacity, exponential backoff up to
        ``streaming.retry_max_s``); the whole batch is redone, which the dedupe makes safe.
        """
        retrying = Retrying(
            retry=retry_if_exception_type(DEPENDENCY_ERRORS),
            wait=wait_exponential(multiplier=self.cfg.retry_initial_s, max=self.cfg.retry_max_s),
            stop=lambda _: self._stop.is_set(),
            sleep=self._sleep,
            before_sleep=self._on_dependency_error,
            reraise=True,
        )
        try:
            retrying(work)
            return True
        except DEPENDENCY_ERRORS:
            if self._stop.is_set():
                return False  # stopped during an outage: exit without committing
            raise

    def _sleep(self, seconds: float) -> None:
        """Backoff that a stop request cuts short (SIGTERM during an outage exits at once)."""
        self._stop.wait(seconds)

    def _on_dependency_error(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        name = dependency_name(exc) if exc is not None else "unknown"
        self.stats.dependency_errors += 1
        self.metrics.dependency_errors.labels(name).inc()
        self.metrics.dependency_up.labels(name).set(0)
        self._set_healthy(False)
        log.warning(
            "%s unavailable (%s: %s); batch not committed, retry %d in %.1fs",
            name, type(exc).__name__, exc, state.attempt_number,
            state.next_action.sleep if state.next_action else 0.0,
        )

    # -- housekeeping ------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        """Probe the dependencies and refresh lag, maybe reload the model, then beat if healthy."""
        now = time.monotonic()
        if now - self._last_probe >= self.cfg.probe_interval_s:
            self._last_probe = now
            self._probe()
        try:
            self._maybe_reload_scorer()
        except DEPENDENCY_ERRORS as exc:
            log.warning("model pointer unreadable: %s", exc)
            self._set_healthy(False)
        if self.healthy:
            self._beat()

    def _probe(self) -> None:
        """Redis PING and a broker round trip (end offsets, which also give the lag)."""
        ok = True
        try:
            self.writer.client.ping()
            self.metrics.dependency_up.labels("redis").set(1)
        except DEPENDENCY_ERRORS as exc:
            log.warning("redis probe failed: %s", exc)
            self.metrics.dependency_up.labels("redis").set(0)
            ok = False
        try:
            assigned = list(self.consumer.assignment())
            if assigned:
                ends = self.consumer.end_offsets(assigned, timeout_ms=2000)  # the broker round trip
                self.metrics.lag.clear()  # partitions a rebalance took away must not keep a stale value
                for tp, listed in ends.items():
                    # The last fetch's high watermark is exact; Tansu's ListOffsets can fall short.
                    end = self.consumer.highwater(tp) or listed
                    position = self._next_offsets.get(tp)
                    if position is None:
                        position = self.consumer.position(tp, timeout_ms=1000)
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(end - (position or 0), 0))
            else:
                self.consumer.topics()  # a metadata round trip: is the broker there at all?
            self.metrics.dependency_up.labels("kafka").set(1)
        except DEPENDENCY_ERRORS as exc:
            log.warning("broker probe failed: %s", exc)
            self.metrics.dependency_up.labels("kafka").set(0)
            ok = False
        self._set_healthy(ok)

    def _set_healthy(self, healthy: bool) -> None:
        self.healthy = healthy

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
            warm_up = getattr(scorer, "warm_up", None)
            if warm_up is not None:  # its one-off costs here, not in the first batches it scores
                started = time.perf_counter()
                warm_up(self.max_poll_records, self.settings.top_k)
                log.info("model %s warmed up in %.2fs", scorer.version, time.perf_counter() - started)
            log.info("consumer now scores with model %s", scorer.version)
            self.scorer = scorer
            self.stats.model_reloads += 1
            if gc.get_freeze_count():
                _freeze_heap()  # the old model's objects are collected, the new one's frozen

    def _beat(self) -> None:
        """Touch the health file; a stale file (no healthy loop for a while) means unhealthy."""
        if self.heartbeat_file is not None:
            self.heartbeat_file.touch()


def _freeze_heap() -> None:
    """Collect once, then move every surviving object out of the cyclic GC's reach (``gc.freeze``).

    Why: the process holds a few hundred thousand long-lived objects (Feast, pandas, torch, the
    model's item index), and each batch allocates enough to trigger a full collection every few
    batches, which walked all of them: measured 130 ms per batch on average, in spikes of
    several hundred ms (the freshness p99). Frozen objects are still freed by reference counting;
    only cycles among them wait for the next ``_freeze_heap`` (at a model reload), which first
    unfreezes and collects everything, so an old model's cycles are not kept.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
