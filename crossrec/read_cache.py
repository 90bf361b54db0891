"""An in-process cache of Redis ``GET`` replies, kept correct by Redis's key tracking.

Why: the API's hot read is one ``GET`` whose bytes are passed through, and on loopback that one
round trip costs the API process about twice what the rest of the request costs (socket write,
wake-up, read, parse). Lists change when a user acts or a publish runs, far less often than they
are read, so most reads can be answered from memory, provided no answer is ever older than what
Redis holds, beyond the window stated below.

How it stays correct: the cache reads through its *own* connection, in RESP3, with
``CLIENT TRACKING ON`` (default mode, no ``REDIRECT``). Redis then remembers every key this
connection has read and, when any client changes one (a write, ``DEL``, expiry, eviction), pushes
an ``invalidate`` message with the key on this same connection; ``FLUSHDB``/``FLUSHALL`` push
``invalidate`` with no key, which drops everything. One connection rather than a data connection
plus a ``__redis__:invalidate`` subscriber: pushes and replies travel in one ordered stream, so
there is no second socket whose loss or reconnect could go unnoticed (with ``REDIRECT``, a RESP2
client is not told when the subscriber dies). The rules, and why each holds:

1. **Pending invalidations are applied before a value is served.** Before every lookup the socket
   is polled without blocking (one ``poll(2)``); anything readable is read and applied (pushes
   remove entries). The parser's buffer holds no complete unread message between calls (every
   read drains it with ``can_read``), so a poll of the socket is enough to see everything that
   has arrived. *Staleness bound*: Redis queues the push while it executes the write and sends
   it in the same event-loop pass as the writer's reply (the writer's reply first). A read that
   starts after the writer got its reply can therefore still be served the old value only until
   that push reaches this socket: the time Redis takes between the two ``write(2)`` calls plus
   delivery, microseconds on loopback (``benchmarks/bench_serving.py`` measures it), longer when
   Redis is descheduled between the two writes (milliseconds on a busy host) or the writer is
   closer to Redis than we are. Once the writer has had any *later* reply from Redis, the push is
   in our socket (Redis wrote it before reading the writer's next command), so the next read is
   fresh, unless our socket's receive buffer was full of unread pushes (thousands of them).
2. **A value invalidated while its GET was in flight is not stored.** The key is marked in flight
   before the ``GET`` is sent; a push naming it (or a flush, or a reconnect) clears the mark,
   and the reply is stored only if the mark survived. After the reply is read, the pushes that
   already arrived are drained *before* that decision, so an invalidation that came with or just
   after the reply cannot be consumed and then overwritten by the stale reply.
3. **Tracking lost means cache flushed and bypassed.** Every (re)connect of the connection runs
   :meth:`ReadCache._on_connect` (redis-py's ``register_connect_callback``): it flushes the cache
   and re-enables tracking; only a ``+OK`` to ``CLIENT TRACKING ON`` turns the cache on again. A
   closed socket (Redis restarted, ``CLIENT KILL``) reads as end-of-file at the next poll: the
   cache is flushed, the connection dropped, and the read goes to Redis (which reconnects). While
   tracking is not confirmed (refused by ACL, not yet connected), every read goes to Redis and
   nothing is stored. What cannot be seen is a connection that hangs without closing (a silent
   network partition): the cache serves what it has until the socket reports an error.
4. **Bounded memory.** At most ``max_entries`` keys and ``max_bytes`` of keys plus values, least
   recently used evicted first; a value larger than ``max_bytes`` is never stored. Redis keeps
   its own tracking table (one entry per key this connection read and nobody changed since),
   bounded by its ``tracking-table-max-keys``.
5. **Deletion and flushes invalidate** (rule 1: Redis pushes them like writes). A missing key is
   cached as ``None`` and tracked like any other, so a key created later is seen.

Scope: one thread (the API's ``inline`` mode calls it from the event loop); not for Redis Cluster,
whose keys live on several nodes (``redis.cluster``: the API does not build a cache and reads every
time). Requires Redis >= 6 (RESP3 and ``CLIENT TRACKING``).
"""

from __future__ import annotations

import logging
import select
from collections import OrderedDict
from typing import Any

import redis

from crossrec.redis_conn import redis_kwargs, redis_url
from crossrec.settings import Settings

log = logging.getLogger(__name__)

