"""The Python read client against real Redis servers: round trip, fallback, errors, password.

``populate`` (also used by the API and browser tests) writes a small catalogue and two users
with ``RecWriter``, i.e. exactly what the batch publisher and the consumer write.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_settings

from crossrec.client import (
    AsyncRecClient,
    ContractError,
    InvalidRequestError,
    RecClient,
    StoreAuthError,
    StoreUnavailableError,
    UnknownDomainError,
)
from crossrec.keys import HistoryEvent, KeySchema
from crossrec.publish import ItemDisplay, RecWriter, make_rec_list
from crossrec.services import redis_service
from crossrec.settings import Settings

MODEL = "adapt-2024-01-01-abc"


@dataclass(frozen=True)
class Fixture:
    """What ``populate`` wrote, so tests compare against it instead of hard-coded answers."""

    user: str
    new_user: str
    rec_ids: list[str]
    scores: list[float]
    because: list[str]
    titles: dict[str, str]
    domains: dict[str, str]
    history: list[HistoryEvent]  # oldest first
    popular_ids: list[str]
    updated_at: float


def populate(writer: RecWriter, *, user: str = "A1USER", updated_at: float | None = None) -> Fixture:
    """A tiny two-domain world: 12 office items, 5 art items, one user with a list, one without."""
    titles = {f"o{i}": f"Office item {i}" for i in range(1, 13)} | {f"a{i}": f"Art item {i}" for i in range(1, 6)}
    domains = {item: ("office" if item.startswith("o") else "art") for item in titles}
    writer.write_items(
        ItemDisplay(domains[i], i, t, category="Pens" if domains[i] == "office" else "Paint", brand=None)
        for i, t in titles.items()
    )
    history = [
        HistoryEvent("art", "a1", "review", 1_600_000_000.0),
        HistoryEvent("art", "a2", "review", 1_600_000_100.0),
        HistoryEvent("office", "o1", "purchase", 1_600_000_200.0),
    ]
    writer.replace_history(user, history)
    rec_ids = [f"o{i}" for i in range(2, 12)]
    scores = [round(0.95 - 0.05 * i, 4) for i in range(10)]
    because = ["a1", "a2", "o1", "a1", "a2", "o1", "a1", "a2", "o1", "a1"]
    updated_at = time.time() - 5.0 if updated_at is None else updated_at
    writer.write_recs("office", user, make_rec_list(rec_ids, scores, MODEL, because=because, updated_at=updated_at))
    popular = ["o12", "o5", "o3", "o7"]
    writer.write_popular("office", make_rec_list(popular, [40.0, 30.0, 20.0, 10.0], MODEL, source="popular"))
    writer.set_current_model(MODEL)
    return Fixture(user, "NEWUSER", rec_ids, scores, because, titles, domains, history, popular, updated_at)


@pytest.fixture()
def world(redis_client, services_settings: Settings) -> Fixture:
    return populate(RecWriter(redis_client, KeySchema(services_settings.key_prefix)))


@pytest.fixture()
def client(services_settings: Settings):
    with RecClient(services_settings) as c:
        yield c


# -- the round trip ----------------------------------------------------------------------------
def test_round_trip_returns_what_the_publisher_wrote(client: RecClient, world: Fixture) -> None:
    recs = client.get(world.user, "office", 10)
    assert not recs.fallback and recs.source == "batch"
    assert recs.model_version == MODEL and recs.current_model == MODEL
    assert [r.item_id for r in recs.items] == world.rec_ids
    assert [r.score for r in recs.items] == world.scores
    assert [r.rank for r in recs.items] == list(range(1, 11))
    assert [r.title for r in recs.items] == [world.titles[i] for i in world.rec_ids]
    assert {r.category for r in recs.items} == {"Pens"} and {r.brand for r in recs.items} == {None}
    # Explanations resolve the history item's title in whichever domain it lives.
    for r, because in zip(recs.items, world.because):
        assert r.because is not None
        assert (r.because.item_id, r.because.domain, r.because.title) == (because, world.domains[because], world.titles[because])
        assert r.because.text == f"because you bought {world.titles[because]}"
    assert recs.updated_at == pytest.approx(world.updated_at)
    assert 4.0 <= recs.age_s < 60.0  # written 5 s before the read


def test_k_truncates_in_rank_order(client: RecClient, world: Fixture) -> None:
    assert [r.item_id for r in client.get(world.user, "office", 3).items] == world.rec_ids[:3]
    assert len(client.get(world.user, "office", 50).items) == len(world.rec_ids)  # never invents items


def test_new_list_replaces_old_one_for_the_next_read(client: RecClient, world: Fixture, redis_client, services_settings) -> None:
    writer = RecWriter(redis_client, KeySchema(services_settings.key_prefix))
    writer.write_recs("office", world.user, make_rec_list(["o12"], [0.5], "m-next", source="stream"))
    recs = client.get(world.user, "office", 10)
    assert [r.item_id for r in recs.items] == ["o12"]
    assert (recs.source, recs.model_version, recs.current_model) == ("stream", "m-next", MODEL)
    assert recs.items[0].because is None


# -- fallback ----------------------------------------------------------------------------------
def test_user_without_list_gets_popular_items_flagged(client: RecClient, world: Fixture) -> None:
    recs = client.get(world.new_user, "office", 3)
    assert recs.fallback and recs.source == "popular"
    assert [r.item_id for r in recs.items] == world.popular_ids[:3]
    assert [r.title for r in recs.items] == [world.titles[i] for i in world.popular_ids[:3]]
    assert all(r.because is None for r in recs.items)


def test_no_list_and_no_popular_is_an_empty_fallback(client: RecClient, world: Fixture) -> None:
    recs = client.get(world.new_user, "art", 10)  # nothing published for art
    assert recs.fallback and recs.items == [] and recs.source == "none"
    assert recs.model_version is None and recs.current_model == MODEL and recs.age_s is None


# -- history and tooling -----------------------------------------------------------------------
def test_history_is_newest_first_with_titles_and_counts_corrupt_entries(
    client: RecClient, world: Fixture, redis_client, services_settings
) -> None:
    redis_client.lpush(KeySchema(services_settings.key_prefix).history(world.user), b"{not json")
    hist = client.history(world.user, 10)
    assert hist.skipped == 1
    assert [(e.item_id, e.domain, e.event_type, e.ts) for e in hist.entries] == [
        (e.item_id, e.domain, e.event_type, e.ts) for e in reversed(world.history)
    ]
    assert [e.title for e in hist.entries] == [world.titles[e.item_id] for e in reversed(world.history)]
    assert client.history("nobody").entries == []
    assert [e.item_id for e in client.history(world.user, 1).entries] == []  # the corrupt head used the slot


def test_users_lists_only_users_with_a_list_in_that_domain(client: RecClient, world: Fixture) -> None:
    assert client.users("office") == [world.user]
    assert client.users("art") == []


# -- invalid input: rejected before Redis is touched -------------------------------------------
@pytest.mark.parametrize(
    ("user", "domain", "k", "error", "message"),
    [
        ("u", "garden", 10, UnknownDomainError, "unknown domain 'garden'; known domains: art, office"),
        ("u", "office", 0, InvalidRequestError, "between 1 and 100"),
        ("u", "office", 101, InvalidRequestError, "between 1 and 100"),
        ("u", "office", True, InvalidRequestError, "integer"),
        ("u", "office", "3", InvalidRequestError, "integer"),
        ("", "office", 10, InvalidRequestError, "non-empty"),
        ("x" * 129, "office", 10, InvalidRequestError, "limit is 128"),
        ("bad\x00id", "office", 10, InvalidRequestError, "control characters"),
        ("}u", "office", 10, InvalidRequestError, "starts with '}', which makes an empty Redis Cluster hash tag"),
    ],
)
def test_invalid_requests_raise_clear_errors(client: RecClient, user, domain, k, error, message) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        client.get(user, domain, k)


@pytest.mark.parametrize("read", [lambda c: c.get("}u1", "office"), lambda c: c.history("}u1"), lambda c: c.user_features("}u1")])
def test_a_user_id_that_breaks_the_hash_tag_is_a_value_error_on_every_read(client: RecClient, redis_client, services_settings, read) -> None:
    # Stored under the key the id would make: without the rule the client would read it (or, on a
    # cluster, fail with CROSSSLOT in a script over the user's keys).
    redis_client.set(f"{services_settings.key_prefix}:recs:office:{{}}u1}}", b"{}")
    with pytest.raises(ValueError, match="empty Redis Cluster hash tag"):
        read(client)


@pytest.mark.parametrize(
    "raw",
    [b'{"v": 99, "items": []}', b"{not json", b"5", b'{"v": 2, "source": "batch", "model_version": "m", "updated_at": 1, "items": [{"id": "x"}]}',
     b'{"v": 2}', b'{"v": 1, "items": [], "model_version": "m", "updated_at": 1, "source": "batch"}'],
)
def test_a_value_outside_the_schema_is_a_contract_error(client: RecClient, redis_client, services_settings, raw) -> None:
    redis_client.set(KeySchema(services_settings.key_prefix).recs("office", "u1"), raw)
    with pytest.raises(ContractError, match=r"crossrec:recs:office:\{u1\}|'u1'"):
        client.get("u1", "office", 10)


# -- ready-to-serve lists: titles resolved when the list is written --------------------------------
def test_titles_are_those_known_when_the_list_was_written(world: Fixture, redis_client, services_settings) -> None:
    """A list carries the titles of its write; a rename shows from the list's next write, and a
    list written before its items existed shows them once rewritten (the consumer does on the
    user's next event, the publisher nightly)."""
    writer = RecWriter(redis_client, KeySchema(services_settings.key_prefix))
    with RecClient(services_settings) as client:
        assert client.get(world.user, "office", 1).items[0].title == "Office item 2"
        writer.write_items([ItemDisplay("office", "o2", "Renamed")])
        assert client.get(world.user, "office", 1).items[0].title == "Office item 2"  # one GET, no lookup
        writer.write_recs("office", world.user, make_rec_list(world.rec_ids, world.scores, MODEL, because=world.because))
        assert client.get(world.user, "office", 1).items[0].title == "Renamed"

        writer.write_recs("office", "u2", make_rec_list(["o99"], [1.0], MODEL))
        assert client.get("u2", "office", 1).items[0].title is None
        writer.write_items([ItemDisplay("office", "o99", "Brand new")])
        writer.write_recs("office", "u2", make_rec_list(["o99"], [1.0], MODEL))
        assert client.get("u2", "office", 1).items[0].title == "Brand new"


def test_current_model_in_a_read_is_at_most_pointer_ttl_old(world: Fixture, redis_client, services_settings) -> None:
    writer = RecWriter(redis_client, KeySchema(services_settings.key_prefix))
    with RecClient(services_settings, pointer_ttl_s=0.3) as client:
        assert client.get(world.user, "office", 1).current_model == MODEL
        writer.set_current_model("m-next")
        assert client.current_model() == "m-next"  # the explicit read is never cached
        time.sleep(0.35)
        assert client.get(world.user, "office", 1).current_model == "m-next"


# -- the asyncio client agrees with the sync one -----------------------------------------------
def test_async_client_returns_the_same_as_the_sync_client(client: RecClient, world: Fixture, services_settings) -> None:
    async def read() -> tuple[dict, dict, dict, list[str], str | None]:
        aio = AsyncRecClient(services_settings)
        try:
            return (
                (await aio.get(world.user, "office", 10)).to_dict(),
                (await aio.get(world.new_user, "office", 2)).to_dict(),
                (await aio.history(world.user)).to_dict(),
                await aio.users("office"),
                await aio.current_model(),
            )
        finally:
            await aio.close()

    got, fallback, hist, users, model = asyncio.run(read())
    for body, (user, k) in ((got, (world.user, 10)), (fallback, (world.new_user, 2))):
        expected = client.get(user, "office", k).to_dict()
        body.pop("age_s"), expected.pop("age_s")
        assert body == expected
    assert hist == client.history(world.user).to_dict()
    assert users == [world.user] and model == MODEL


def test_bursts_wider_than_the_pool_wait_instead_of_failing(world: Fixture, services_settings: Settings, tmp_path) -> None:
    """100 concurrent reads over 3 connections: every read succeeds, none sees 'Too many connections'."""
    from concurrent.futures import ThreadPoolExecutor

    narrow = services_settings.model_copy(update={"redis": services_settings.redis.model_copy(update={"max_connections": 3})})

    async def burst() -> list[int]:
        aio = AsyncRecClient(narrow)
        try:
            results = await asyncio.gather(*(aio.get(world.user, "office", 2) for _ in range(100)))
            return [len(r.items) for r in results]
        finally:
            await aio.close()

    assert asyncio.run(burst()) == [2] * 100
    with RecClient(narrow) as sync, ThreadPoolExecutor(max_workers=20) as pool:
        assert list(pool.map(lambda _: len(sync.get(world.user, "office", 2).items), range(100))) == [2] * 100


# -- connection problems -----------------------------------------------------------------------
def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # a free port nobody listens on
    with RecClient(settings, socket_timeout=0.5) as c:
        with pytest.raises(StoreUnavailableError, match=r"Redis at redis://127\.0\.0\.1:\d+/0 is unreachable"):
            c.get("u1", "office", 10)


@contextmanager
def protected_world(tmp_path: Path, secret: str) -> Iterator[tuple[Settings, Fixture]]:
    """A real redis-server that requires ``secret``, populated through the publisher; stopped after."""
    protected = make_settings(tmp_path, redis={"url": make_settings(tmp_path).redis.url, "password": secret})
    service = redis_service(protected)
    service.start(timeout_s=20)
    try:
        writer = RecWriter.from_settings(protected)
        world = populate(writer)
        writer.close()
        yield protected, world
    finally:
        service.stop()


def test_password_protected_redis(tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    with protected_world(tmp_path, secret) as (protected, world):
        with RecClient(protected) as c:
            recs = c.get(world.user, "office", 5)
            assert [r.item_id for r in recs.items] == world.rec_ids[:5]
            assert recs.items[0].because is not None and recs.items[0].because.title == world.titles[world.because[0]]

        no_password = make_settings(tmp_path, redis={"url": protected.redis.url})
        with RecClient(no_password) as c, pytest.raises(StoreAuthError, match="password") as missing:
            c.get(world.user, "office", 5)
        wrong = make_settings(tmp_path, redis={"url": protected.redis.url, "password": "nope"})
        with RecClient(wrong) as c, pytest.raises(StoreAuthError, match="refused authentication") as refused:
            c.get(world.user, "office", 5)
        for err in (missing.value, refused.value):
            assert secret not in str(err) and "nope" not in str(err)


# -- the `crossrec recs` command reads through the client ------------------------------------------
def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSREC_")}
    env |= {
        "CROSSREC_CONFIG": os.environ["CROSSREC_CONFIG"],  # the empty test config (autouse fixture)
        "CROSSREC_REDIS__URL": settings.redis.url,
        "CROSSREC_KEY_PREFIX": settings.key_prefix,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "crossrec.cli", "recs", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_recs_command_prints_the_list(world: Fixture, services_settings: Settings) -> None:
    res = _cli(services_settings, world.user, "--domain", "office", "-k", "3")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for item, because in zip(world.rec_ids[:3], world.because):
        row = next(line for line in lines if f" {item} " in line)
        assert world.titles[item] in row and f"because you bought {world.titles[because]}" in row
    assert world.rec_ids[3] not in res.stdout and MODEL in res.stdout

    fallback = _cli(services_settings, world.new_user, "-k", "2")  # the target domain by default
    assert fallback.returncode == 0 and "popular fallback" in fallback.stdout
    assert world.titles[world.popular_ids[0]] in fallback.stdout

    bad = _cli(services_settings, world.user, "--domain", "garden")
    assert bad.returncode == 1 and "unknown domain 'garden'" in bad.stderr + bad.stdout


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA plus a server certificate for 127.0.0.1 signed by it (valid one day)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crossrec-test-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )
    srv = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


@contextmanager
def tls_redis(folder: Path) -> Iterator[tuple[int, Path]]:
    """A real redis-server that only speaks TLS (no plain port); yields (port, CA file)."""
    import redis as redis_py
    from conftest import free_port

    ca, cert, key = _tls_files(folder)
    port = free_port()
    argv = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis_py.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=1).ping():
                    break
            except redis_py.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_tls_redis_round_trip_and_certificate_checks(tmp_path: Path) -> None:
    """settings.redis.tls + tls_ca_cert: publisher and client talk TLS and verify the server."""
    with tls_redis(tmp_path) as (port, ca):
        url = f"redis://127.0.0.1:{port}/0"
        tls = make_settings(tmp_path, redis={"url": url, "tls": True, "tls_ca_cert": ca})
        writer = RecWriter.from_settings(tls)
        world = populate(writer)
        writer.close()
        with RecClient(tls) as c:
            assert [r.item_id for r in c.get(world.user, "office", 5).items] == world.rec_ids[:5]
        untrusted = make_settings(tmp_path, redis={"url": url, "tls": True})  # system CAs do not know our CA
        plain = make_settings(tmp_path, redis={"url": url})  # no TLS against a TLS-only port
        for settings in (untrusted, plain):
            with RecClient(settings, socket_timeout=2) as c, pytest.raises(StoreUnavailableError):
                c.get(world.user, "office", 5)
