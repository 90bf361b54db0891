"""What an on-call engineer reads: the consumer's Prometheus endpoint and `crossrec stream status`
(real broker and Redis; the metrics are scraped over HTTP as Prometheus would)."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest
from conftest import free_port
from streaming_support import REPO_ROOT, CatalogueScorer, catalogue_settings, make_event, produce, stream_env

from crossrec.settings import Settings
from crossrec.streaming.consumer import RecsConsumer

pytestmark = pytest.mark.integration


@pytest.fixture()
def settings(services_settings: Settings, redis_client) -> Settings:
    return catalogue_settings(services_settings, redis_client)


def _value(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_metrics_endpoint_counts_what_the_consumer_did(settings: Settings) -> None:
    produce(settings, settings.kafka.events_topic, [
        make_event("u1", "office", "o1", 1_600_000_000_000, event_id="e1"),
        make_event("u1", "office", "o1", 1_600_000_000_000, event_id="e1"),  # a duplicate
        make_event("u2", "office", "o2", 1_600_000_000_001, event_id="e2"),
        b"{broken",
        make_event("}u3", "office", "o3", 1_600_000_000_002, event_id="e3"),  # an empty Redis Cluster hash tag
    ])
    consumer = RecsConsumer(settings, lambda: CatalogueScorer("m1", ["o1", "o2", "o3"]), poll_timeout_ms=200)
    port = free_port()
    consumer.serve_metrics(port)
    consumer.cfg = consumer.cfg.model_copy(update={"probe_interval_s": 0.1})
    try:
        consumer.run(max_events=5, max_seconds=30)
        consumer._probe()  # the lag gauge after the last commit
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        consumer.close()
    topic = settings.kafka.events_topic
    assert _value(text, "crossrec_stream_consumed_total", f'{{topic="{topic}"}}') == 5
    assert _value(text, "crossrec_stream_applied_total") == 2
    assert _value(text, "crossrec_stream_duplicates_total") == 1
    assert _value(text, "crossrec_stream_dead_lettered_total", '{reason="malformed_json"}') == 1
    assert _value(text, "crossrec_stream_dead_lettered_total", '{reason="bad_user_id"}') == 1
    assert _value(text, "crossrec_stream_lists_written_total") == 2
    assert _value(text, "crossrec_stream_freshness_seconds_count") == 3  # one per event that reached a list
    assert _value(text, "crossrec_stream_batch_seconds_count") >= 1
    assert _value(text, "crossrec_stream_stage_seconds_count", '{stage="score"}') >= 1
    lags = re.findall(rf'^crossrec_stream_lag{{partition="\d",topic="{topic}"}} (\S+)$', text, re.M)
    assert lags and all(float(v) == 0 for v in lags)  # all consumed and committed
    assert _value(text, "crossrec_stream_dependency_up", '{dependency="redis"}') == 1


def test_stream_status_prints_committed_end_and_lag_per_partition(settings: Settings) -> None:
    produce(settings, settings.kafka.events_topic, [make_event(f"u{i}", "office", "o1", 1_600_000_000_000 + i) for i in range(7)])
    env = stream_env(settings)
    status = subprocess.run([sys.executable, "-m", "crossrec.cli", "stream", "status"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "total lag: 7" in status.stdout  # nothing committed yet: every event is lag

    consumer = RecsConsumer(settings, lambda: CatalogueScorer("m1", ["o1", "o2"]), poll_timeout_ms=200)
    try:
        consumer.run(max_events=7, max_seconds=30)
    finally:
        consumer.close()
    status = subprocess.run([sys.executable, "-m", "crossrec.cli", "stream", "status"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "total lag: 0" in status.stdout, status.stdout
    assert settings.kafka.events_topic in status.stdout