_APPLIED = object()  # what the push handler returns, so a drain can tell a push from anything else
_ABSENT = object()
_ENTRY_OVERHEAD = 64  # bytes charged per entry beyond key and value (dict slot, objects), roughly
_CONN_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class ReadCache:
    """``get(key)``: the value of ``key`` as Redis holds it, from memory when tracking allows."""

    def __init__(self, settings: Settings, *, max_entries: int, max_bytes: int, socket_timeout: float | None) -> None:
        if settings.redis.cluster:
            raise ValueError("ReadCache tracks one Redis server; with redis.cluster on, read without it")
        pool = redis.ConnectionPool.from_url(
            redis_url(settings), protocol=3, socket_timeout=socket_timeout, **redis_kwargs(settings)
        )
        self._conn = pool.make_connection()
        self._conn.register_connect_callback(self._on_connect)  # kept as a weak method: no cycle
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes | None] = OrderedDict()
        self._bytes = 0
        self._tracking = False  # CLIENT TRACKING ON confirmed on the current socket
        self._poll = select.poll()
        self._sock: Any = None  # the socket tracking was turned on for (redis-py's connection._sock)
        self._inflight: str | None = None  # the key whose GET is in flight
        self._inflight_valid = False  # cleared by an invalidation of that key, a flush or a reconnect
        self.hits = self.misses = self.reconnects = 0

    # -- the read -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        if self._tracking and self._conn._sock is self._sock:  # type: ignore[attr-defined]  # still the tracked socket
            if self._poll.poll(0):  # pushes, or end-of-file, arrived since the last call
                self._drain()
            value = self._entries.get(key, _ABSENT)
            if value is not _ABSENT and self._tracking:
                self._entries.move_to_end(key)
                self.hits += 1
                return value  # type: ignore[return-value]
        return self._fetch(key)

    def _fetch(self, key: str) -> bytes | None:
        """One ``GET`` on the tracked connection; the reply is stored only if still valid (rule 2)."""
        conn = self._conn
        self.misses += 1
        self._inflight, self._inflight_valid = key, True
        try:
            conn.send_command("GET", key)  # a reconnect here runs _on_connect (flush, tracking on)
            value = conn.read_response()  # pushes queued before the reply are applied on the way
            if self._tracking:
                self._drain_buffered()  # pushes that came with or right after the reply
        except _CONN_ERRORS as exc:
            self._lost()
            if isinstance(exc, redis.RedisError):
                raise
            raise redis.ConnectionError(str(exc)) from exc
        finally:
            valid, self._inflight = self._inflight_valid, None
        if valid and self._tracking:
            self._store(key, value)
        return value  # type: ignore[no-any-return]

    def _store(self, key: str, value: bytes | None) -> None:
        size = _size(key, value)
        if size > self.max_bytes:
            return
        self._discard(key)
        self._entries[key] = value
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            evicted, evicted_value = self._entries.popitem(last=False)
            self._bytes -= _size(evicted, evicted_value)

    # -- invalidation ---------------------------------------------------------------------------
    def _drain(self) -> None:
        """Apply every push that has arrived; a closed or confused connection flushes (rule 3)."""
        try:
            self._drain_buffered()
        except _CONN_ERRORS:
            self._lost()

    def _drain_buffered(self) -> None:
        conn = self._conn
        while conn.can_read(0):  # the parser's buffer first, then a non-blocking read
            if conn.read_response(push_request=True) is not _APPLIED:
                raise redis.ConnectionError("unexpected reply on the tracking connection")

    def _on_invalidate(self, message: list[Any]) -> object:
        """RESP3 ``invalidate`` push: ``[b"invalidate", [key, ...]]``, or ``None`` for a flush."""
        keys = message[1] if len(message) > 1 else None
        if keys is None:
            self.flush()
            return _APPLIED
        for raw in keys:
            key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            self._discard(key)
            if key == self._inflight:
                self._inflight_valid = False
        return _APPLIED

    def _discard(self, key: str) -> None:
        value = self._entries.pop(key, _ABSENT)
        if value is not _ABSENT:
            self._bytes -= _size(key, value)  # type: ignore[arg-type]

    def flush(self) -> None:
        """Forget every entry (and the value in flight, if any)."""
        self._entries.clear()
        self._bytes = 0
        self._inflight_valid = False

    # -- the connection -------------------------------------------------------------------------
    def _on_connect(self, conn: redis.Connection) -> None:
        """Every (re)connect: flush, then turn tracking on; the cache serves only after ``+OK``."""
        self._tracking = False
        self.flush()
        self.reconnects += 1
        conn._get_parser().set_invalidation_push_handler(self._on_invalidate)  # type: ignore[union-attr]  # RESP3 parsers
        try:
            conn.send_command("CLIENT", "TRACKING", "ON")
            reply = conn.read_response()
        except redis.ResponseError as exc:  # e.g. an ACL without CLIENT: serve, uncached
            log.warning("Redis refused CLIENT TRACKING (%s); the read cache is bypassed on this connection", exc)
            return
        except _CONN_ERRORS:
            conn.disconnect()
            raise
        self._sock = conn._sock  # type: ignore[attr-defined]
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)
        self._tracking = reply in (b"OK", "OK")

    def _lost(self) -> None:
        """The connection failed: flush, stop serving from memory, reconnect on the next read."""
        self._tracking = False
        self.flush()
        self._conn.disconnect()

    def invalidation_pending(self) -> bool:
        """True when data (pushes, or end-of-file) waits on the tracked socket (for measurements)."""
        return self._tracking and bool(self._poll.poll(0))

    @property
    def tracking(self) -> bool:
        """True while the cache may serve: tracking confirmed on a live connection."""
        return self._tracking

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes charged to the entries (keys, values and a per-entry overhead), at most ``max_bytes``."""
        return self._bytes

    def close(self) -> None:
        self._lost()  # the same steps: nothing is served from memory after it


def _size(key: str, value: bytes | None) -> int:
    return len(key) + (len(value) if value is not None else 0) + _ENTRY_OVERHEAD


def read_cache_for(settings: Settings, *, socket_timeout: float | None) -> ReadCache | None:
    """The API's cache per ``settings.serving``; None when it is off or Redis is a cluster."""
    cfg = settings.serving
    if not cfg.read_cache or settings.redis.cluster:
        return None
    return ReadCache(
        settings, max_entries=cfg.read_cache_max_entries, max_bytes=cfg.read_cache_max_bytes, socket_timeout=socket_timeout
    )
