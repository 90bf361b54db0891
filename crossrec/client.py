"""The Python read client of the Redis contract: what downstream services (and our API) call.

``RecClient(settings).get(user_id, domain, k)`` returns the user's current top-k with scores,
titles, the model version that produced them, how fresh they are, and an explanation per item
("because you bought <title>"). A user without a personal list yet gets the domain's popular
items with ``fallback=True``, so a caller never has to special-case new users.

Lists are stored ready to serve (:mod:`crossrec.keys`), so the hot path is one ``GET`` on a
pooled connection; ``current_model`` (the pointer serving now) comes from an in-process copy
refreshed every ``pointer_ttl_s`` (one more ``GET`` per second at most, not per read).
``get_body`` returns the HTTP API's JSON bytes for the same read: the stored items are passed
through as they are (msgspec ``Raw``), only the read-time fields are added; given a
:class:`~crossrec.read_cache.ReadCache` (the API's ``inline`` mode), its ``GET``s are answered by
that tracked in-process cache instead of the connection.

Each read is written once, as a *plan*: a generator that yields the Redis commands it needs and
receives their replies (``ReadContract``). ``RecClient`` runs plans on a blocking connection,
``AsyncRecClient`` on ``redis.asyncio``; neither repeats the read logic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import msgspec
import redis
import redis.asyncio as aioredis

from crossrec.keys import SCHEMA_VERSION, HistoryEvent, KeySchema, because_text, user_id_problem
from crossrec.redis_conn import async_redis_client, redis_client
from crossrec.settings import Settings, mask_url_password

if TYPE_CHECKING:
    from crossrec.read_cache import ReadCache

MAX_K = 100  # largest k a caller may ask for (lists are published with settings.top_k items)
MAX_ID_LEN = 128  # longest user id accepted; longer ids are rejected, never truncated
MAX_HISTORY = 50
POINTER_TTL_S = 1.0  # how stale `current_model` in a read may be


# -- errors: each one says what to do about it -------------------------------------------------
class ClientError(Exception):
    """Base class of everything the client raises on purpose."""


class InvalidRequestError(ClientError, ValueError):
    """The caller asked for something malformed (bad k; an empty, oversized or ``}``-leading user id)."""


class UnknownDomainError(InvalidRequestError):
    """The domain is not one of ``settings.domains``."""


class StoreUnavailableError(ClientError):
    """Redis cannot be reached (down, wrong address, timeout)."""


class StoreAuthError(StoreUnavailableError):
    """Redis refused us: a password is required, or the configured one is wrong."""


class ContractError(ClientError):
    """A stored value does not follow the key schema (wrong schema version, corrupt JSON)."""


# -- results -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Explanation:
    """The history item most similar to a recommended item."""

    item_id: str
    title: str | None
    domain: str | None

    @property
    def text(self) -> str:
        return because_text(self.title, self.item_id)


@dataclass(slots=True)
class Recommendation:
    rank: int
    item_id: str
    score: float
    title: str | None
    category: str | None
    brand: str | None
    because: Explanation | None


@dataclass(frozen=True)
class Recommendations:
    user_id: str
    domain: str
    items: list[Recommendation]
    model_version: str | None  # the model that produced this list
    current_model: str | None  # the model serving now (differs while a publish is in flight)
    updated_at: float | None  # unix seconds the list was written
    source: str  # batch | stream | popular | none
    fallback: bool  # True when the user has no list yet and these are popular items
    read_at: float = field(default_factory=time.time)
    route: str | None = None  # the routed model's route that produced the list; None: unrouted

    @property
    def age_s(self) -> float | None:
        """Freshness: seconds between the write and this read."""
        return None if self.updated_at is None else max(0.0, self.read_at - self.updated_at)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the HTTP API (also handy for logging)."""
        return {
            "user_id": self.user_id,
            "domain": self.domain,
            "k": len(self.items),
            "fallback": self.fallback,
            "source": self.source,
            "model_version": self.model_version,
            "route": self.route,
            "current_model": self.current_model,
            "updated_at": self.updated_at,
            "age_s": None if self.age_s is None else round(self.age_s, 3),
            "items": [
                {
                    "rank": r.rank,
                    "item_id": r.item_id,
                    "score": r.score,
                    "title": r.title,
                    "category": r.category,
                    "brand": r.brand,
                    # Built by hand, not with dataclasses.asdict: this runs on every request and
                    # asdict's recursive deep copy cost more than the Redis read.
                    "because": None
                    if r.because is None
                    else {
                        "item_id": r.because.item_id,
                        "title": r.because.title,
                        "domain": r.because.domain,
                        "text": r.because.text,
                    },
                }
                for r in self.items
            ],
    }


