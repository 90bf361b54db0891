"""The Feast push in a child process (``streaming.push_process``): a batch is
committed only once the child acknowledged a push carrying its users; a killed child is replaced
and its push redone before anything it carried is committed; the child dies with the consumer.

Real broker, real Redis (Feast's online store too), a real Feast registry and the real child
process; the test stops (SIGSTOP) or kills (SIGKILL) the child as an outage or the kernel would.
The scorer is the small deterministic implementation of the consumer's interface.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from streaming_support import (
    CatalogueScorer,
    catalogue_settings,
    committed_total,
    make_event,
    produce,
    read_recs,
    spawn_stream,
    stream_env,
    wait_for,
)

from crossrec.features.push import PUSHED
from crossrec.settings import Settings
from crossrec.streaming.consumer import RecsConsumer
from crossrec.streaming.pushproc import ChildPush

pytestmark = pytest.mark.integration

T0 = 1_600_000_000_000
USERS = [f"u{n}" for n in range(5)]


@pytest.fixture()
def settings(services_settings: Settings, redis_client, tmp_path: Path) -> Settings:
    """Isolated topics and catalogue, a private work dir with an applied Feast registry, the
    push in a child process."""
    from crossrec.features.store import apply

    settings = catalogue_settings(services_settings.model_copy(update={"work_dir": tmp_path / "work"}), redis_client)
    settings = settings.model_copy(update={"streaming": settings.streaming.model_copy(update={"push_process": True})})
    apply(settings)
    return settings


def _start(settings: Settings) -> tuple[RecsConsumer, threading.Thread]:
    consumer = RecsConsumer(settings, lambda: CatalogueScorer("m1", ["o1", "o2", "o3", "o4"]), poll_timeout_ms=100)
    assert isinstance(consumer.feature_push, ChildPush)
    runner = threading.Thread(target=consumer.run, kwargs={"max_seconds": 50, "max_events": len(USERS)})
    runner.start()
    child = consumer.feature_push
    wait_for(lambda: child.pid is not None, 40, "the push child to start")
    return consumer, runner


def _stop(consumer: RecsConsumer, runner: threading.Thread, pid: int | None) -> None:
    if pid is not None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    consumer.stop()
    runner.join(60)
    consumer.close()


def _features(settings: Settings) -> dict[str, list[str]]:
    from crossrec.client import RecClient

    with RecClient(settings) as client:
        return {u: client.user_features(u)["recent_items"] for u in USERS}


def test_a_batch_is_committed_only_after_the_child_acknowledged_its_push(settings: Settings, redis_client) -> None:
    consumer, runner = _start(settings)
    child = consumer.feature_push
    assert isinstance(child, ChildPush)
    pid = child.pid
    assert pid is not None and pid != os.getpid()
    try:
        os.kill(pid, signal.SIGSTOP)  # the child cannot answer: no push returns
        produce(settings, settings.kafka.events_topic, [make_event(u, "office", "o1", T0 + n) for n, u in enumerate(USERS)])
        wait_for(lambda: all(read_recs(redis_client, settings, u) for u in USERS), 30, "lists written while the child is stopped")
        time.sleep(1.0)  # several push intervals: the lane has submitted, nothing came back
        assert committed_total(settings)[0] == 0
        os.kill(pid, signal.SIGCONT)
        runner.join(40)
        assert not runner.is_alive()
        assert committed_total(settings)[0] == len(USERS)
        assert child.counts[PUSHED] >= 1 and child.restarts == 0
        assert _features(settings) == {u: ["o1"] for u in USERS}  # pushed by the child, read back from Feast
    finally:
        _stop(consumer, runner, pid)


def test_a_killed_child_is_replaced_and_its_push_redone_before_the_commit(settings: Settings, redis_client) -> None:
    consumer, runner = _start(settings)
    child = consumer.feature_push
    assert isinstance(child, ChildPush)
    first = child.pid
    assert first is not None
    try:
        os.kill(first, signal.SIGSTOP)
        produce(settings, settings.kafka.events_topic, [make_event(u, "office", "o2", T0 + n) for n, u in enumerate(USERS)])
        wait_for(lambda: all(read_recs(redis_client, settings, u) for u in USERS), 30, "lists written while the child is stopped")
        time.sleep(1.0)  # the push carrying the batch is in the stopped child
        assert committed_total(settings)[0] == 0
        os.kill(first, signal.SIGKILL)  # its push never returns
        runner.join(45)
        assert not runner.is_alive()
        assert child.restarts >= 1 and child.pid not in (None, first)
        assert consumer.stats.dependency_errors >= 1  # the lost child was retried with backoff
        assert committed_total(settings)[0] == len(USERS)
        assert _features(settings) == {u: ["o2"] for u in USERS}  # the new child redid the lost push
    finally:
        _stop(consumer, runner, None)


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_child_exits_when_the_consumer_is_killed(settings: Settings, tmp_path: Path) -> None:
    """kill -9 of a real `crossrec stream` leaves no orphan push child (read from Linux's /proc)."""
    heartbeat = tmp_path / "alive"
    consumer = spawn_stream(stream_env(settings, heartbeat_file=heartbeat, push_process="true"), tmp_path / "consumer.log")
    try:
        wait_for(heartbeat.exists, 60, "the consumer's loop (it starts the push child first)")
        children = _children(consumer.pid)
        assert children, "the consumer has no child process"
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(timeout=10)
        wait_for(lambda: not any(_running(c) for c in children), 15, "the push child to exit after its consumer")
    finally:
        if consumer.poll() is None:
            consumer.kill()
