"""The Python read client of the Redis contract: what downstream services (and our API) call.

``RecClient(settings).get(user_id, domain, k)`` returns the user's current top-k with scores,
titles, the model version that produced them, how fresh they are, and an explanation per item
("because you bought <title>"). A user without a personal list yet gets the domain's popular
items with ``fallback=True``, so a caller never has to special-case new users.

The hot path is one ``MGET`` (the list and the current-model pointer) on a pooled connection;
the display data of the items and of the history items that explain them comes from a short-TTL
in-memory cache, and only what is missing there costs a second round trip (one pipeline of
``HMGET`` s). The key names and value formats come from :mod:`crossrec.keys` only.

``AsyncRecClient`` is the same contract over ``redis.asyncio`` for event-loop servers; the pure
parts (validation, which keys to read, how to assemble a response) live in ``ReadContract`` so
the two clients cannot drift apart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from crossrec.keys import HistoryEvent, KeySchema, RecItem, RecList
from crossrec.publish import ITEM_FIELDS
from crossrec.redis_conn import async_redis_client, redis_client
from crossrec.settings import Settings, mask_url_password

MAX_K = 100  # largest k a caller may ask for (lists are published with settings.top_k items)
MAX_ID_LEN = 128  # longest user id accepted; longer ids are rejected, never truncated
MAX_HISTORY = 50
DISPLAY_TTL_S = 30.0  # how long a title may be served from memory after it changed in Redis
DISPLAY_CACHE_SIZE = 100_000
Row = tuple[str | None, str | None, str | None]  # title, category, brand of one item
_NO_ROW: Row = (None, None, None)
_FIELDS = list(ITEM_FIELDS)


class DisplayCache:
    """A small TTL cache of item display rows (title, category, brand).

    Titles change rarely but are read on every request; keeping them in memory for a few seconds
    turns the hot path into a single round trip. Only items that exist are cached, so an item
    published a moment ago is visible on the next read; a changed title shows after at most
    ``ttl_s``. Plain dict operations are atomic under the GIL, so threads may share one cache.
    """

    def __init__(self, ttl_s: float, max_entries: int = DISPLAY_CACHE_SIZE) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._rows: dict[str, tuple[float, Row]] = {}

    def get(self, key: str, now: float) -> Row | None:
        hit = self._rows.get(key)
        if hit is None or hit[0] < now:
            return None
        return hit[1]

    def put(self, key: str, row: Row) -> None:
        if len(self._rows) >= self.max_entries:
            # Drop the oldest tenth (dicts keep insertion order) rather than everything at once.
            for old in list(self._rows)[: max(1, self.max_entries // 10)]:
                self._rows.pop(old, None)
        self._rows[key] = (time.monotonic() + self.ttl_s, row)

    def clear(self) -> None:
        self._rows.clear()


# -- errors: each one says what to do about it -------------------------------------------------
class ClientError(Exception):
    """Base class of everything the client raises on purpose."""


class InvalidRequestError(ClientError, ValueError):
    """The caller asked for something malformed (bad k, empty or oversized user id)."""


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
        return f"because you bought {self.title or self.item_id}"


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


# -- the pure part, shared by both clients -----------------------------------------------------
def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return text or None  # writers store "" for a missing field


class ReadContract:
    """Validation, key planning and response assembly: everything but the I/O."""

    def __init__(
        self,
        schema: KeySchema,
        domains: Sequence[str],
        *,
        max_k: int = MAX_K,
        max_id_len: int = MAX_ID_LEN,
        display_ttl_s: float = DISPLAY_TTL_S,
    ) -> None:
        self.schema = schema
        self.domains = tuple(domains)
        self.max_k = max_k
        self.max_id_len = max_id_len
        self.cache = DisplayCache(display_ttl_s) if display_ttl_s > 0 else None
        self._probes = {d: tuple(x for x in self.domains if x != d) + (d,) for d in self.domains}

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

    def check_k(self, k: int, limit: int | None = None, name: str = "k") -> None:
        limit = self.max_k if limit is None else limit
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
            raise InvalidRequestError(f"{name} must be an integer between 1 and {limit}, got {k!r}")

    def check(self, user_id: str, domain: str, k: int) -> None:
        self.check_domain(domain)
        self.check_user(user_id)
        self.check_k(k)

    # parsing and planning ------------------------------------------------------------------
    @staticmethod
    def parse_list(raw: bytes | str | None, key: str) -> RecList | None:
        if raw is None:
            return None
        try:
            return RecList.from_json(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ContractError(f"value at {key} does not follow the key schema: {exc}") from exc

    def item_keys(self, domain: str, items: Sequence[RecItem]) -> list[str]:
        """Display hashes that may be needed: each item in its domain, each explaining item in
        every domain.

        ``RecItem.because`` carries an id but not a domain (explanations are usually cross-domain),
        so it is looked up in each known domain within the same pipeline; the first hit wins.
        """
        keys = [self.schema.item(domain, it.item_id) for it in items]
        for because in dict.fromkeys(it.because for it in items if it.because):
            keys.extend(self.schema.item(d, because) for d in self._probes[domain])
        return keys

    def _probe_order(self, domain: str) -> tuple[str, ...]:
        # The other domains first: a cross-domain explanation is the common and interesting case.
        return self._probes[domain]

    def plan(self, domain: str, items: Sequence[RecItem]) -> tuple[dict[str, Row], list[str]]:
        """Split the display data a response needs into what the cache has and what to read."""
        if self.cache is None:
            return {}, self.item_keys(domain, items)
        now = time.monotonic()
        item_key = self.schema.item
        known: dict[str, Row] = {}
        fetch: list[str] = []
        for it in items:
            key = item_key(domain, it.item_id)
            row = self.cache.get(key, now)
            if row is None:
                fetch.append(key)
            else:
                known[key] = row
        for because in {it.because: None for it in items if it.because}:
            probes = [item_key(d, because) for d in self._probes[domain]]
            hits = [(key, row) for key in probes if (row := self.cache.get(key, now)) is not None]
            if hits:
                known.update(hits)
            else:
                fetch.extend(probes)
        return known, fetch

    def merge(self, known: dict[str, Row], fetched_keys: Sequence[str], rows: Sequence[Any]) -> dict[str, Row]:
        """Decode freshly read rows into ``known`` (and the cache, when the item exists)."""
        for key, raw in zip(fetched_keys, rows):
            row = (_text(raw[0]), _text(raw[1]), _text(raw[2]))
            known[key] = row
            if self.cache is not None and row[0] is not None:
                self.cache.put(key, row)
        return known

    def assemble(
        self,
        user_id: str,
        domain: str,
        recs: RecList | None,
        items: Sequence[RecItem],
        fallback: bool,
        current_model: bytes | str | None,
        display: dict[str, Row],
    ) -> Recommendations:
        item_key = self.schema.item
        explanations: dict[str, Explanation] = {}
        out: list[Recommendation] = []
        for rank, it in enumerate(items, start=1):
            title, category, brand = display.get(item_key(domain, it.item_id), _NO_ROW)
            because = None
            if it.because:
                because = explanations.get(it.because)
                if because is None:
                    because = explanations[it.because] = self._explanation(domain, it.because, display)
            out.append(Recommendation(rank, it.item_id, it.score, title, category, brand, because))
        return Recommendations(
            user_id=user_id,
            domain=domain,
            items=out,
            model_version=recs.model_version if recs else None,
            current_model=_text(current_model),
            updated_at=recs.updated_at if recs else None,
            source=recs.source if recs else "none",
            fallback=fallback,
        )

    def _explanation(self, domain: str, because: str, display: dict[str, Row]) -> Explanation:
        for d in self._probes[domain]:
            row = display.get(self.schema.item(d, because))
            if row is not None and row[0] is not None:
                return Explanation(item_id=because, title=row[0], domain=d)
        return Explanation(item_id=because, title=None, domain=None)

    def parse_history(self, user_id: str, raw: Sequence[bytes]) -> tuple[list[HistoryEvent], int]:
        events: list[HistoryEvent] = []
        skipped = 0
        for entry in raw:
            try:
                events.append(HistoryEvent.from_json(entry))
            except (ValueError, TypeError):
                skipped += 1
        return events, skipped

    def history_keys(self, events: Sequence[HistoryEvent]) -> list[str]:
        return [self.schema.item(e.domain, e.item_id) for e in events]


@contextlib.contextmanager
def store_errors(settings_url: str) -> Iterator[None]:
    """Turn redis-py's exceptions into ones that say what went wrong and what to do."""
    where = mask_url_password(settings_url)
    try:
        yield
    except redis.AuthenticationError as exc:
        raise StoreAuthError(
            f"Redis at {where} refused authentication ({_first_line(exc)}); "
            "set the password in settings (CROSSREC_REDIS__PASSWORD)"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailableError(f"Redis at {where} is unreachable: {_first_line(exc)}") from None
    except redis.ResponseError as exc:
        if str(exc).startswith(("NOAUTH", "WRONGPASS")):
            raise StoreAuthError(f"Redis at {where} requires a password: {_first_line(exc)}") from None
        raise


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


# -- the synchronous client --------------------------------------------------------------------


class RecClient:
    """Reads recommendations and histories over a connection pool (thread-safe)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        max_k: int = MAX_K,
        max_id_len: int = MAX_ID_LEN,
        socket_timeout: float = 2.0,
        display_ttl_s: float = DISPLAY_TTL_S,
    ) -> None:
        self.settings = settings
        self.contract = ReadContract(
            KeySchema(settings.key_prefix),
            settings.domains,
            max_k=max_k,
            max_id_len=max_id_len,
            display_ttl_s=display_ttl_s,
        )
        self.redis = client if client is not None else redis_client(settings, socket_timeout=socket_timeout)

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> RecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, user_id: str, domain: str, k: int = 10) -> Recommendations:
        """The user's top-k in ``domain``; popular items with ``fallback=True`` if they have none."""
        c = self.contract
        c.check(user_id, domain, k)
        recs_key = c.schema.recs(domain, user_id)
        with store_errors(self.settings.redis.url):
            raw, current = cast(list[Any], self.redis.mget(recs_key, c.schema.current_model()))
            fallback = raw is None
            if fallback:
                recs_key = c.schema.popular(domain)
                raw = cast(Any, self.redis.get(recs_key))
            recs = c.parse_list(raw, recs_key)
            items = recs.items[:k] if recs else []
            display, keys = c.plan(domain, items)
            if keys:
                pipe = self.redis.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, _FIELDS)
                c.merge(display, keys, pipe.execute())
        return c.assemble(user_id, domain, recs, items, fallback, current, display)

    def history(self, user_id: str, limit: int = 20) -> History:
        """The user's most recent events (all domains), newest first, with titles."""
        c = self.contract
        c.check_user(user_id)
        c.check_k(limit, MAX_HISTORY, name="limit")
        with store_errors(self.settings.redis.url):
            raw = cast(list[bytes], self.redis.lrange(c.schema.history(user_id), 0, limit - 1))
            events, skipped = c.parse_history(user_id, raw)
            titles: list[Any] = []
            if events:
                pipe = self.redis.pipeline(transaction=False)
                for key in c.history_keys(events):
                    pipe.hget(key, "title")
                titles = pipe.execute()
        entries = [HistoryEntry(e.domain, e.item_id, e.event_type, e.ts, _text(t)) for e, t in zip(events, titles)]
        return History(user_id, entries, skipped)

    def users(self, domain: str, limit: int = 20) -> list[str]:
        """Some users with a list in ``domain`` (SCAN, bounded): for tooling, not for hot paths."""
        c = self.contract
        c.check_domain(domain)
        c.check_k(limit, 1000, name="limit")
        prefix = c.schema.recs(domain, "")
        found: list[str] = []
        with store_errors(self.settings.redis.url):
            for key in self.redis.scan_iter(match=c.schema.recs_pattern(domain), count=500):
                found.append(key.decode()[len(prefix) :])
                if len(found) >= limit:
                    break
        return sorted(found)

    def current_model(self) -> str | None:
        with store_errors(self.settings.redis.url):
            return _text(cast(Any, self.redis.get(self.contract.schema.current_model())))

    def ping(self) -> bool:
        with store_errors(self.settings.redis.url):
            return bool(self.redis.ping())


