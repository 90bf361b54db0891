"""Which errors belong to a dependency (retry the batch) and which to one message (dead-letter it).

A dependency error (Redis or the broker not answering) says nothing about the batch: the same
batch is retried with exponential backoff until the dependency is back, and nothing is committed
meanwhile. Any other exception raised while handling one message is that message's fault: it is
dead-lettered with a reason and the partition goes on. Telling the two apart is the whole job of
this module, so the consumer has a single place to change when a client library adds an error.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis.exceptions as rx
from kafka.errors import KafkaError


class PushWorkerLost(RuntimeError):
    """The Feast push's child process died before it answered (``streaming.push_process``); a
    new child redoes the push, and nothing it carried is committed before that."""


# Every error that means "Redis, the broker or the push child is not (fully) there", never "this
# message is bad".
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    rx.ConnectionError,  # includes refused / reset connections and AuthenticationError
    rx.TimeoutError,
    rx.BusyLoadingError,
    rx.ReadOnlyError,  # a replica promoted mid-flight
    rx.ClusterDownError,
    rx.TryAgainError,
    KafkaError,  # the consumer and the DLQ producer: timeouts, no broker, coordinator moves
    PushWorkerLost,
)

DLQ_VALUE_LIMIT = 64 * 1024  # bytes of the original value kept in a dead letter (the rest is cut)


def dependency_name(exc: BaseException) -> str:
    """``redis``, ``kafka`` or ``push_child``, for logs and the dependency-error metric."""
    if isinstance(exc, PushWorkerLost):
        return "push_child"
    return "redis" if isinstance(exc, rx.RedisError) else "kafka"


def dead_letter_payload(record: Any, reason: str, detail: str = "") -> bytes:
    """A dead letter: where the message came from, why it was refused, and its original bytes.

    The value is kept as text when it is UTF-8 and as base64 otherwise, cut to
    ``DLQ_VALUE_LIMIT`` bytes so that a refused oversize message can itself be sent.
    """
    raw: bytes = record.value or b""
    kept = raw[:DLQ_VALUE_LIMIT]
    payload: dict[str, Any] = {
        "reason": reason,
        "detail": detail[:500],
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": record.key.decode("utf-8", "replace") if record.key else None,
        "value_bytes": len(raw),
        "truncated": len(raw) > len(kept),
    }
    try:
        payload["value"] = kept.decode("utf-8") if record.value is not None else None
    except UnicodeDecodeError:
        payload["value"] = None
        payload["value_b64"] = base64.b64encode(kept).decode()
    return json.dumps(payload).encode()
