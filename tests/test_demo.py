"""The demo's log cut: the newest share of events goes live, the rest to the nightly pipeline."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from crossrec.demo import nightly_steps, split_log_by_time


def _read(path: Path) -> list[str]:
    with gzip.open(path, "rt") as handle:
        return handle.read().splitlines()


def test_cut_sends_the_newest_events_live_and_keeps_every_line(tmp_path: Path) -> None:
    events = [{"user_id": f"u{i % 3}", "ts": 1_600_000_000_000 + i * 1000, "i": i} for i in range(100)]
    lines = [json.dumps(e) for e in reversed(events)] + ["{broken", json.dumps({"user_id": "x", "ts": "not a time"})]
    source = tmp_path / "events.jsonl.gz"
    with gzip.open(source, "wt") as handle:
        handle.write("\n".join(lines) + "\n")

    nightly_dir, live, n_nightly, n_live = split_log_by_time(source, tmp_path / "demo", 0.1)

    nightly_lines, live_lines = _read(nightly_dir / "events.jsonl.gz"), _read(live)
    assert (n_nightly, n_live) == (len(nightly_lines), len(live_lines))
    assert n_nightly + n_live == len(lines)  # nothing lost
    live_i = sorted(json.loads(line)["i"] for line in live_lines)
    expected_live = len(lines) - int(len(lines) * 0.9)  # the cut is the 90th percentile of timestamps
    assert live_i == list(range(100 - expected_live, 100))  # the newest events, and only those
    assert "{broken" in nightly_lines  # unreadable lines go where cleaning quarantines them


def test_no_airflow_steps_match_the_dag_order() -> None:
    assert [s[0] for s in nightly_steps()] == ["clean", "embed", "features", "features", "features", "adapt", "publish"]