# -- the asyncio client ------------------------------------------------------------------------


class AsyncRecClient:
    """``RecClient`` for asyncio code; create it inside the running event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: aioredis.Redis | None = None,
        max_k: int = MAX_K,
        max_id_len: int = MAX_ID_LEN,
        socket_timeout: float = 2.0,
        display_ttl_s: float = DISPLAY_TTL_S,
    ) -> None:
        self.settings = settings
        self.contract = ReadContract(
            KeySchema(settings.key_prefix),
            settings.domains,
            max_k=max_k,
            max_id_len=max_id_len,
            display_ttl_s=display_ttl_s,
        )
        self.redis = client if client is not None else async_redis_client(settings, socket_timeout=socket_timeout)

    async def close(self) -> None:
        await self.redis.aclose()

    async def get(self, user_id: str, domain: str, k: int = 10) -> Recommendations:
        c = self.contract
        c.check(user_id, domain, k)
        recs_key = c.schema.recs(domain, user_id)
        with store_errors(self.settings.redis.url):
            raw, current = await self.redis.mget(recs_key, c.schema.current_model())
            fallback = raw is None
            if fallback:
                recs_key = c.schema.popular(domain)
                raw = await self.redis.get(recs_key)
            recs = c.parse_list(raw, recs_key)
            items = recs.items[:k] if recs else []
            display, keys = c.plan(domain, items)
            if keys:
                pipe = self.redis.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, _FIELDS)
                c.merge(display, keys, await pipe.execute())
        return c.assemble(user_id, domain, recs, items, fallback, current, display)

    async def history(self, user_id: str, limit: int = 20) -> History:
        c = self.contract
        c.check_user(user_id)
        c.check_k(limit, MAX_HISTORY, name="limit")
        with store_errors(self.settings.redis.url):
            # redis-py annotates sync and asyncio results as one union, hence the ignores.
            raw = await self.redis.lrange(c.schema.history(user_id), 0, limit - 1)  # type: ignore[misc]
            events, skipped = c.parse_history(user_id, raw)
            titles: list[Any] = []
            if events:
                pipe = self.redis.pipeline(transaction=False)
                for key in c.history_keys(events):
                    pipe.hget(key, "title")
                titles = await pipe.execute()
        entries = [HistoryEntry(e.domain, e.item_id, e.event_type, e.ts, _text(t)) for e, t in zip(events, titles)]
        return History(user_id, entries, skipped)

    async def users(self, domain: str, limit: int = 20) -> list[str]:
        c = self.contract
        c.check_domain(domain)
        c.check_k(limit, 1000, name="limit")
        prefix = c.schema.recs(domain, "")
        found: list[str] = []
        with store_errors(self.settings.redis.url):
            async for key in self.redis.scan_iter(match=c.schema.recs_pattern(domain), count=500):
                found.append(key.decode()[len(prefix) :])
                if len(found) >= limit:
                    break
        return sorted(found)

    async def current_model(self) -> str | None:
        with store_errors(self.settings.redis.url):
            return _text(await self.redis.get(self.contract.schema.current_model()))

    async def ping(self) -> bool:
        with store_errors(self.settings.redis.url):
            return bool(await self.redis.ping())  # type: ignore[misc]
