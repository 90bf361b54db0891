"""The HTTP read API over the Redis contract, plus a small inspection page.

``create_app(settings)`` builds the FastAPI app; ``crossrec serve`` runs it under uvicorn. Every
route reads through :mod:`crossrec.client`, so the API and the Python client return the same
thing for the same user (``Recommendations.to_dict()`` *is* the response body).

Why the request path looks the way it does:

- responses are built as plain dicts and serialised once with msgspec's JSON encoder (about 9x
  cheaper than ``json.dumps`` here, UTF-8 rather than ``\\u`` escapes); the pydantic models below
  only document the shapes in the OpenAPI schema, they are not re-validated per request (that
  costs more than the Redis read);
- the hot route, ``GET /recommendations/{domain}/{user_id}``, is answered by ``_HotRoute`` in
  the app's own ``__call__``, before Starlette's middleware stack, router and FastAPI's request
  handler run: those layers cost more CPU than the Redis read, the validation and the JSON
  together. It matches with the route's own compiled regex and falls through to the framework
  for anything else (other methods, a ``root_path``), so the route stays declared
  (``/openapi.json``) and serves the same bytes through the same ``render`` function;
- in ``inline`` mode the hot route's ``GET``s go through :class:`crossrec.read_cache.ReadCache`
  (``serving.read_cache``), an in-process copy that Redis's ``CLIENT TRACKING`` invalidations
  keep exact (its docstring states the staleness window); a repeated read then costs no round
  trip, which on loopback is most of what remains of a request's CPU;
- request latency goes to ``crossrec_api_request_seconds{route,status}`` through a histogram
  kept in plain counters (``_LatencyHistogram``), exported on scrape;
- inputs are validated before Redis is touched, and every client error becomes a 4xx with a
  ``{"error", "message"}`` body that never echoes a huge input back; an unreachable Redis is a
  503 with the reason; nothing a caller can send produces a 500;
- the Redis backend is chosen by ``mode``: ``async`` (redis.asyncio on the event loop),
  ``thread`` (the sync pool in the thread pool, FastAPI's default for blocking code) or
  ``inline`` (the sync pool called on the loop). ``benchmarks/bench_serving.py`` measures all
  three. ``inline`` is the default because it costs the least CPU per request (about 30 % less
  than ``async`` here: redis.asyncio adds a loop round per command, the thread pool adds a thread
  hop). Its price: while Redis is slow, the worker waits with it, so the Redis socket timeout of
  the API is short (``redis_timeout_s``) and production runs several workers (``--workers``).
"""

# No `from __future__ import annotations`: FastAPI must resolve the route signatures at runtime,
# and the Domain enum is local to create_app.

import contextlib
import re
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from enum import Enum
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

import msgspec
import redis
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from crossrec.client import (
    MAX_HISTORY,
    AsyncRecClient,
    ReadContract,
    ClientError,
    ContractError,
    InvalidRequestError,
    RecClient,
    StoreUnavailableError,
    UnknownDomainError,
)
from crossrec.keys import SCHEMA_VERSION
from crossrec.read_cache import ReadCache, read_cache_for
from crossrec.redis_conn import redis_client
from crossrec.settings import Settings, get_settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
Mode = Literal["async", "thread", "inline"]


# -- response shapes (documentation of the contract in /openapi.json) --------------------------
class BecauseOut(BaseModel):
    item_id: str
    title: str | None
    domain: str | None
    text: str


class ItemOut(BaseModel):
    rank: int
    item_id: str
    score: float
    title: str | None
    category: str | None
    brand: str | None
    because: BecauseOut | None


class RecommendationsOut(BaseModel):
    user_id: str
    domain: str
    k: int
    fallback: bool
    source: str
    model_version: str | None
    route: str | None = None  # the routed model's route (model, item_knn, source_cooc, text_knn, popularity, blend); null: unrouted
    current_model: str | None
    updated_at: float | None
    age_s: float | None
    items: list[ItemOut]


class HistoryEntryOut(BaseModel):
    domain: str
    item_id: str
    event_type: str
    ts: float
    title: str | None


class HistoryOut(BaseModel):
    user_id: str
    skipped: int
    entries: list[HistoryEntryOut]


class UserFeaturesOut(BaseModel):
    user_id: str
    found: bool
    recent_items: list[str] | None
    recent_domains: list[str] | None
    n_events: int | None
    last_event_ts_ms: int | None
    user_vector: list[float] | None


