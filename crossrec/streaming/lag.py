"""The consumer group's lag per partition: committed offset against the partition's end.

This reads what the group *committed* (what survives a restart), not what a member has polled,
so it is the number an on-call engineer needs: how many events no list reflects durably yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossrec.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here (it starts from the beginning)
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


def group_lag(settings: Settings, topics: list[str] | None = None, timeout_ms: int = 5000) -> list[PartitionLag]:
    """Lag of ``kafka.consumer_group`` on the events and items topics (a read-only client: it
    joins no group and commits nothing)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    kafka = settings.kafka
    client = KafkaConsumer(
        **kafka.client_kwargs(), group_id=kafka.consumer_group, enable_auto_commit=False, client_id="crossrec-lag"
    )
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics or [kafka.events_topic, kafka.items_topic]
            for p in sorted(client.partitions_for_topic(topic) or ())
        ]
        ends = high_watermarks(client, partitions, timeout_ms) if partitions else {}
        return [
            PartitionLag(tp.topic, tp.partition, client.committed(tp, timeout_ms=timeout_ms), ends[tp])
            for tp in partitions
        ]
    finally:
        client.close(autocommit=False)


def high_watermarks(client, partitions: list, timeout_ms: int = 5000) -> dict:
    """Each partition's high watermark (the offset the next produced record gets).

    ``end_offsets`` (ListOffsets) would be the one-call answer, but the local Tansu broker answers
    it with the base offset of the partition's last record batch, short of the real end by up
    to a batch. A fetch response carries the true high watermark on both Kafka and Tansu, so this
    seeks each partition to what ListOffsets says and fetches once (at most one batch is read;
    an assigned, group-less client commits nothing).
    """
    import time

    client.assign(partitions)
    for tp, offset in client.end_offsets(partitions, timeout_ms=timeout_ms).items():
        client.seek(tp, offset)
    deadline = time.monotonic() + timeout_ms / 1000
    marks: dict = {}
    while len(marks) < len(partitions) and time.monotonic() < deadline:
        client.poll(timeout_ms=200, max_records=1, update_offsets=False)
        marks = {tp: hw for tp in partitions if (hw := client.highwater(tp)) is not None}
    missing = [tp for tp in partitions if tp not in marks]
    if missing:
        raise TimeoutError(f"no high watermark for {missing} within {timeout_ms} ms")
    return marks
