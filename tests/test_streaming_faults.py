"""Faults with real processes: a `crossrec stream` process killed with SIGKILL, its Redis stopped,
its broker restarted. Each test drives real servers and a real consumer process and then checks
every user's history entry by entry: each produced event exactly once, none lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from streaming_support import (
    committed_total,
    histories_ts,
    produce_user_events,
    spawn_stream,
    stream_env,
    train_small_model,
    wait_for,
)

from crossrec.batch_publish import publish
from crossrec.redis_conn import redis_client as make_redis
from crossrec.services import broker_service, ensure_topics, redis_service
from crossrec.settings import Settings

pytestmark = pytest.mark.integration

ITEMS = [("office", f"office-{i:03d}") for i in range(20)] + [("art", f"art-{i:03d}") for i in range(20)]
TS0 = 1_800_000_000_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(tmp_path_factory.mktemp("faults") / "work")


def _isolated(base: Settings, work: Path, **update: object) -> Settings:
    tag = uuid.uuid4().hex[:8]
    kafka = base.kafka.model_copy(update={
        "events_topic": f"ev-{tag}", "items_topic": f"it-{tag}", "dead_letter_topic": f"dlq-{tag}",
        "consumer_group": f"g-{tag}", **update.pop("kafka", {}),  # type: ignore[dict-item]
    })
    return base.model_copy(update={"work_dir": work, "kafka": kafka, "top_k": 5, **update})


def _stop(proc) -> int:
    """SIGTERM (a clean stop) and the exit code; the test fails if the process hangs."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=30)


def _age(path: Path) -> float:
    return time.time() - path.stat().st_mtime


def test_kill_9_mid_stream_then_restart_applies_every_event_exactly_once(
    services_settings: Settings, trained: Path, redis_client, tmp_path: Path
) -> None:
    settings = _isolated(services_settings, trained)
    ensure_topics(settings)
    publish(settings, trained / "clean")  # catalogue hashes + the model pointer
    users = [f"K{u:04d}" for u in range(1000)]
    sent = produce_user_events(settings, users, 6, ITEMS, TS0)
    total = sum(len(v) for v in sent.values())

    env = stream_env(settings, max_poll_records=100)
    first = spawn_stream(env, tmp_path / "first.log")
    try:
        wait_for(lambda: committed_total(settings)[0] >= 600, 90, "the first process to commit some batches")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    committed_at_kill, end = committed_total(settings)
    assert end == total and committed_at_kill < total, "the kill must land mid-stream"

    second = spawn_stream(env, tmp_path / "second.log", "--idle-exit-s", "3", "--max-seconds", "120")
    assert second.wait(timeout=150) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert committed_total(settings) == (total, total)
    assert histories_ts(redis_client, settings, users) == sent  # each event once: none lost, none twice