@dataclass(frozen=True)
class HistoryEntry:
    domain: str
    item_id: str
    event_type: str
    ts: float
    title: str | None


@dataclass(frozen=True)
class History:
    user_id: str
    entries: list[HistoryEntry]  # newest first
    skipped: int  # stored entries that could not be parsed (reported, not hidden)

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "skipped": self.skipped, "entries": [asdict(e) for e in self.entries]}


# -- the stored value, decoded ------------------------------------------------------------------
class _Stored(msgspec.Struct):
    """A stored list with its items left as raw JSON (the API passes them through)."""

    v: int
    source: str
    model_version: str
    updated_at: float
    items: list[msgspec.Raw]
    route: str | None = None  # absent in lists of unrouted models and older writers


class _Because(msgspec.Struct):
    item_id: str
    title: str | None = None
    domain: str | None = None


class _Item(msgspec.Struct):
    rank: int
    item_id: str
    score: float
    title: str | None = None
    category: str | None = None
    brand: str | None = None
    because: _Because | None = None


_decode_stored = msgspec.json.Decoder(_Stored).decode
_decode_item = msgspec.json.Decoder(_Item).decode
_encode = msgspec.json.Encoder().encode

Cmd = tuple[Any, ...]  # ("get", key) | ("lrange", key, start, stop) | ("hget_many", keys, field) | ("scan", pattern, limit) | ("ping",)
T = TypeVar("T")


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return text or None  # writers store "" for a missing field


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x, on every read
class _Read:
    """What one recommendations read found in Redis."""

    stored: _Stored | None
    fallback: bool
    current_model: str | None
    read_at: float