class UsersOut(BaseModel):
    domain: str
    users: list[str]


class DomainsOut(BaseModel):
    domains: list[str]
    default_domain: str
    default_k: int
    max_k: int


class HealthOut(BaseModel):
    status: str
    redis: str
    model_version: str | None
    schema_version: int
    message: str | None = None


class ErrorOut(BaseModel):
    error: str
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown route"},
    422: {"model": ErrorOut, "description": "Invalid input (domain, k, user id, limit)"},
    503: {"model": ErrorOut, "description": "Redis is unreachable or refused us"},
}


# -- backends: the same client API behind three I/O strategies ---------------------------------
class _Backend:
    """Awaitable facade over a client, so the routes do not care how the I/O is done.

    ``inline`` issues every command from the one event-loop thread, one at a time, so it talks to
    Redis over a single dedicated connection (``redis_client(pooled=False)``) rather than the
    blocking pool: checking a connection out of the pool costs about 15 µs of CPU per command
    (a lock, a queue, and a non-blocking ``recv`` to make sure the socket holds no stale reply),
    on a request that costs about 150 µs in all. That connection is opened when Redis first
    answers: a server started while Redis is down serves its 503s through the pool (which
    connects lazily) and switches after the first successful call. Reconnects after a Redis
    restart are redis-py's (the single connection reconnects on its next command). ``thread``
    keeps the pool, since its calls run concurrently.
    """

    def __init__(self, settings: Settings, mode: Mode, **client_kwargs: Any) -> None:
        self.settings = settings
        self.mode = mode
        self.client_kwargs = client_kwargs
        self.sync: RecClient | None = None
        self.aio: AsyncRecClient | None = None
        self.single_connection = False  # inline: switched from the pool to one connection yet?
        self.cache: ReadCache | None = None  # inline: the hot read's tracked cache (settings.serving.read_cache)

    async def start(self) -> None:
        if self.mode == "async":
            self.aio = AsyncRecClient(self.settings, **self.client_kwargs)
        else:
            self.sync = RecClient(self.settings, **self.client_kwargs)
            if self.mode == "inline":
                self._use_single_connection()
                self.cache = read_cache_for(self.settings, socket_timeout=self.client_kwargs["socket_timeout"])

    def _use_single_connection(self) -> None:
        assert self.sync is not None
        try:
            single = redis_client(self.settings, socket_timeout=self.client_kwargs["socket_timeout"], pooled=False)
        except redis.RedisError:
            return  # unreachable or refusing us: stay on the pool, try again after a success
        pooled, self.sync.redis = self.sync.redis, single
        pooled.close()
        self.single_connection = True

    async def stop(self) -> None:
        if self.aio is not None:
            await self.aio.close()
        if self.sync is not None:
            self.sync.close()
        if self.cache is not None:
            self.cache.close()

    async def call_blocking(self, name: str, *args: Any) -> Any:
        """A call that may block for long (Feast's online read): off the event loop in every mode."""
        if self.aio is not None:
            return await getattr(self.aio, name)(*args)
        assert self.sync is not None, "backend not started (app lifespan did not run)"
        return await run_in_threadpool(getattr(self.sync, name), *args)

    async def get_body(self, user_id: str, domain: str, k: int) -> bytes:
        """The hot read: through the read cache when there is one (inline mode), else on the single
        inline connection, the client's method called directly."""
        if self.cache is not None:
            return self.sync.get_body(user_id, domain, k, cache=self.cache)  # type: ignore[union-attr]
        if self.single_connection:
            return self.sync.get_body(user_id, domain, k)  # type: ignore[union-attr]
        return await self.call("get_body", user_id, domain, k)  # type: ignore[no-any-return]

    async def call(self, name: str, *args: Any) -> Any:
        if self.aio is not None:
            return await getattr(self.aio, name)(*args)
        assert self.sync is not None, "backend not started (app lifespan did not run)"
        method = getattr(self.sync, name)
        if self.mode == "thread":
            return await run_in_threadpool(method, *args)
        result = method(*args)
        if not self.single_connection:
            self._use_single_connection()  # Redis answered: it is worth opening the connection now
        return result


_encode = msgspec.json.Encoder().encode  # one encoder, reused: no per-call set-up
JSON_TYPE = "application/json"


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type=JSON_TYPE)


def _error_body(status: int, error: str, message: str) -> tuple[int, bytes]:
    return status, _encode({"error": error, "message": message})


