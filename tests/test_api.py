"""The HTTP API in-process (Starlette's TestClient) over the real session Redis.

Checks the contract round trip (publisher writes, API returns the same as the Python client), the
popular fallback, health, the OpenAPI schema, and that every malformed request is a 4xx with a
readable message, never a 500. The hot route is served by the app's own ``__call__`` in front of
FastAPI's router; the framework's route handler serves it behind a ``root_path`` and must answer
the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import make_settings
from fastapi.testclient import TestClient
from test_client import MODEL, Fixture, populate, protected_world

from fastapi import FastAPI

from crossrec.client import RecClient
from crossrec.keys import KeySchema
from crossrec.publish import RecWriter, make_rec_list
from crossrec.services import redis_service
from crossrec.settings import Settings
from serving.app import create_app


@pytest.fixture()
def world(redis_client, services_settings: Settings) -> Fixture:
    return populate(RecWriter(redis_client, KeySchema(services_settings.key_prefix)))


@pytest.fixture(scope="module")
def api(services_settings: Settings):
    with TestClient(create_app(services_settings), raise_server_exceptions=False) as http:
        yield http


# -- the contract round trip -------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["async", "thread", "inline"])
def test_api_returns_what_the_client_reads(mode: str, world: Fixture, services_settings: Settings) -> None:
    with TestClient(create_app(services_settings, mode=mode)) as http:
        res = http.get(f"/recommendations/office/{world.user}", params={"k": 4})
    assert res.status_code == 200 and res.headers["content-type"] == "application/json"
    body = res.json()
    with RecClient(services_settings) as client:
        expected = client.get(world.user, "office", 4).to_dict()
    assert abs(body.pop("age_s") - expected.pop("age_s")) < 5
    assert body == expected
    assert [i["item_id"] for i in body["items"]] == world.rec_ids[:4]
    assert body["items"][0]["because"] == {
        "item_id": world.because[0],
        "title": world.titles[world.because[0]],
        "domain": world.domains[world.because[0]],
        "text": f"because you bought {world.titles[world.because[0]]}",
    }
    assert body["model_version"] == MODEL and body["fallback"] is False and body["k"] == 4


def test_default_k_is_the_configured_top_k(api: TestClient, world: Fixture, services_settings: Settings) -> None:
    body = api.get(f"/recommendations/office/{world.user}").json()
    assert body["k"] == min(services_settings.top_k, len(world.rec_ids))


def test_fallback_for_a_user_without_list(api: TestClient, world: Fixture) -> None:
    body = api.get(f"/recommendations/office/{world.new_user}?k=2").json()
    assert body["fallback"] is True and body["source"] == "popular"
    assert [i["item_id"] for i in body["items"]] == world.popular_ids[:2]
    assert [i["title"] for i in body["items"]] == [world.titles[i] for i in world.popular_ids[:2]]


def test_history_endpoint(api: TestClient, world: Fixture) -> None:
    body = api.get(f"/users/{world.user}/history", params={"limit": 2}).json()
    newest = list(reversed(world.history))[:2]
    assert [(e["item_id"], e["domain"], e["title"]) for e in body["entries"]] == [
        (e.item_id, e.domain, world.titles[e.item_id]) for e in newest
    ]
    assert body["skipped"] == 0


def test_users_and_domains_endpoints(api: TestClient, world: Fixture, services_settings: Settings) -> None:
    assert api.get("/users", params={"domain": "office"}).json() == {"domain": "office", "users": [world.user]}
    assert api.get("/domains").json() == {
        "domains": services_settings.domains,
        "default_domain": services_settings.target_domain,
        "default_k": services_settings.top_k, "max_k": 100}


def test_user_ids_with_reserved_characters_round_trip(api: TestClient, redis_client, services_settings: Settings) -> None:
    writer = RecWriter(redis_client, KeySchema(services_settings.key_prefix))
    user = "user:with spaces&?é"
    writer.write_recs("office", user, make_rec_list(["o1"], [1.0], MODEL))
    body = api.get(f"/recommendations/office/{quote(user, safe='')}").json()
    assert body["user_id"] == user and [i["item_id"] for i in body["items"]] == ["o1"] and not body["fallback"]


# -- health and schema -------------------------------------------------------------------------
def test_health_reports_redis_and_model(api: TestClient, world: Fixture) -> None:
    res = api.get("/health")
    assert res.status_code == 200
    assert res.json() == {"status": "ok", "redis": "up", "model_version": MODEL, "schema_version": 2, "message": None}


def test_health_without_a_model_says_so(api: TestClient, redis_client) -> None:
    body = api.get("/health").json()  # the redis_client fixture flushed the database
    assert body["status"] == "ok" and body["model_version"] is None and "no current model" in body["message"]


def test_redis_down_is_503_with_reason(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # nobody listens on this port
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        health = http.get("/health")
        recs = http.get("/recommendations/office/u1")
    assert health.status_code == 503 and health.json()["redis"] == "down"
    assert "unreachable" in health.json()["message"]
    assert recs.status_code == 503 and recs.json()["error"] == "store_unavailable"
    assert settings.redis.url in recs.json()["message"]


def test_openapi_documents_the_contract(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    assert {"/recommendations/{domain}/{user_id}", "/health", "/users/{user_id}/history", "/users", "/domains"} <= set(schema["paths"])
    op = schema["paths"]["/recommendations/{domain}/{user_id}"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["k"]["schema"]["maximum"] == 100 and params["k"]["schema"]["minimum"] == 1
    assert params["user_id"]["schema"]["maxLength"] == 128
    assert params["domain"]["schema"]["enum"] == ["art", "office"]
    assert params["k"]["schema"]["default"] == 10
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/RecommendationsOut")
    assert {"404", "422", "503"} <= set(op["responses"])
    assert "fallback" in schema["components"]["schemas"]["RecommendationsOut"]["properties"]


def test_inspection_page_and_assets_are_served(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="recs"' in page.text and "/static/app.js" in page.text
    assert api.get("/static/app.js").status_code == 200
    assert api.get("/static/style.css").status_code == 200


# -- every invalid input: a 4xx with a message, never a 500 --------------------------------------
HUGE = "u" * 60_000  # httpx refuses URLs over 64 KiB
INVALID = [
    ("/recommendations/garden/u1", 404, "unknown domain 'garden'; known domains: art, office"),
    ("/recommendations/office/u1?k=0", 422, "k must be an integer between 1 and 100, got 0"),
    ("/recommendations/office/u1?k=-3", 422, "k must be an integer between 1 and 100, got -3"),
    ("/recommendations/office/u1?k=101", 422, "k must be an integer between 1 and 100, got 101"),
    ("/recommendations/office/u1?k=abc", 422, "k must be an integer between 1 and 100, got 'abc'"),
    ("/recommendations/office/u1?k=1.5", 422, "got '1.5'"),
    ("/recommendations/office/u1?k=", 422, "got ''"),
    ("/recommendations/office/u1?k=%2B-5", 422, "got '+-5'"),
    ("/recommendations/office/u1?k=%C2%B2", 422, "got '²'"),
    ("/recommendations/office/u1?k=1&k=abc", 422, "got 'abc'"),
    ("/recommendations/office/u1?k=99999999999999999999999", 422, "got a 23-digit number"),
    ("/recommendations/office/u1?k=" + "9" * 5000, 422, "got a 5000-digit number"),
    ("/recommendations/office/" + "x" * 129, 422, "user_id is 129 characters long; the limit is 128"),
    ("/recommendations/office/" + HUGE, 422, "the limit is 128"),
    ("/recommendations/office/bad%00id", 422, "user_id must not contain control characters"),
    ("/recommendations/office/bad%0Aid", 422, "control characters"),
    ("/recommendations/office/%7Du1", 422, "user_id '}u1' starts with '}', which makes an empty Redis Cluster hash tag"),
    ("/recommendations/office/%7Du1?k=abc", 422, "starts with '}'"),  # the id is reported before k
    ("/users/%7Du1/history", 422, "empty Redis Cluster hash tag"),
    ("/users/%7Du1/features", 422, "empty Redis Cluster hash tag"),
    ("/recommendations/office/a%2Fb", 404, "Not Found"),
    ("/recommendations/office/", 404, "Not Found"),
    ("/recommendations/office", 404, "Not Found"),
    ("/users/u1/history?limit=0", 422, "query limit"),
    ("/users/u1/history?limit=51", 422, "less than or equal to 50"),
    ("/users/" + "x" * 129 + "/history", 422, "at most 128 characters"),
    ("/users/bad%07id/history", 422, "control characters"),
    ("/users?domain=garden", 422, "Input should be 'art' or 'office'"),
    ("/users", 422, "query domain: Field required"),
    ("/users?domain=office&limit=1001", 422, "less than or equal to 1000"),
    ("/no/such/route", 404, "Not Found"),
]


@pytest.mark.parametrize(("url", "status", "message"), INVALID, ids=[u[:60] for u, _, _ in INVALID])
def test_invalid_input_is_a_4xx_with_a_message(api: TestClient, url: str, status: int, message: str) -> None:
    res = api.get(url)
    assert res.status_code == status, res.text[:300]
    body = res.json()
    assert set(body) == {"error", "message"}
    assert message in body["message"]
    assert len(res.content) < 1000  # the oversized input is never echoed back


def test_wrong_method_is_405_json(api: TestClient) -> None:
    res = api.post("/recommendations/office/u1")
    assert res.status_code == 405 and res.json()["error"] == "http_error"


def test_contract_violation_in_redis_is_reported_not_hidden(api: TestClient, redis_client, services_settings) -> None:
    redis_client.set(KeySchema(services_settings.key_prefix).recs("office", "u1"), b"garbage")
    res = api.get("/recommendations/office/u1")
    assert res.status_code == 500 and res.json()["error"] == "contract_violation"
    assert "crossrec:recs:office:{u1}" in res.json()["message"]


# -- the fast path and the framework path are one API ----------------------------------------------
SAME_ANSWER = [
    "/recommendations/office/{user}",
    "/recommendations/office/{user}?k=3",
    "/recommendations/office/{user}?k=%2B3&other=1",
    "/recommendations/office/{new_user}?k=2",
    "/recommendations/office/{user}?k=abc",
    "/recommendations/office/{user}?k=1&k=0",
    "/recommendations/office/{user}?k=1234567890",
    "/recommendations/garden/{user}",
    "/recommendations/office/bad%00id",
    "/recommendations/office/" + "x" * 129,
]


def _count_fast_path(app: FastAPI, served: list[tuple[str, str]]) -> FastAPI:
    """Record every request the hot route answers itself (wraps its render function)."""
    hot = app.hot  # type: ignore[attr-defined]
    render = hot.render

    async def counting(domain: str, user_id: str, query_string: bytes) -> tuple[int, bytes]:
        served.append((domain, user_id))
        return await render(domain, user_id, query_string)

    hot.render = counting
    return app


def test_behind_a_root_path_the_framework_route_answers_the_same(world: Fixture, services_settings: Settings) -> None:
    fast_served: list[tuple[str, str]] = []
    routed_served: list[tuple[str, str]] = []
    urls = [u.format(user=world.user, new_user=world.new_user) for u in SAME_ANSWER]
    with (
        TestClient(_count_fast_path(create_app(services_settings), fast_served)) as fast,
        # A proxy's root_path makes the middleware step aside: FastAPI's router and handler serve.
        TestClient(_count_fast_path(create_app(services_settings), routed_served), root_path="/api") as routed,
    ):
        for url in urls:
            a, b = fast.get(url), routed.get(url)
            assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"]), url
            assert a.headers["content-length"] == str(len(a.content))
            body_a, body_b = a.json(), b.json()
            if a.status_code == 200:
                assert abs(body_a.pop("age_s") - body_b.pop("age_s")) < 5
            assert body_a == body_b, url
    assert len(fast_served) == len(urls) and routed_served == []  # each client took the path it was meant to


def test_only_get_on_the_route_takes_the_fast_path(world: Fixture, services_settings: Settings) -> None:
    served: list[tuple[str, str]] = []
    with TestClient(_count_fast_path(create_app(services_settings), served)) as http:
        assert http.head(f"/recommendations/office/{world.user}").status_code == 405
        assert http.get(f"/users/{world.user}/history").status_code == 200
        assert http.get("/recommendations/office/a%2Fb").status_code == 404
        assert served == []
        assert http.get(f"/recommendations/office/{world.user}").status_code == 200
    assert served == [("office", world.user)]


# -- Redis connections of the inline backend -------------------------------------------------------
def test_inline_mode_starts_with_redis_down_and_recovers_after_restarts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # nobody listens on this port yet
    service = redis_service(settings)
    with TestClient(create_app(settings, mode="inline"), raise_server_exceptions=False) as http:
        backend = http.app.state.backend  # type: ignore[attr-defined]
        assert http.get("/health").status_code == 503 and backend.single_connection is False
        service.start(timeout_s=20)
        try:
            assert http.get("/health").status_code == 200
            assert backend.single_connection is True  # switched from the pool once Redis answered
            assert http.get("/recommendations/office/u1").json()["fallback"] is True
            service.stop()
            down = http.get("/recommendations/office/u1")
            assert down.status_code == 503 and down.json()["error"] == "store_unavailable"
            service.start(timeout_s=20)
            assert http.get("/recommendations/office/u1").status_code == 200  # the one connection reconnected
        finally:
            service.stop()


def test_password_protected_redis(tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    with protected_world(tmp_path, secret) as (protected, world):
        for mode in ("inline", "async"):
            with TestClient(create_app(protected, mode=mode)) as http:
                body = http.get(f"/recommendations/office/{world.user}?k=3").json()
                assert [i["item_id"] for i in body["items"]] == world.rec_ids[:3]
                assert body["items"][0]["because"]["title"] == world.titles[world.because[0]]
                assert http.get("/health").json()["status"] == "ok"
        no_password = make_settings(tmp_path, redis={"url": protected.redis.url})
        wrong = make_settings(tmp_path, redis={"url": protected.redis.url, "password": "nope"})
        for settings in (no_password, wrong):
            with TestClient(create_app(settings, mode="inline"), raise_server_exceptions=False) as http:
                res = http.get(f"/recommendations/office/{world.user}")
                assert res.status_code == 503 and res.json()["error"] == "store_unavailable"
                assert "password" in res.json()["message"] or "authentication" in res.json()["message"]
                assert secret not in res.text and "nope" not in res.text


def _counts(text: str) -> dict[tuple[str, str], float]:
    return {
        (m.group(1), m.group(2)): float(m.group(3))
        for m in re.finditer(r'crossrec_api_request_seconds_count\{route="([^"]+)",status="(\d+)"\} (\S+)', text)
    }


def test_metrics_count_request_latency_by_route_template_and_status(world: Fixture, services_settings: Settings) -> None:
    with TestClient(create_app(services_settings)) as http:
        # One of each first, so every (route, status) series exists before the baseline is read;
        # the assertions are on deltas within this test.
        for url in (f"/recommendations/office/{world.user}", "/recommendations/garden/u", f"/users/{world.user}/history", "/nowhere"):
            http.get(url)
        before = _counts(http.get("/metrics").text)
        for _ in range(3):
            assert http.get(f"/recommendations/office/{world.user}").status_code == 200
        assert http.get("/recommendations/garden/u").status_code == 404
        assert http.get(f"/users/{world.user}/history").status_code == 200
        assert http.get("/nowhere").status_code == 404
        text = http.get("/metrics").text
    after = _counts(text)
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    assert delta[("/recommendations/{domain}/{user_id}", "200")] == 3.0
    assert delta[("/recommendations/{domain}/{user_id}", "404")] == 1.0
    assert delta[("/users/{user_id}/history", "200")] == 1.0
    assert delta[("unmatched", "404")] == 1.0
    assert delta[("/metrics", "200")] == 1.0
    assert world.user not in text  # the route template, never the user id (bounded cardinality)
    assert 'crossrec_api_request_seconds_bucket{le="0.001"' in text


def test_a_crash_on_the_hot_route_is_a_counted_plain_500(world: Fixture, services_settings: Settings) -> None:
    app = create_app(services_settings)

    async def crash(domain: str, user_id: str, query_string: bytes) -> tuple[int, bytes]:
        raise RuntimeError("boom")

    app.hot.render = crash  # type: ignore[attr-defined]
    with TestClient(app, raise_server_exceptions=False) as http:
        res = http.get(f"/recommendations/office/{world.user}")
        assert (res.status_code, res.text) == (500, "Internal Server Error")  # what Starlette answers elsewhere
        counts = _counts(http.get("/metrics").text)
    assert counts[("/recommendations/{domain}/{user_id}", "500")] >= 1.0