class ReadContract:
    """Validation and every read, as plans; subclasses only run the commands a plan yields."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_k: int = MAX_K,
        max_id_len: int = MAX_ID_LEN,
        pointer_ttl_s: float = POINTER_TTL_S,
    ) -> None:
        self.settings = settings
        self.schema = KeySchema(settings.key_prefix)
        self.domains = tuple(settings.domains)
        self.max_k = max_k
        self.max_id_len = max_id_len
        self.pointer_ttl_s = pointer_ttl_s
        self._pointer: tuple[float, str | None] = (float("-inf"), None)  # (expires, version)
        self._features: Any = None  # the Feast store, opened on first use

    # validation ----------------------------------------------------------------------------
    def check_domain(self, domain: str) -> None:
        if domain not in self.domains:
            known = ", ".join(self.domains)
            raise UnknownDomainError(f"unknown domain {domain[:64]!r}; known domains: {known}")

    def check_user(self, user_id: str) -> None:
        if not isinstance(user_id, str) or not user_id:
            raise InvalidRequestError("user_id must be a non-empty string")
        if len(user_id) > self.max_id_len:
            raise InvalidRequestError(f"user_id is {len(user_id)} characters long; the limit is {self.max_id_len}")
        if not user_id.isprintable():
            raise InvalidRequestError("user_id must not contain control characters")
        problem = user_id_problem(user_id)  # such a user's keys would not share one cluster slot
        if problem is not None:
            raise InvalidRequestError(problem)

    def check_k(self, k: int, limit: int | None = None, name: str = "k") -> None:
        limit = self.max_k if limit is None else limit
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
            raise InvalidRequestError(f"{name} must be an integer between 1 and {limit}, got {k!r}")

    def check(self, user_id: str, domain: str, k: int) -> None:
        self.check_domain(domain)
        self.check_user(user_id)
        self.check_k(k)

    # plans ---------------------------------------------------------------------------------
    def _plan_read(self, user_id: str, domain: str, k: int) -> Generator[Cmd, Any, _Read]:
        self.check(user_id, domain, k)
        key = self.schema.recs(domain, user_id)
        raw = yield ("get", key)
        fallback = raw is None
        if fallback:
            key = self.schema.popular(domain)
            raw = yield ("get", key)
        now = time.monotonic()
        expires, current = self._pointer
        if expires < now:
            current = _text((yield ("get", self.schema.current_model())))
            self._pointer = (now + self.pointer_ttl_s, current)
        return _Read(self._parse(raw, key), fallback, current, time.time())

    @staticmethod
    def _parse(raw: bytes | None, key: str) -> _Stored | None:
        if raw is None:
            return None
        try:
            stored = _decode_stored(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ContractError(f"value at {key} does not follow the key schema: {exc}") from exc
        if stored.v != SCHEMA_VERSION:
            raise ContractError(f"value at {key} does not follow the key schema: unsupported schema version {stored.v!r}")
        return stored

    def _plan_get(self, user_id: str, domain: str, k: int) -> Generator[Cmd, Any, Recommendations]:
        read = yield from self._plan_read(user_id, domain, k)
        stored = read.stored
        items: list[Recommendation] = []
        if stored is not None:
            for raw in stored.items[:k]:
                try:
                    it = _decode_item(raw)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise ContractError(f"an item of {user_id!r}'s {domain} list does not follow the key schema: {exc}") from exc
                b = it.because
                because = None if b is None else Explanation(b.item_id, b.title, b.domain)
                items.append(Recommendation(it.rank, it.item_id, it.score, it.title, it.category, it.brand, because))
        return Recommendations(
            user_id=user_id,
            domain=domain,
            items=items,
            model_version=stored.model_version if stored else None,
            current_model=read.current_model,
            updated_at=stored.updated_at if stored else None,
            source=stored.source if stored else "none",
            fallback=read.fallback,
            read_at=read.read_at,
            route=stored.route if stored else None,
        )

    def _plan_get_body(self, user_id: str, domain: str, k: int) -> Generator[Cmd, Any, bytes]:
        """The API's JSON body of ``get``: the same fields as ``Recommendations.to_dict()``."""
        read = yield from self._plan_read(user_id, domain, k)
        stored = read.stored
        items = stored.items[:k] if stored else []
        updated = stored.updated_at if stored else None
        return _encode({
            "user_id": user_id,
            "domain": domain,
            "k": len(items),
            "fallback": read.fallback,
            "source": stored.source if stored else "none",
            "model_version": stored.model_version if stored else None,
            "route": stored.route if stored else None,
            "current_model": read.current_model,
            "updated_at": updated,
            "age_s": None if updated is None else round(max(0.0, read.read_at - updated), 3),
            "items": items,
        })

    def _plan_history(self, user_id: str, limit: int) -> Generator[Cmd, Any, History]:
        self.check_user(user_id)
        self.check_k(limit, MAX_HISTORY, name="limit")
        raw = yield ("lrange", self.schema.history(user_id), 0, limit - 1)
        events: list[HistoryEvent] = []
        skipped = 0
        for entry in raw:
            try:
                events.append(HistoryEvent.from_json(entry))
            except (ValueError, TypeError):
                skipped += 1
        titles = (yield ("hget_many", [self.schema.item(e.domain, e.item_id) for e in events], "title")) if events else []
        entries = [HistoryEntry(e.domain, e.item_id, e.event_type, e.ts, _text(t)) for e, t in zip(events, titles)]
        return History(user_id, entries, skipped)

    def _plan_users(self, domain: str, limit: int) -> Generator[Cmd, Any, list[str]]:
        self.check_domain(domain)
        self.check_k(limit, 1000, name="limit")
        keys = yield ("scan", self.schema.recs_pattern(domain), limit)
        return sorted(self.schema.user_of_recs_key(domain, key) for key in keys)

    def _plan_current_model(self) -> Generator[Cmd, Any, str | None]:
        return _text((yield ("get", self.schema.current_model())))

    def _plan_ping(self) -> Generator[Cmd, Any, bool]:
        return bool((yield ("ping",)))

    # user features (Feast's online store, not a Redis command of ours) --------------------
    def _user_features_sync(self, user_id: str) -> dict[str, Any]:
        self.check_user(user_id)
        from crossrec.features.online import online_user_features
        from crossrec.features.store import feature_store

        if self._features is None:
            self._features = feature_store(self.settings)
        try:
            values = online_user_features(self._features, [user_id])[user_id]
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Feast's online store is unreachable: {_first_line(exc)}") from None
        return {"user_id": user_id, "found": any(v is not None for v in values.values()), **values}


