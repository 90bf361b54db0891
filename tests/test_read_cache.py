"""The API's tracked read cache (crossrec/read_cache.py) against a real Redis.

Each test writes through another client (or the writers publish and the consumer use) and checks
that the very next read returns what Redis holds; the cache's counters show it really served from
memory where it should, so a cache that never caches cannot pass. Reconnects (``CLIENT KILL``, a
restarted Redis), ``FLUSHDB``, deletion, the in-flight race, the memory bound, a refused
``CLIENT TRACKING``, the switch off and cluster mode each have a test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from conftest import make_settings
from fastapi.testclient import TestClient
from test_client import MODEL, Fixture, populate

from crossrec.keys import KeySchema
from crossrec.publish import RecWriter, make_rec_list
from crossrec.read_cache import ReadCache, read_cache_for
from crossrec.services import redis_service
from crossrec.settings import Settings
from serving.app import create_app

KEY = "rc:test:key"


@pytest.fixture()
def world(redis_client, services_settings: Settings) -> Fixture:
    return populate(RecWriter(redis_client, KeySchema(services_settings.key_prefix)))


@pytest.fixture()
def cache(redis_client, services_settings: Settings):
    rc = ReadCache(services_settings, max_entries=100, max_bytes=1 << 20, socket_timeout=2.0)
    yield rc
    rc.close()


def _warm(cache: ReadCache, key: str) -> bytes | None:
    """Read ``key`` until it is served from memory (the first read after a connect is not stored)."""
    for _ in range(3):
        hits = cache.hits
        value = cache.get(key)
        if cache.hits > hits:
            return value
    raise AssertionError(f"{key} never came from the cache (hits {cache.hits}, misses {cache.misses})")


def _synced(writer: redis.Redis) -> None:
    """The writer's next round trip after a write: by its reply, Redis has written the write's
    invalidation to the cache's socket (same event-loop pass as the write's reply, which comes
    first; see crossrec/read_cache.py, rule 1). Without it the next read may fall in that window."""
    assert writer.ping()


def _client_id(cache: ReadCache) -> int:
    conn = cache._conn
    conn.send_command("CLIENT", "ID")
    return int(conn.read_response())


def _ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


# -- the API: writes by other clients are seen by the very next read ---------------------------------
def test_api_serves_from_the_cache_and_sees_every_kind_of_write(world: Fixture, redis_client, services_settings: Settings) -> None:
    writer = RecWriter(redis_client, KeySchema(services_settings.key_prefix))
    url = f"/recommendations/office/{world.user}?k=3"
    with TestClient(create_app(services_settings)) as http:
        cache = http.app.state.backend.cache  # type: ignore[attr-defined]
        assert cache is not None
        for _ in range(3):
            assert _ids(http.get(url).json()) == world.rec_ids[:3]
        assert cache.hits >= 1  # served from memory, not only read through

        key = KeySchema(services_settings.key_prefix).recs("office", world.user)
        redis_client.set(key, writer.serve_json("office", make_rec_list(["o9", "o8", "o7"], [3, 2, 1], MODEL)))  # a plain SET
        _synced(redis_client)
        assert _ids(http.get(url).json()) == ["o9", "o8", "o7"]
        http.get(url)
        writer.write_many_recs("office", [(world.user, make_rec_list(["o1", "o2"], [2, 1], MODEL, source="stream"))])  # pipelined SETs, as the consumer writes
        _synced(redis_client)
        assert _ids(http.get(url).json()) == ["o1", "o2"]
        http.get(url)
        kept = writer.merge_many_recs("office", [(world.user, make_rec_list(["o5"], [1.0], MODEL))], cut_s=2e9)  # publish's script
        _synced(redis_client)
        assert kept == [] and _ids(http.get(url).json()) == ["o5"]
        http.get(url)
        hits = cache.hits
        assert writer.delete_recs("office", world.user)  # deletion: the popular fallback, at once
        _synced(redis_client)
        body = http.get(url).json()
        assert body["fallback"] is True and _ids(body) == world.popular_ids[:3]
        assert _ids(http.get(url).json()) == world.popular_ids[:3] and cache.hits > hits


def test_flushdb_invalidates_everything(world: Fixture, redis_client, services_settings: Settings) -> None:
    url = f"/recommendations/office/{world.user}?k=2"
    with TestClient(create_app(services_settings)) as http:
        cache = http.app.state.backend.cache  # type: ignore[attr-defined]
        for _ in range(3):
            assert http.get(url).json()["fallback"] is False
        assert cache.hits >= 1 and len(cache) > 0
        redis_client.flushdb()
        _synced(redis_client)
        body = http.get(url).json()
        assert body["fallback"] is True and body["items"] == []


# -- the cache itself ----------------------------------------------------------------------------------
def test_writes_deletes_and_missing_keys(cache: ReadCache, redis_client) -> None:
    assert cache.get(KEY) is None
    assert _warm(cache, KEY) is None  # a missing key is cached (and tracked) too
    redis_client.set(KEY, b"v1")
    _synced(redis_client)
    assert cache.get(KEY) == b"v1"
    assert _warm(cache, KEY) == b"v1"
    redis_client.set(KEY, b"v2")
    _synced(redis_client)
    assert cache.get(KEY) == b"v2"
    assert _warm(cache, KEY) == b"v2"
    redis_client.delete(KEY)
    _synced(redis_client)
    assert cache.get(KEY) is None
    redis_client.set(KEY, b"v3")
    redis_client.expire(KEY, 1)  # an expiry is a deletion Redis pushes too
    _synced(redis_client)
    assert _warm(cache, KEY) == b"v3"
    deadline = time.monotonic() + 5
    while cache.get(KEY) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.get(KEY) is None


def test_a_value_invalidated_while_its_get_is_in_flight_is_not_stored(cache: ReadCache, redis_client) -> None:
    """The race, constructed: the GET runs on the server, then another client writes the key
    before the reply is read, so the reply and the invalidation arrive together. The stale reply
    is returned (it was right when read) but never stored: the next read sees the write."""
    redis_client.set(KEY, b"old")
    _warm(cache, KEY)
    redis_client.set(KEY, b"older-than-new")  # invalidates: the next get is a GET on the wire
    _synced(redis_client)
    conn = cache._conn
    real_read = conn.read_response
    raced = []

    def read_after_a_write(*args, **kwargs):
        if not raced and not kwargs.get("push_request"):  # the GET's reply, not a drain of pushes
            raced.append(True)
            time.sleep(0.05)  # the GET has run on the server by now (it was sent first)
            redis_client.set(KEY, b"new")  # the invalidation is queued behind the GET's reply
            time.sleep(0.05)  # both are in our socket now
        return real_read(*args, **kwargs)

    conn.read_response = read_after_a_write  # type: ignore[method-assign]
    try:
        got = cache.get(KEY)
    finally:
        del conn.read_response
    assert raced and got == b"older-than-new"  # the race happened as constructed
    assert KEY not in cache._entries
    assert cache.get(KEY) == b"new"


def test_client_kill_flushes_and_reconnects_with_tracking(cache: ReadCache, redis_client) -> None:
    redis_client.set(KEY, b"before")
    _warm(cache, KEY)
    reconnects = cache.reconnects
    redis_client.client_kill_filter(_id=_client_id(cache))
    redis_client.set(KEY, b"after")  # nobody tracks the key for us any more: no push will come
    _synced(redis_client)
    time.sleep(0.05)
    assert cache.get(KEY) == b"after"  # the closed socket was seen: flushed, read from Redis
    assert cache.reconnects == reconnects + 1 and cache.tracking
    assert _warm(cache, KEY) == b"after"  # tracking is back on: caching again
    redis_client.set(KEY, b"later")
    _synced(redis_client)
    assert cache.get(KEY) == b"later"  # ... and invalidations arrive on the new connection


def test_a_reconnect_behind_the_caches_back_flushes(cache: ReadCache, redis_client) -> None:
    """redis-py may drop and reopen the connection by itself: the reconnect's callback flushes."""
    for key in (f"{KEY}:a", f"{KEY}:b"):
        redis_client.set(key, b"before")
        _warm(cache, key)
    cache._conn.disconnect()  # not through the cache: as redis-py does after a failed command
    for key in (f"{KEY}:a", f"{KEY}:b"):
        redis_client.set(key, b"after")  # no push: the server forgot the old connection's keys
    _synced(redis_client)
    assert cache.get(f"{KEY}:a") == b"after"  # reconnects (tracking on again)
    assert cache.get(f"{KEY}:b") == b"after" and cache.tracking  # the old entry did not survive