def _error(status: int, error: str, message: str) -> Response:
    return _json({"error": error, "message": message}, status)


def _client_error_body(exc: ClientError) -> tuple[int, bytes]:
    if isinstance(exc, UnknownDomainError):
        return _error_body(404, "unknown_domain", str(exc))
    if isinstance(exc, InvalidRequestError):
        return _error_body(422, "invalid_request", str(exc))
    if isinstance(exc, StoreUnavailableError):
        return _error_body(503, "store_unavailable", str(exc))
    if isinstance(exc, ContractError):
        return _error_body(500, "contract_violation", str(exc))
    return _error_body(500, "client_error", str(exc))


def _client_error(exc: ClientError) -> Response:
    status, body = _client_error_body(exc)
    return Response(body, status_code=status, media_type=JSON_TYPE)


_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: str.isdigit() also accepts "²"


def _k_param(query_string: bytes, default: int, limit: int) -> int:
    """``k`` from a raw query string: the common ``""`` and ``k=10`` without a parser, the rest
    through Starlette's ``QueryParams`` (what ``request.query_params`` is), so repeated keys,
    percent-escapes and ``+`` mean exactly what they mean on the framework path."""
    if not query_string:
        return default
    digits = query_string[2:]
    if query_string[:2] == b"k=" and 0 < len(digits) <= 9 and digits.isdigit():  # bytes.isdigit: ASCII only
        return int(digits)
    return _parse_int(QueryParams(query_string.decode("latin-1")).get("k"), "k", default, limit)


def _parse_int(raw: str | None, name: str, default: int, limit: int) -> int:
    """An integer query parameter; anything else is a 422 that quotes at most 20 characters."""
    if raw is None:
        return default
    text = raw.strip()
    if not _INTEGER.fullmatch(text):
        raise InvalidRequestError(f"{name} must be an integer between 1 and {limit}, got {raw[:20]!r}")
    if len(text) > 9:  # do not parse (or echo) absurdly long numbers
        raise InvalidRequestError(f"{name} must be an integer between 1 and {limit}, got a {len(text)}-digit number")
    return int(text)


def _validation_message(exc: RequestValidationError) -> str:
    """One readable line per problem, e.g. ``query k: Input should be less than or equal to 100``.

    The offending input is deliberately not echoed: it may be megabytes long or hold control bytes.
    """
    parts = []
    for err in exc.errors():
        where = " ".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# -- Prometheus: request latency by route and status --------------------------------------------
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_NAME = "crossrec_api_request_seconds"