def _raise_store_error(exc: redis.RedisError, settings_url: str) -> NoReturn:
    """Raise the error that says what went wrong with Redis and what to do (``exc`` if none fits).

    Called from the drivers' ``except`` clause rather than wrapping every read in a context
    manager: entering a generator-based context manager costs about 1.5 µs, a tenth of the API's
    Python work per request.
    """
    where = mask_url_password(settings_url)
    if isinstance(exc, redis.AuthenticationError):
        raise StoreAuthError(
            f"Redis at {where} refused authentication ({_first_line(exc)}); "
            "set the password in settings (CROSSREC_REDIS__PASSWORD)"
        ) from None
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        raise StoreUnavailableError(f"Redis at {where} is unreachable: {_first_line(exc)}") from None
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS")):
        raise StoreAuthError(f"Redis at {where} requires a password: {_first_line(exc)}") from None
    raise exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


# -- the synchronous client --------------------------------------------------------------------
class RecClient(ReadContract):
    """Runs the read plans over a blocking connection pool (thread-safe)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        max_k: int = MAX_K,
        max_id_len: int = MAX_ID_LEN,
        socket_timeout: float = 2.0,
        pointer_ttl_s: float = POINTER_TTL_S,
    ) -> None:
        super().__init__(settings, max_k=max_k, max_id_len=max_id_len, pointer_ttl_s=pointer_ttl_s)
        self.redis = client if client is not None else redis_client(settings, socket_timeout=socket_timeout)

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> RecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, plan: Generator[Cmd, Any, T], cache: ReadCache | None = None) -> T:
        r = self.redis
        try:
            cmd = next(plan)
            while True:
                op = cmd[0]
                if op == "get":
                    reply: Any = self._get(r, cmd[1]) if cache is None else cache.get(cmd[1])
                elif op == "hget_many":
                    pipe = r.pipeline(transaction=False)
                    for key in cmd[1]:
                        pipe.hget(key, cmd[2])
                    reply = pipe.execute()
                elif op == "scan":
                    reply = []
                    for key in r.scan_iter(match=cmd[1], count=500):
                        reply.append(key)
                        if len(reply) >= cmd[2]:
                            break
                else:
                    reply = getattr(r, op)(*cmd[1:])
                cmd = plan.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except redis.RedisError as exc:
            _raise_store_error(exc, self.settings.redis.url)

    @staticmethod
    def _get(r: Any, key: str) -> Any:
        """``GET`` on the hot path. On a single-connection client (the API's ``inline`` mode: one
        thread, one command at a time) the command goes straight to the connection, skipping
        redis-py's per-command dispatch (retry wrapper, lock, metrics hooks): about 10 µs of a
        ~25 µs call here. A failure drops the connection (the next command reconnects) and
        surfaces as the same redis-py error, so errors read the same as on the pooled path. Like
        any single-connection client, such a client is for one thread at a time."""
        conn = getattr(r, "connection", None)
        if conn is None:
            return r.get(key)
        try:
            conn.send_command("GET", key)
            return conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            raise
        except OSError as exc:
            conn.disconnect()
            raise redis.ConnectionError(str(exc)) from exc

    def get(self, user_id: str, domain: str, k: int = 10) -> Recommendations:
        """The user's top-k in ``domain``; popular items with ``fallback=True`` if they have none."""
        return self._run(self._plan_get(user_id, domain, k))

    def get_body(self, user_id: str, domain: str, k: int = 10, *, cache: ReadCache | None = None) -> bytes:
        """``get`` as the API's JSON bytes (stored items passed through).

        With ``cache`` (one thread only), its ``GET``s are answered by the tracked read cache
        (:mod:`crossrec.read_cache`) instead of this client's connection."""
        return self._run(self._plan_get_body(user_id, domain, k), cache)

    def history(self, user_id: str, limit: int = 20) -> History:
        """The user's most recent events (all domains), newest first, with titles."""
        return self._run(self._plan_history(user_id, limit))

    def users(self, domain: str, limit: int = 20) -> list[str]:
        """Some users with a list in ``domain`` (SCAN, bounded): for tooling, not for hot paths."""
        return self._run(self._plan_users(domain, limit))

    def current_model(self) -> str | None:
        return self._run(self._plan_current_model())

    def ping(self) -> bool:
        return self._run(self._plan_ping())

    def user_features(self, user_id: str) -> dict[str, Any]:
        """The user's fresh features from Feast's online store (``user_features`` view)."""
        return self._user_features_sync(user_id)


