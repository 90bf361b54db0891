"""Redis connections built from settings, so password, TLS and cluster handling live in one place.

With ``redis.cluster`` on, the clients are redis-py's ``RedisCluster`` (sync and asyncio): the URL
names one seed node and the client routes each command to the slot's node. Everything crossrec
writes or reads in one script or transaction is keys of one user (one hash tag), and pipelines
are non-transactional, so the cluster client splits them per node.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

from crossrec.settings import Settings


def redis_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection arguments for redis-py, including the secret (never logged)."""
    cfg = settings.redis
    kwargs: dict[str, Any] = {"decode_responses": False}
    if cfg.password is not None:
        kwargs["password"] = cfg.password.get_secret_value()
    if cfg.tls:
        kwargs["ssl_cert_reqs"] = "required"
        if cfg.tls_ca_cert:
            kwargs["ssl_ca_certs"] = str(cfg.tls_ca_cert)
    return kwargs


def redis_url(settings: Settings) -> str:
    """The configured URL, switched to ``rediss://`` when TLS is on."""
    url = settings.redis.url
    if settings.redis.tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://") :]
    return url


def _pool_kwargs(settings: Settings, socket_timeout: float | None) -> dict[str, Any]:
    """What the sync and asyncio blocking pools share: size, wait/socket timeouts, password, TLS."""
    return {
        "max_connections": settings.redis.max_connections,
        "timeout": socket_timeout,
        "socket_timeout": socket_timeout,
        **redis_kwargs(settings),
    }


def redis_client(
    settings: Settings, *, socket_timeout: float | None = 5.0, pooled: bool = True
) -> redis.Redis:  # or a RedisCluster, which offers the same commands
    """A client for the configured Redis; pooled clients share up to ``max_connections`` sockets.

    The pool is a *blocking* one: with more concurrent users than ``max_connections``, a caller
    waits (up to ``socket_timeout``) for a free connection instead of failing with "Too many
    connections", which is what a serving path under a burst needs.
    """
    kwargs = redis_kwargs(settings)
    if settings.redis.cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(  # type: ignore[return-value]
            redis_url(settings), socket_timeout=socket_timeout, max_connections=settings.redis.max_connections, **kwargs
        )
    if not pooled:
        return redis.Redis.from_url(
            redis_url(settings), socket_timeout=socket_timeout, single_connection_client=True, **kwargs
        )
    pool = redis.BlockingConnectionPool.from_url(redis_url(settings), **_pool_kwargs(settings, socket_timeout))
    return redis.Redis(connection_pool=pool)


def async_redis_client(settings: Settings, *, socket_timeout: float | None = 5.0) -> aioredis.Redis:
    """The asyncio twin of :func:`redis_client` (same URL, password, TLS, blocking pool)."""
    if settings.redis.cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(  # type: ignore[return-value]
            redis_url(settings), socket_timeout=socket_timeout, max_connections=settings.redis.max_connections,
            **redis_kwargs(settings),
        )
    pool = aioredis.BlockingConnectionPool.from_url(redis_url(settings), **_pool_kwargs(settings, socket_timeout))
    return aioredis.Redis(connection_pool=pool)
