"""The Redis contract on a real 3-node Redis Cluster, started and stopped by the fixture.

Every per-user key carries the user's hash tag, so the publisher's merge scripts, the history
scripts, the pipelines and the client's reads run unchanged on a cluster, and so does the real
consumer (its event-apply script touches one user's history and dedupe set, one slot).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import free_port, make_settings
from test_client import MODEL, populate
from test_publish_and_stream_e2e import trained  # noqa: F401  (module fixture: a trained model)

from crossrec.batch_publish import publish
from crossrec.client import AsyncRecClient, InvalidRequestError, RecClient
from crossrec.keys import HistoryEvent, KeySchema, RecList
from crossrec.publish import RecWriter
from crossrec.redis_conn import redis_client
from crossrec.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three cluster-enabled redis-server processes joined with `redis-cli --cluster create`."""
    base = tmp_path_factory.mktemp("cluster")
    ports = _cluster_ports(3)
    procs = []
    try:
        for port in ports:
            d = base / str(port)
            d.mkdir()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in ports:
            _wait(lambda port=port: redis.Redis(port=port).ping())
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        for port in ports:
            _wait(lambda port=port: redis.Redis(port=port).cluster("info").get("cluster_state") == "ok")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster-bus port (port + 10000) is a valid, free port too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 <= 65535 and _free(port + 10000) and port not in ports:
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("Redis cluster did not come up")
        time.sleep(0.1)


