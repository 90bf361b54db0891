"""The kafka-python settings of a member of the stream's consumer group, in one place.

Why: `crossrec stream` and the benchmark's bare loops (`benchmarks/bench_stream.py`,
`benchmarks/stream_receiver.py`) must poll the broker the same way, or the bare loops stop being
the floor they claim to be.
"""

from __future__ import annotations

from typing import Any

from crossrec.settings import Settings


def group_member_kwargs(settings: Settings, max_poll_records: int | None = None) -> dict[str, Any]:
    """Connection, group, offset, poll-size, fetch-wait, liveness and metadata settings; offsets
    are committed only when the caller says (after its work is durable), from the earliest offset."""
    cfg = settings.streaming
    return {
        **settings.kafka.client_kwargs(),
        "group_id": settings.kafka.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": max_poll_records or cfg.max_poll_records,
        "fetch_max_wait_ms": cfg.fetch_max_wait_ms,
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
        "metadata_max_age_ms": cfg.metadata_max_age_ms,
    }
