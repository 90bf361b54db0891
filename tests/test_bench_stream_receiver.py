"""The benchmark's broker-chain receiver against the real broker: what it reports is what it claims."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

from streaming_support import REPO_ROOT, isolated_settings, make_event, produce, wait_for

from crossrec.settings import Settings


def _receive():
    spec = importlib.util.spec_from_file_location("stream_receiver", REPO_ROOT / "benchmarks" / "stream_receiver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.receive


def _events(n: int) -> list[dict]:
    return [make_event(f"u{i}", "office", f"o{i}", 1_700_000_000_000 + i) for i in range(n)]


def test_receiver_counts_the_records_already_there_when_it_joins(services_settings: Settings) -> None:
    settings = isolated_settings(services_settings)
    produce(settings, settings.kafka.events_topic, _events(30))
    assert len(_receive()(settings, 30, work_ms=0.0, ready=None, timeout_s=60)) == 30


def test_receiver_latency_runs_from_the_produce_to_the_end_of_its_batch_work(services_settings: Settings, tmp_path: Path) -> None:
    settings = isolated_settings(services_settings)
    receive, ready, out = _receive(), tmp_path / "ready", []
    worker = threading.Thread(target=lambda: out.extend(receive(settings, 20, work_ms=60.0, ready=ready, timeout_s=60)))
    worker.start()
    wait_for(ready.exists, 60, "the receiver's partitions")
    sent_ms = time.time() * 1000
    produce(settings, settings.kafka.events_topic, _events(20))
    worker.join(timeout=90)

    assert len(out) == 20
    # every record waited for its batch's 60 ms of "work" (the chain alone takes a few ms here),
    # and none is older than the time since it was sent
    assert min(out) >= 60.0
    assert max(out) <= time.time() * 1000 - sent_ms
