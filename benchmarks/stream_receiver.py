"""A kafka-python consumer that does no work: the broker chain's own produce -> receive latency.

    python benchmarks/stream_receiver.py COUNT OUT_JSON [--work-ms W] [--ready FILE]

`bench_stream.py` runs it beside its open-loop producer as it runs a `crossrec stream` consumer: a
separate process whose settings come from the same environment. It measures the floor that any
consumer's freshness sits on: producer client, broker and consumer client, nothing done per
batch. With ``--work-ms`` it sleeps that long after every non-empty poll, standing in for a
consumer's per-batch work without using a core, so what the loop's shape costs (events waiting
for the batch in progress, then for their own) can be told apart from what the work's CPU costs.
Latency is taken when the batch's "work" ends, minus the Kafka record timestamp, like the
consumer's list-write freshness.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from crossrec.settings import Settings  # noqa: E402
from crossrec.streaming.group import group_member_kwargs  # noqa: E402


def group_consumer(settings: Settings) -> Any:
    """A kafka-python consumer of the events topic polling as a `crossrec stream` member does
    (``group_member_kwargs``), committing only when told (the benchmark's bare loops)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(settings.kafka.events_topic, **group_member_kwargs(settings))


def receive(settings: Settings, count: int, work_ms: float, ready: Path | None, timeout_s: float = 300) -> list[float]:
    """Latencies (ms) of the events topic's records, batch by batch until at least ``count`` came
    (or ``timeout_s`` passed), consumed with the stream's group settings."""
    cfg = settings.streaming
    consumer = group_consumer(settings)
    latencies: list[float] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(latencies) < count and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=cfg.poll_timeout_ms)
            if ready is not None and not ready.exists() and consumer.assignment():
                ready.touch()  # the group gave us the partitions: the feed can start
            records = [record for part in batch.values() for record in part]
            if not records:
                continue
            if work_ms:
                time.sleep(work_ms / 1000)
            done_ms = time.time() * 1000
            latencies += [done_ms - record.timestamp for record in records]
    finally:
        consumer.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--work-ms", type=float, default=0.0, help="sleep this long after each non-empty poll")
    parser.add_argument("--ready", type=Path, help="touched once the consumer has its partitions")
    args = parser.parse_args()
    settings = Settings()
    args.out.write_text(json.dumps(receive(settings, args.count, args.work_ms, args.ready)))


if __name__ == "__main__":
    main()
