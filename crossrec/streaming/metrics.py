"""Prometheus metrics of the consumer, on their own registry so that several consumers in one
process (tests, the benchmark) never collide, served on ``streaming.metrics_port`` at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Batch stages, in the order a batch runs them (the benchmark reports the same split).
STAGES = ("poll", "validate", "apply", "score", "write", "push", "commit")

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class ConsumerMetrics:
    """Counters, histograms and gauges of one consumer (names prefixed ``crossrec_stream_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter("crossrec_stream_consumed", "Messages polled", ["topic"], registry=r)
        self.applied = Counter("crossrec_stream_applied", "Events appended to a history", registry=r)
        self.duplicates = Counter("crossrec_stream_duplicates", "Events already applied (skipped)", registry=r)
        self.items_added = Counter("crossrec_stream_items_added", "Catalogue items stored and scorable", registry=r)
        self.lists_written = Counter("crossrec_stream_lists_written", "Top-K lists written", registry=r)
        self.dead_lettered = Counter("crossrec_stream_dead_lettered", "Messages sent to the DLQ", ["reason"], registry=r)
        self.feature_pushes = Counter(
            "crossrec_stream_feature_pushes", "Batches' user-feature pushes to Feast, by outcome", ["outcome"], registry=r
        )
        self.dependency_errors = Counter(
            "crossrec_stream_dependency_errors", "Batch attempts failed by a dependency", ["dependency"], registry=r
        )
        self.batch_seconds = Histogram(
            "crossrec_stream_batch_seconds", "Poll-to-commit time of a non-empty batch", registry=r, buckets=_LATENCY_BUCKETS
        )
        self.stage_seconds = Histogram(
            "crossrec_stream_stage_seconds", "Time per batch stage", ["stage"], registry=r, buckets=_LATENCY_BUCKETS
        )
        self.freshness_seconds = Histogram(
            "crossrec_stream_freshness_seconds",
            "Kafka record timestamp (produce time) to the user's list write",
            registry=r,
            buckets=_FRESHNESS_BUCKETS,
        )
        self.lag = Gauge("crossrec_stream_lag", "End offset minus consumed position", ["topic", "partition"], registry=r)
        self.dependency_up = Gauge("crossrec_stream_dependency_up", "1 when the dependency answered last time", ["dependency"], registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics in a daemon thread (prometheus_client's own WSGI server)."""
        start_http_server(port, addr=addr, registry=self.registry)
