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
        ends = client.end_offsets(partitions, timeout_ms=timeout_ms) if partitions else {}
        return [
            PartitionLag(tp.topic, tp.partition, client.committed(tp, timeout_ms=timeout_ms), ends[tp])
            for tp in partitions
        ]
    finally:
        client.close(autocommit=False)