class _LatencyHistogram:
    """``crossrec_api_request_seconds{route,status}``, counted in plain lists, exported on scrape.

    Why not ``prometheus_client.Histogram``: its ``observe`` takes two locks and walks the
    buckets (about 3 µs, and a ``labels()`` lookup more), on a request whose Python work is about
    15 µs. Every observation comes from the event-loop thread (the routes and the hot path run
    there, only blocking Redis calls go to the thread pool), so plain counters are safe; the cost
    is one ``bisect`` and two additions. ``collect`` builds the same exposition a Histogram would
    (cumulative ``_bucket{le}``, ``_count``, ``_sum``). The route label is the route's *template*
    (bounded cardinality), ``unmatched`` when no route took the request. Each uvicorn worker
    process keeps its own counts, so a scrape sees the worker that answered it.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = buckets
        self.series: dict[tuple[str, int], list[float]] = {}  # (route, status) -> [sum, n per bucket..., n over]

    def observe(self, route: str, status: int, seconds: float) -> None:
        counts = self.series.get((route, status))
        if counts is None:
            counts = self.series[(route, status)] = [0.0] * (len(self.bounds) + 2)
        counts[0] += seconds
        counts[1 + bisect_left(self.bounds, seconds)] += 1  # the first bucket with bound >= seconds

    def describe(self) -> list[Any]:
        return []  # collected lazily: the registry need not call collect() to learn the name

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        family = HistogramMetricFamily(
            LATENCY_NAME, "HTTP request latency of the serving API by route template and status", labels=["route", "status"]
        )
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for (route, status), counts in sorted(self.series.items()):
            family.add_metric([route, str(status)], list(zip(edges, accumulate(counts[1:]))), counts[0])
        yield family


class _Timed:
    """ASGI middleware that times every request the hot route did not answer (see ``_ServingAPI``)."""

    def __init__(self, app: ASGIApp, *, latency: _LatencyHistogram) -> None:
        self.app = app
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the router sets scope["route"]
            self.latency.observe(route, status, time.perf_counter() - started)


# -- the hot route, in front of the framework ---------------------------------------------------
Render = Callable[[str, str, bytes], Awaitable[tuple[int, bytes]]]
_JSON_HEADER = (b"content-type", b"application/json")
_CRASH = b"Internal Server Error"  # what Starlette's ServerErrorMiddleware answers to a crash


class _HotRoute:
    """``GET /recommendations/{domain}/{user_id}``, answered before the framework runs at all.

    Why: the read is one Redis ``GET`` whose stored bytes the body passes through; FastAPI's
    router, request handler and dependency solving, Starlette's middleware stack (each layer
    wraps ``send`` in a closure) and a lock-taking histogram cost more CPU than that read. So
    ``_ServingAPI.__call__`` hands this route's requests here, and this does only what they need:
    a full match of the route's own compiled ``path_regex`` (computed once), ``render`` (the same
    function the declared FastAPI route calls: same bytes), two ``send``s and one observation on
    the latency histogram with the route template resolved once. An unexpected exception is
    answered the way Starlette's ServerErrorMiddleware would (a plain 500) and re-raised for the
    server to log. Requests that carry a ``root_path`` (a mounted or proxied app) go to the
    framework, whose router strips it.
    """

    def __init__(self, *, pattern: re.Pattern[str], render: Render, route: str, latency: _LatencyHistogram) -> None:
        self.match = pattern.match
        self.render = render
        self.route = route
        self.latency = latency

    async def serve(self, m: re.Match[str], scope: Scope, send: Send) -> None:
        started = time.perf_counter()
        status = 500
        try:
            status, body = await self.render(m["domain"], m["user_id"], scope["query_string"])
            await send({
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), _JSON_HEADER],
            })
            await send({"type": "http.response.body", "body": body})
        except Exception:
            status = 500
            with contextlib.suppress(Exception):  # the response may have started already
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-length", b"%d" % len(_CRASH)), (b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": _CRASH})
            raise
        finally:
            self.latency.observe(self.route, status, time.perf_counter() - started)


class _ServingAPI(FastAPI):
    """FastAPI whose hot route is served before Starlette's middleware stack (see ``_HotRoute``)."""

    hot: _HotRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot
        if hot is not None and scope["type"] == "http" and scope["method"] == "GET" and not (scope.get("root_path") or self.root_path):
            m = hot.match(scope["path"])
            if m is not None:
                await hot.serve(m, scope, send)
                return
        await super().__call__(scope, receive, send)


