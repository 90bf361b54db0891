"""The consumer pushes each touched user's fresh features to Feast (user_features_push) in the
batch that writes their lists; the client and the API read them from the online store.

Real broker, real Redis (Feast's online store too), real Feast registry; the scorer is the small
deterministic implementation of the consumer's interface (the push does not depend on the model).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from streaming_support import CatalogueScorer, catalogue_settings, make_event, produce, read_recs

from crossrec.features.push import FAILED, PUSHED, SKIPPED_NO_REGISTRY, FeaturePusher, user_feature_rows
from crossrec.keys import HistoryEvent
from crossrec.settings import Settings
from crossrec.streaming.consumer import RecsConsumer
from crossrec.streaming.faults import DEPENDENCY_ERRORS

pytestmark = pytest.mark.integration

T0 = 1_600_000_000_000


@pytest.fixture()
def settings(services_settings: Settings, redis_client, tmp_path: Path) -> Settings:
    """Isolated topics and catalogue, and a private work_dir (so a private Feast registry)."""
    return catalogue_settings(services_settings.model_copy(update={"work_dir": tmp_path / "work"}), redis_client)


def _run(settings: Settings, n_events: int) -> RecsConsumer:
    consumer = RecsConsumer(settings, lambda: CatalogueScorer("m1", ["o1", "o2", "o3", "o4"]), poll_timeout_ms=200)
    try:
        consumer.run(max_events=n_events, max_seconds=60)
    finally:
        consumer.close()
    return consumer


def _pushes(consumer: RecsConsumer, outcome: str) -> float:
    return consumer.metrics.registry.get_sample_value("crossrec_stream_feature_pushes_total", {"outcome": outcome}) or 0.0


def test_user_feature_rows_have_the_nightly_shape() -> None:
    history = [HistoryEvent("art", f"a{k}", "purchase", (T0 + 1000 * k) / 1000) for k in range(25)]  # oldest first
    history.append(HistoryEvent("office", "o1", "purchase", (T0 + 500) / 1000))  # applied last, older time
    rows = user_feature_rows({"u1": history, "empty": []}).set_index("user_id")
    assert list(rows.index) == ["u1"]
    u1 = rows.loc["u1"]
    assert u1["recent_items"] == [f"a{k}" for k in range(24, 4, -1)]  # 20, latest event time first
    assert u1["recent_domains"] == ["art"] * 20
    assert u1["n_events"] == 26 and u1["last_event_ts_ms"] == T0 + 24_000
    assert u1["user_vector"] == []


def test_stream_pushes_fresh_features_that_client_and_api_read(settings: Settings, redis_client) -> None:
    from crossrec.client import RecClient
    from crossrec.features.store import apply
    from serving.app import create_app

    apply(settings)
    produce(settings, settings.kafka.events_topic, [
        make_event("u1", "art", "a1", T0),
        make_event("u1", "office", "o4", T0 + 1_000),
        make_event("u1", "art", "a2", T0 + 2_000),
        make_event("u2", "office", "o1", T0 + 5_000),
    ])
    consumer = _run(settings, 4)
    assert consumer.stats.applied == 4 and not consumer.stats.dead_lettered
    assert read_recs(redis_client, settings, "u1") is not None  # the list was written in the same batch
    assert consumer.feature_push is not None and consumer.feature_push.counts[PUSHED] >= 1
    assert _pushes(consumer, PUSHED) >= 1 and consumer.stats.stage_s["push"] > 0

    with RecClient(settings) as client:
        u1 = client.user_features("u1")
        assert u1["found"] and u1["recent_items"] == ["a2", "o4", "a1"]
        assert u1["recent_domains"] == ["art", "office", "art"]
        assert u1["n_events"] == 3 and u1["last_event_ts_ms"] == T0 + 2_000
        assert client.user_features("u2")["recent_items"] == ["o1"]
    with TestClient(create_app(settings)) as http:
        body = http.get("/users/u1/features").json()
        assert body["found"] and body["recent_items"] == ["a2", "o4", "a1"]
        assert body["n_events"] == 3 and body["last_event_ts_ms"] == T0 + 2_000

    # the next batch overwrites with the newer history
    produce(settings, settings.kafka.events_topic, [make_event("u1", "office", "o2", T0 + 9_000)])
    _run(settings, 1)
    with RecClient(settings) as client:
        u1 = client.user_features("u1")
        assert u1["recent_items"] == ["o2", "a2", "o4", "a1"] and u1["n_events"] == 4
        assert u1["last_event_ts_ms"] == T0 + 9_000


def test_without_an_applied_feast_repo_the_stream_goes_on_and_counts_the_skip(settings: Settings, redis_client) -> None:
    produce(settings, settings.kafka.events_topic, [make_event("u1", "office", "o4", T0), make_event("u2", "art", "a1", T0)])
    consumer = _run(settings, 2)
    assert consumer.stats.applied == 2 and consumer.stats.commits >= 1
    assert read_recs(redis_client, settings, "u1") is not None and read_recs(redis_client, settings, "u2") is not None
    assert consumer.feature_push is not None
    assert consumer.feature_push.counts[SKIPPED_NO_REGISTRY] >= 1 and not consumer.feature_push.counts[PUSHED]
    assert _pushes(consumer, SKIPPED_NO_REGISTRY) >= 1
    assert not (Path(settings.work_dir) / "feast" / "registry.db").exists()


def test_push_off_by_setting(settings: Settings) -> None:
    off = settings.model_copy(update={"streaming": settings.streaming.model_copy(update={"push_features": False})})
    consumer = RecsConsumer(off, lambda: None)
    try:
        assert consumer.feature_push is None
    finally:
        consumer.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_down_during_the_push_is_a_dependency_error(settings: Settings) -> None:
    """The consumer retries a batch on DEPENDENCY_ERRORS and commits nothing past it."""
    from crossrec.features.store import apply

    apply(settings)  # the registry exists; the online store below does not answer
    down = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{_closed_port()}/0"})})
    pusher = FeaturePusher(down)
    history = {"u1": [HistoryEvent("office", "o1", "purchase", T0 / 1000)]}
    with pytest.raises(DEPENDENCY_ERRORS):
        pusher.push(history)
    assert not pusher.counts[FAILED] and not pusher.counts[PUSHED]


# -- the direct online write (crossrec.features.online_write) ----------------------------------------
def _varied_histories() -> dict[str, list[HistoryEvent]]:
    """Long (over N_RECENT), single-event, mixed-domain, tied-time and empty histories."""
    return {
        "long": [HistoryEvent("art" if k % 3 else "office", f"i{k}", "purchase", (T0 + 1000 * k) / 1000) for k in range(30)],
        "one": [HistoryEvent("office", "o1", "review", T0 / 1000)],
        "ties": [HistoryEvent("art", "a1", "purchase", T0 / 1000), HistoryEvent("office", "o2", "purchase", T0 / 1000)],
        "empty": [],
    }


def _feast_hashes(redis_client, skip: set[bytes]) -> dict[bytes, dict[bytes, bytes]]:
    return {key: redis_client.hgetall(key) for key in redis_client.scan_iter() if key not in skip and redis_client.type(key) == b"hash"}


def test_direct_write_leaves_the_same_redis_hashes_as_store_push(settings: Settings, redis_client) -> None:
    import pandas as pd

    from crossrec.features.push import user_feature_records
    from crossrec.features.store import apply

    apply(settings)
    before = set(redis_client.scan_iter())
    records = user_feature_records(_varied_histories(), now=pd.Timestamp("2026-11-30 03:00:00.123456", tz="UTC"))
    pusher = FeaturePusher(settings)
    assert pusher.open() and pusher._direct is not None

    pusher._push_through_store(records)
    through_store = _feast_hashes(redis_client, before)
    for key in through_store:
        redis_client.delete(key)
    pusher._direct.write(records, records[0]["event_timestamp"].to_pydatetime())
    direct = _feast_hashes(redis_client, before)

    assert len(through_store) == 3  # one per user with a history
    assert direct == through_store  # keys, feature fields, values and the timestamp field, byte for byte


def test_push_falls_back_to_store_push_where_the_direct_writer_cannot_build_a_view(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from crossrec.client import RecClient
    from crossrec.features import online_write
    from crossrec.features.store import apply

    apply(settings)
    monkeypatch.setattr(online_write, "value_builders", lambda: {})  # no type can be built directly
    pusher = FeaturePusher(settings)
    with caplog.at_level("WARNING"):
        assert pusher.push(_varied_histories()) == PUSHED
        assert pusher.push({"one": [HistoryEvent("office", "o3", "purchase", (T0 + 5_000) / 1000)]}) == PUSHED
    assert sum("feature push through store.push" in r.getMessage() for r in caplog.records) == 1  # warned once
    assert pusher._direct is not None  # kept: a new registry may be writable
    with RecClient(settings) as client:
        assert client.user_features("long")["recent_items"] == [f"i{k}" for k in range(29, 9, -1)]
        assert client.user_features("one")["recent_items"] == ["o3"]


def test_a_failing_direct_write_switches_to_store_push_for_good(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from crossrec.client import RecClient
    from crossrec.features.online_write import DirectOnlineWriter
    from crossrec.features.store import apply

    apply(settings)

    def broken(self: DirectOnlineWriter, rows: object, event_time: object) -> None:
        raise AttributeError("'FeatureStore' object has no attribute 'provider'")  # as a Feast upgrade might

    monkeypatch.setattr(DirectOnlineWriter, "write", broken)
    pusher = FeaturePusher(settings)
    assert pusher.push(_varied_histories()) == PUSHED
    assert pusher._direct is None and not pusher.counts[FAILED]
    with RecClient(settings) as client:
        assert client.user_features("ties")["recent_items"] == ["o2", "a1"]


def test_direct_writer_resolves_the_views_again_only_when_the_registry_changes(settings: Settings) -> None:
    import os

    from crossrec.features.store import apply, feast_dir

    apply(settings)
    pusher = FeaturePusher(settings)
    assert pusher.open() and pusher._direct is not None
    first = pusher._direct.views()
    assert [d.view.name for d in first] == ["user_features"]
    assert [name for name, _ in first[0].features] == ["recent_items", "recent_domains", "n_events", "last_event_ts_ms", "user_vector"]
    assert pusher._direct.views() is first
    registry = feast_dir(settings) / "registry.db"
    stat = registry.stat()
    os.utime(registry, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert pusher._direct.views() is not first


def test_a_cannot_write_verdict_is_a_fresh_exception_each_push(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The remembered verdict must not keep one exception whose traceback (holding each push's
    rows) grows with every re-raise."""
    import traceback

    from crossrec.features import online_write
    from crossrec.features.store import apply

    apply(settings)
    monkeypatch.setattr(online_write, "value_builders", lambda: {})
    pusher = FeaturePusher(settings)
    assert pusher.open() and pusher._direct is not None
    raised = []
    for _ in range(3):
        with pytest.raises(online_write.NotDirectlyWritable) as info:
            pusher._direct.views()
        raised.append(info.value)
    assert len({id(exc) for exc in raised}) == 3
    assert len({len(traceback.extract_tb(exc.__traceback__)) for exc in raised}) == 1


def test_a_redis_refusal_in_the_direct_write_is_counted_failed_and_keeps_the_path(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.exceptions import ResponseError

    from crossrec.features.online_write import DirectOnlineWriter
    from crossrec.features.store import apply

    apply(settings)

    def refused(self: DirectOnlineWriter, rows: object, event_time: object) -> None:
        raise ResponseError("OOM command not allowed when used memory > 'maxmemory'")

    monkeypatch.setattr(DirectOnlineWriter, "write", refused)
    pusher = FeaturePusher(settings)
    assert pusher.push(_varied_histories()) == FAILED
    assert pusher._direct is not None  # Redis refused, the direct path did not break