# -- the asyncio client ------------------------------------------------------------------------
class AsyncRecClient(ReadContract):
    """``RecClient`` for asyncio code; create it inside the running event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: aioredis.Redis | None = None,
        max_k: int = MAX_K,
        max_id_len: int = MAX_ID_LEN,
        socket_timeout: float = 2.0,
        pointer_ttl_s: float = POINTER_TTL_S,
    ) -> None:
        super().__init__(settings, max_k=max_k, max_id_len=max_id_len, pointer_ttl_s=pointer_ttl_s)
        self.redis = client if client is not None else async_redis_client(settings, socket_timeout=socket_timeout)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _run(self, plan: Generator[Cmd, Any, T]) -> T:
        r = self.redis
        try:
            cmd = next(plan)
            while True:
                op = cmd[0]
                if op == "hget_many":
                    pipe = r.pipeline(transaction=False)
                    for key in cmd[1]:
                        pipe.hget(key, cmd[2])
                    reply: Any = await pipe.execute()
                elif op == "scan":
                    reply = []
                    async for key in r.scan_iter(match=cmd[1], count=500):
                        reply.append(key)
                        if len(reply) >= cmd[2]:
                            break
                else:
                    reply = await getattr(r, op)(*cmd[1:])
                cmd = plan.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except redis.RedisError as exc:
            _raise_store_error(exc, self.settings.redis.url)

    async def get(self, user_id: str, domain: str, k: int = 10) -> Recommendations:
        return await self._run(self._plan_get(user_id, domain, k))

    async def get_body(self, user_id: str, domain: str, k: int = 10) -> bytes:
        return await self._run(self._plan_get_body(user_id, domain, k))

    async def history(self, user_id: str, limit: int = 20) -> History:
        return await self._run(self._plan_history(user_id, limit))

    async def users(self, domain: str, limit: int = 20) -> list[str]:
        return await self._run(self._plan_users(domain, limit))

    async def current_model(self) -> str | None:
        return await self._run(self._plan_current_model())

    async def ping(self) -> bool:
        return await self._run(self._plan_ping())

    async def user_features(self, user_id: str) -> dict[str, Any]:
        # Feast's online read is blocking: keep it off the event loop.
        return await asyncio.to_thread(self._user_features_sync, user_id)