@pytest.fixture()
def cluster_settings(cluster: list[int], tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(tmp_path, redis={"url": f"redis://127.0.0.1:{cluster[0]}/0", "cluster": True})
    client = redis_client(settings)
    client.flushall()
    client.close()
    yield settings


def test_the_cluster_spreads_users_over_nodes(cluster_settings: Settings) -> None:
    client = redis_client(cluster_settings)
    assert isinstance(client, redis.RedisCluster) and len(client.get_primaries()) == 3
    schema = KeySchema(cluster_settings.key_prefix)
    slots = {client.keyslot(schema.history(f"U{i}")) for i in range(50)}
    nodes = {client.get_node_from_key(schema.history(f"U{i}")).name for i in range(50)}
    assert len(slots) > 40 and len(nodes) == 3  # a real spread, so cross-slot bugs would show
    client.close()


def test_writer_and_client_round_trip_on_the_cluster(cluster_settings: Settings) -> None:
    writer = RecWriter.from_settings(cluster_settings)
    world = populate(writer)
    others = [f"user-{i}" for i in range(30)]  # many users: pipelines span every node
    writer.push_many_histories([(u, [HistoryEvent("art", "a1", "review", 1.0), HistoryEvent("office", "o1", "view", 2.0)]) for u in others])
    writer.write_many_recs("office", [(u, RecList.from_json(writer.serve_json("office", _one("o3")))) for u in others])
    writer.close()

    with RecClient(cluster_settings) as client:
        recs = client.get(world.user, "office", 10)
        assert [r.item_id for r in recs.items] == world.rec_ids and recs.current_model == MODEL
        assert recs.items[0].because is not None and recs.items[0].because.title == world.titles[world.because[0]]
        assert client.get(world.new_user, "office", 2).fallback
        assert [e.item_id for e in client.history(world.user).entries] == [e.item_id for e in reversed(world.history)]
        assert [e.item_id for e in client.history("user-7").entries] == ["o1", "a1"]
        assert sorted(client.users("office", 100)) == sorted([world.user, *others])  # SCAN over all nodes
        assert client.get("user-3", "office", 5).items[0].title == world.titles["o3"]

    async def aread() -> tuple[list[str], list[str]]:
        aio = AsyncRecClient(cluster_settings)
        try:
            got = await aio.get(world.user, "office", 3)
            return [r.item_id for r in got.items], [e.item_id for e in (await aio.history(world.user)).entries]
        finally:
            await aio.close()

    ids, hist = asyncio.run(aread())
    assert ids == world.rec_ids[:3] and hist == [e.item_id for e in reversed(world.history)]


def _one(item: str) -> RecList:
    from crossrec.publish import make_rec_list

    return make_rec_list([item], [1.0], MODEL)


def test_publish_merges_on_the_cluster(cluster_settings: Settings, trained: Path) -> None:  # noqa: F811
    settings = cluster_settings.model_copy(update={"work_dir": trained, "top_k": 5})
    first = publish(settings, trained / "clean")
    assert first.lists_written == first.users == 40 and first.histories_seeded == 40
    schema = KeySchema(settings.key_prefix)
    client = redis_client(settings)
    # what the consumer writes for an event after the cut: a history push, then a stream list
    writer = RecWriter.from_settings(settings)
    bought = RecList.from_json(client.get(schema.recs("office", "U0009"))).items[0].item_id
    writer.push_history("U0009", [HistoryEvent("office", bought, "purchase", first.cut_ts + 60)])
    writer.write_recs("office", "U0009", RecList(items=[], model_version=first.model_version, source="stream"))
    writer.close()

    again = publish(settings, trained / "clean")
    assert again.kept_newer == 1 and again.rescored == 1 and again.lists_written == 40
    recs = RecList.from_json(client.get(schema.recs("office", "U0009")))
    assert recs.items and bought not in {i.item_id for i in recs.items}  # re-scored from the live history
    with RecClient(settings) as reader:
        got = reader.get("U0001", "office", 5)
        assert len(got.items) == 5 and all(r.title for r in got.items) and got.current_model == first.model_version
    client.close()


def test_the_consumer_applies_and_dedupes_events_on_the_cluster(
    cluster_settings: Settings, services_settings: Settings, trained: Path  # noqa: F811
) -> None:
    """The real consumer against the cluster: its apply script (history + dedupe set of one user,
    one slot), the scoring and the list writes run unchanged; a replayed batch changes nothing."""
    import json

    from kafka import KafkaProducer
    from streaming_support import isolated_settings

    from crossrec.streaming.consumer import RecsConsumer
    from crossrec.streaming.scoring import load_scorer

    kafka = isolated_settings(services_settings).kafka
    settings = cluster_settings.model_copy(update={"work_dir": trained, "kafka": kafka, "top_k": 5})
    publish(settings, trained / "clean")  # catalogue hashes, lists and the pointer on the cluster
    users = [f"C{i:03d}" for i in range(12)]  # spread over the three nodes
    events = [
        {"user_id": u, "domain": "office", "item_id": f"office-{n % 30:03d}", "event_type": "purchase",
         "ts": 1_900_000_000_000 + n, "event_id": f"e-{u}-{n}", "schema_version": 1}
        for n, u in enumerate(users * 2)
    ]
    producer = KafkaProducer(**settings.kafka.client_kwargs())
    for event in events + events[:6]:  # the first six again: a replay the dedupe set must absorb
        producer.send(settings.kafka.events_topic, key=event["user_id"].encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()

    consumer = RecsConsumer(settings, lambda: load_scorer(settings), poll_timeout_ms=200)
    try:
        stats = consumer.run(max_events=len(events) + 6, max_seconds=90)
    finally:
        consumer.close()
    assert stats.applied == len(events) and stats.duplicates == 6 and not stats.dead_lettered
    schema = KeySchema(settings.key_prefix)
    client = redis_client(settings)
    try:
        for user in users:
            mine = [e["item_id"] for e in events if e["user_id"] == user]
            streamed = [json.loads(r)["item_id"] for r in client.lrange(schema.history(user), 0, 1)]
            assert streamed == mine[::-1]  # newest first, each event once
            assert client.zcard(schema.dedupe(user)) == 2
            recs = RecList.from_json(client.get(schema.recs("office", user)))
            assert recs.source == "stream" and recs.items and not set(mine) & {i.item_id for i in recs.items}
    finally:
        client.close()


def test_a_user_id_that_breaks_the_hash_tag_is_refused_before_the_cluster_sees_it(cluster_settings: Settings) -> None:
    client = redis_client(cluster_settings)
    # The keys such an id would make: "{}" is no hash tag, so they fall in different slots and a
    # script over them fails on the cluster. That is what the rule keeps from happening.
    raw = ["crossrec:recs:office:{}u1}", "crossrec:history:{}u1}"]
    assert client.keyslot(raw[0]) != client.keyslot(raw[1])
    with pytest.raises((redis.ResponseError, redis.exceptions.RedisClusterException)):
        client.eval("return 1", 2, *raw)
    client.close()

    writer = RecWriter.from_settings(cluster_settings)
    try:
        with pytest.raises(ValueError, match="empty Redis Cluster hash tag"):
            writer.merge_many_recs("office", [("}u1", _one("o3"))], 0.0)
    finally:
        writer.close()
    with RecClient(cluster_settings) as reader, pytest.raises(InvalidRequestError, match="empty Redis Cluster hash tag"):
        reader.get("}u1", "office")