def _start_consumer(settings: Settings, trained: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """Topics, a published model and a `crossrec stream` process that probes its dependencies
    often (so an outage shows in the heartbeat within a second); returns it and its heartbeat."""
    ensure_topics(settings)
    publish(settings, trained / "clean")
    heartbeat = tmp_path / "alive"
    env = stream_env(settings, heartbeat_file=heartbeat, probe_interval_s=0.3, retry_max_s=0.5)
    return spawn_stream(env, tmp_path / "consumer.log"), heartbeat


def test_redis_outage_mid_stream_no_crash_no_commit_past_unwritten_work_nothing_lost(
    services_settings: Settings, trained: Path, tmp_path: Path
) -> None:
    own_redis = {"url": f"redis://127.0.0.1:{free_port()}/0"}
    settings = _isolated(
        services_settings, trained,
        redis=services_settings.redis.model_copy(update=own_redis),
        services=services_settings.services.model_copy(update={"run_dir": tmp_path / "run"}),
    )
    redis_svc = redis_service(settings)
    redis_svc.start(30)
    client = make_redis(settings)
    try:
        proc, heartbeat = _start_consumer(settings, trained, tmp_path)
        before = produce_user_events(settings, [f"R{u:03d}" for u in range(200)], 3, ITEMS, TS0)
        wait_for(lambda: committed_total(settings)[0] == 600, 90, "the first events to be committed")
        wait_for(lambda: heartbeat.exists() and _age(heartbeat) < 0.5, 10, "a fresh heartbeat")

        redis_svc.stop()
        during = produce_user_events(settings, [f"S{u:03d}" for u in range(200)], 3, ITEMS, TS0 + 10_000)
        time.sleep(1.0)  # a batch in flight when Redis went away has finished (or failed) by now
        committed_in_outage, end_in_outage = committed_total(settings)
        time.sleep(3.0)
        assert committed_total(settings)[0] == committed_in_outage == 600  # nothing committed unwritten
        assert end_in_outage == 1200
        assert _age(heartbeat) > 2.5, "the health file must go stale while Redis is down"
        assert proc.poll() is None, "the consumer must not exit during an outage"

        redis_svc.start(30)
        wait_for(lambda: committed_total(settings)[0] == 1200, 60, "the outage's events to be committed")
        wait_for(lambda: _age(heartbeat) < 0.5, 10, "the heartbeat to turn fresh again")
        assert _stop(proc) == 0, (tmp_path / "consumer.log").read_text()[-3000:]
        expected = {**before, **during}
        assert histories_ts(client, settings, list(expected)) == expected
        assert "redis unavailable" in (tmp_path / "consumer.log").read_text()
    finally:
        client.close()
        redis_svc.stop()


def test_broker_restart_mid_stream_the_consumer_reconnects_by_itself(
    services_settings: Settings, trained: Path, redis_client, tmp_path: Path
) -> None:
    """The local broker (Tansu) keeps topics and offsets in memory: a restart empties it, so the
    test re-creates the topics (as `crossrec services up` does) and checks that the *same*
    consumer process rejoins and applies what is produced after the restart, with no restart of
    its own. Events produced before the restart had been committed; none is applied twice."""
    settings = _isolated(
        services_settings, trained,
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        services=services_settings.services.model_copy(update={"run_dir": tmp_path / "run"}),
    )
    broker = broker_service(settings)
    broker.start(30)
    try:
        proc, heartbeat = _start_consumer(settings, trained, tmp_path)
        before = produce_user_events(settings, [f"B{u:03d}" for u in range(100)], 3, ITEMS, TS0)
        wait_for(lambda: committed_total(settings)[0] == 300, 90, "the first events to be committed")

        broker.stop()
        time.sleep(3.0)
        assert _age(heartbeat) > 2.0, "the health file must go stale while the broker is down"
        assert proc.poll() is None, "the consumer must not exit during an outage"
        broker.start(30)
        ensure_topics(settings)
        after = produce_user_events(settings, [f"A{u:03d}" for u in range(100)], 3, ITEMS, TS0 + 10_000)
        wait_for(lambda: histories_ts(redis_client, settings, list(after)) == after, 90, "the post-restart events")
        wait_for(lambda: _age(heartbeat) < 0.5, 15, "the heartbeat to turn fresh again")
        assert proc.poll() is None
        assert _stop(proc) == 0, (tmp_path / "consumer.log").read_text()[-3000:]
        assert histories_ts(redis_client, settings, list(before)) == before
    finally:
        broker.stop()


def test_a_broker_down_at_start_is_waited_for_not_a_crash(
    services_settings: Settings, trained: Path, redis_client, tmp_path: Path
) -> None:
    settings = _isolated(
        services_settings, trained,
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        services=services_settings.services.model_copy(update={"run_dir": tmp_path / "run"}),
    )
    publish(settings, trained / "clean")
    heartbeat = tmp_path / "alive"
    proc = spawn_stream(stream_env(settings, heartbeat_file=heartbeat, retry_max_s=0.5), tmp_path / "consumer.log")
    broker = broker_service(settings)
    try:
        time.sleep(6.0)
        assert proc.poll() is None, (tmp_path / "consumer.log").read_text()[-3000:]
        assert not heartbeat.exists()  # never healthy without its broker
        broker.start(30)
        ensure_topics(settings)
        sent = produce_user_events(settings, [f"W{u:03d}" for u in range(50)], 2, ITEMS, TS0)
        wait_for(lambda: histories_ts(redis_client, settings, list(sent)) == sent, 90, "the events after the broker came up")
        assert _stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