def test_a_restarted_redis_flushes_the_cache(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    service = redis_service(settings)
    service.start(timeout_s=20)
    try:
        writer = redis.Redis.from_url(settings.redis.url)
        writer.set(KEY, b"before-restart")
        cache = ReadCache(settings, max_entries=10, max_bytes=1 << 20, socket_timeout=2.0)
        assert _warm(cache, KEY) == b"before-restart"
        service.stop()
        with pytest.raises(redis.ConnectionError):
            cache.get(KEY)  # Redis is down: an error, never the cached value
        assert not cache.tracking and len(cache) == 0
        service.start(timeout_s=20)
        writer = redis.Redis.from_url(settings.redis.url)
        assert cache.get(KEY) == writer.get(KEY) and cache.tracking  # whatever the append-only file kept
        writer.set(KEY, b"after-restart")
        _synced(writer)
        assert cache.get(KEY) == b"after-restart"
        cache.close()
        writer.close()
    finally:
        service.stop()


def test_a_restart_seen_only_at_the_next_poll_is_not_served(tmp_path: Path) -> None:
    """Redis restarts between two reads and comes back before the next one: the old socket's
    end-of-file makes the cache flush instead of serving what it held."""
    settings = make_settings(tmp_path)
    service = redis_service(settings)
    service.start(timeout_s=20)
    try:
        redis.Redis.from_url(settings.redis.url).set(KEY, b"before-restart")
        cache = ReadCache(settings, max_entries=10, max_bytes=1 << 20, socket_timeout=2.0)
        assert _warm(cache, KEY) == b"before-restart"
        service.stop()
        service.start(timeout_s=20)
        writer = redis.Redis.from_url(settings.redis.url)
        writer.set(KEY, b"after-restart")  # the old connection's tracking died with the server
        _synced(writer)
        assert cache.get(KEY) == b"after-restart" and cache.tracking
        writer.close()
        cache.close()
    finally:
        service.stop()


def test_memory_is_bounded_by_entries_and_bytes(redis_client, services_settings: Settings) -> None:
    for i in range(20):
        redis_client.set(f"{KEY}:{i}", b"x" * 100)
    by_count = ReadCache(services_settings, max_entries=5, max_bytes=1 << 20, socket_timeout=2.0)
    by_bytes = ReadCache(services_settings, max_entries=1000, max_bytes=1024, socket_timeout=2.0)
    try:
        for rc in (by_count, by_bytes):
            for _ in range(2):
                for i in range(20):
                    assert rc.get(f"{KEY}:{i}") == b"x" * 100
        assert len(by_count) == 5 and len(by_bytes) < 20
        assert by_bytes.size_bytes <= 1024
        assert by_count.get(f"{KEY}:19") and by_count.hits >= 1  # the most recent ones stay
        redis_client.set(f"{KEY}:big", b"y" * 2000)
        assert by_bytes.get(f"{KEY}:big") == b"y" * 2000 and by_bytes.get(f"{KEY}:big") == b"y" * 2000
        assert f"{KEY}:big" not in by_bytes._entries  # larger than the whole bound: never stored
    finally:
        by_count.close()
        by_bytes.close()


def test_refused_tracking_means_no_caching(redis_client, services_settings: Settings) -> None:
    """A user whose ACL forbids CLIENT: reads work, nothing is served from memory."""
    redis_client.execute_command("ACL", "SETUSER", "rc-no-client", "on", ">pw", "~*", "+@all", "-client")
    url = services_settings.redis.url.replace("redis://", "redis://rc-no-client:pw@")
    limited = services_settings.model_copy(update={"redis": services_settings.redis.model_copy(update={"url": url})})
    rc = ReadCache(limited, max_entries=10, max_bytes=1 << 20, socket_timeout=2.0)
    try:
        redis_client.set(KEY, b"a")
        assert [rc.get(KEY) for _ in range(3)] == [b"a"] * 3
        assert rc.hits == 0 and not rc.tracking and len(rc) == 0
        redis_client.set(KEY, b"b")
        _synced(redis_client)
        assert rc.get(KEY) == b"b"
    finally:
        rc.close()
        redis_client.execute_command("ACL", "DELUSER", "rc-no-client")


# -- switches --------------------------------------------------------------------------------------------
def test_cache_off_reads_redis_every_time(world: Fixture, redis_client, services_settings: Settings) -> None:
    off = services_settings.model_copy(update={"serving": services_settings.serving.model_copy(update={"read_cache": False})})
    url = f"/recommendations/office/{world.user}?k=2"
    before = redis_client.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
    with TestClient(create_app(off)) as http:
        assert http.app.state.backend.cache is None  # type: ignore[attr-defined]
        for _ in range(5):
            assert _ids(http.get(url).json()) == world.rec_ids[:2]
    after = redis_client.info("commandstats")["cmdstat_get"]["calls"]
    assert after - before >= 5  # one GET per request at least (plus the model pointer)


def test_cluster_mode_and_other_modes_bypass_the_cache(services_settings: Settings) -> None:
    cluster = services_settings.model_copy(update={"redis": services_settings.redis.model_copy(update={"cluster": True})})
    assert read_cache_for(cluster, socket_timeout=1.0) is None
    with pytest.raises(ValueError, match="cluster"):
        ReadCache(cluster, max_entries=1, max_bytes=1 << 20, socket_timeout=1.0)
    assert read_cache_for(services_settings, socket_timeout=1.0) is not None
    for mode in ("async", "thread"):
        with TestClient(create_app(services_settings, mode=mode)) as http:
            assert http.app.state.backend.cache is None  # type: ignore[attr-defined]