# -- the app -----------------------------------------------------------------------------------
def create_app(
    settings: Settings | None = None,
    *,
    mode: Mode | None = None,
    max_k: int | None = None,
    max_id_len: int | None = None,
    pointer_ttl_s: float | None = None,
    redis_timeout_s: float | None = None,
) -> FastAPI:
    """Build the API for ``settings`` (the process settings when omitted, as under uvicorn --factory).

    Limits and the Redis mode come from ``settings.serving``; keyword arguments override them
    (tests and the benchmark compare modes in one process).
    """
    settings = settings or get_settings()
    cfg = settings.serving
    mode = mode or cfg.mode
    max_k = max_k or cfg.max_k
    max_id_len = max_id_len or cfg.max_id_len
    if mode not in ("async", "thread", "inline"):
        raise ValueError(f"mode must be async, thread or inline, not {mode!r}")
    backend = _Backend(
        settings,
        mode,
        max_k=max_k,
        max_id_len=max_id_len,
        pointer_ttl_s=cfg.pointer_ttl_s if pointer_ttl_s is None else pointer_ttl_s,
        socket_timeout=redis_timeout_s or cfg.redis_timeout_s,
    )
    # For the tooling routes an Enum puts the known domains in the OpenAPI schema (unknown: 422).
    domain_enum = Enum("Domain", {d: d for d in settings.domains}, type=str)  # type: ignore[misc]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    app = _ServingAPI(
        title="crossrec serving API",
        version=f"schema-v{SCHEMA_VERSION}",
        description=(
            "Cross-domain recommendations read from Redis. Users without a list yet get the "
            "domain's popular items with `fallback: true`. Each item names the history item "
            "most similar to it (`because`)."
        ),
        lifespan=lifespan,
    )
    app.state.backend = backend
    app.state.settings = settings

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_: Request, exc: RequestValidationError) -> Response:
        return _error(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail))

    @app.exception_handler(ClientError)
    async def _on_client(_: Request, exc: ClientError) -> Response:
        return _client_error(exc)

    user_path = PathParam(min_length=1, max_length=max_id_len, description="the user id of the event logs")

    contract = ReadContract(settings, max_k=max_k, max_id_len=max_id_len)  # validation only, no I/O

    @app.get(
        "/recommendations/{domain}/{user_id}",
        response_model=RecommendationsOut,
        responses={**ERRORS, 404: {"model": ErrorOut, "description": "Unknown domain or route"}},
        summary="A user's current top-k in a domain",
        # The hot path takes the raw Request and validates with the client's ReadContract, the
        # same rules the Python client applies; FastAPI's per-parameter machinery cost more CPU
        # than the Redis read. The parameters are declared here so /openapi.json still shows them.
        openapi_extra={
            "parameters": [
                {"name": "domain", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": list(settings.domains)}},
                {"name": "user_id", "in": "path", "required": True, "description": "the user id of the event logs",
                 "schema": {"type": "string", "minLength": 1, "maxLength": max_id_len}},
                {"name": "k", "in": "query", "required": False, "description": "how many items",
                 "schema": {"type": "integer", "minimum": 1, "maximum": max_k, "default": settings.top_k}},
            ]
        },
    )
    async def recommendations(request: Request) -> Response:
        # Reached only when the hot route steps aside (see _HotRoute); same bytes.
        status, body = await render(
            request.path_params["domain"], request.path_params["user_id"], request.scope["query_string"]
        )
        return Response(body, status_code=status, media_type=JSON_TYPE)

    async def render(domain: str, user_id: str, query_string: bytes) -> tuple[int, bytes]:
        """Status and JSON body of one recommendations request; a ClientError becomes its 4xx/503."""
        try:
            try:
                k = _k_param(query_string, settings.top_k, max_k)
            except InvalidRequestError:
                contract.check_domain(domain)  # a bad domain or user id is reported before a bad k
                contract.check_user(user_id)
                raise
            body = await backend.get_body(user_id, domain, k)  # validates domain, user id and k
        except ClientError as exc:
            return _client_error_body(exc)
        return 200, body

    @app.get("/users/{user_id}/history", response_model=HistoryOut, responses=ERRORS, summary="A user's recent events")
    async def history(
        user_id: str = user_path,
        limit: int = Query(20, ge=1, le=MAX_HISTORY, description="how many events, newest first"),
    ) -> Response:
        return _json((await backend.call("history", user_id, limit)).to_dict())

    @app.get(
        "/users/{user_id}/features", response_model=UserFeaturesOut, responses=ERRORS,
        summary="A user's fresh features from Feast's online store (pushed by the stream, materialised nightly)",
    )
    async def user_features(user_id: str = user_path) -> Response:
        return _json(await backend.call_blocking("user_features", user_id))

    @app.get("/users", response_model=UsersOut, responses=ERRORS, summary="Some users with a list (for the inspection page)")
    async def users(
        domain: domain_enum,  # type: ignore[valid-type]
        limit: int = Query(20, ge=1, le=1000),
    ) -> Response:
        return _json({"domain": domain.value, "users": await backend.call("users", domain.value, limit)})

    @app.get("/domains", response_model=DomainsOut, summary="The domains this API serves")
    async def domains() -> Response:
        default = settings.target_domain if settings.target_domain in settings.domains else settings.domains[0]
        return _json({"domains": list(settings.domains), "default_domain": default, "default_k": settings.top_k, "max_k": max_k})

    @app.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}}, summary="Redis reachable? Which model?")
    async def health() -> Response:
        try:
            await backend.call("ping")
            model = await backend.call("current_model")
        except StoreUnavailableError as exc:
            body = {"status": "unavailable", "redis": "down", "model_version": None,
                    "schema_version": SCHEMA_VERSION, "message": str(exc)}
            return _json(body, 503)
        return _json({"status": "ok", "redis": "up", "model_version": model, "schema_version": SCHEMA_VERSION,
                      "message": None if model else "no current model published yet"})

    latency = _LatencyHistogram()
    registry = CollectorRegistry()
    registry.register(latency)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    route = next(r for r in app.routes if isinstance(r, APIRoute) and r.endpoint is recommendations)
    app.hot = _HotRoute(pattern=route.path_regex, render=render, route=route.path, latency=latency)
    app.add_middleware(_Timed, latency=latency)
    return app
