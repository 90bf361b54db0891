"""The end-to-end demo: what README's first command runs on the embedded defaults.

The shipped log is cut at a point in time: everything before it is "last night's data" that the
nightly pipeline (the Airflow DAG: clean, data-quality gate, embed, features, train candidates,
the promote/keep branch, publish, run summary) learns from;
everything after it is replayed onto Kafka as live traffic for the consumer. The report then shows
what each stage produced and how live events changed users' lists.

Each stage runs as its own `crossrec` process, exactly as the DAG and an operator run it, so the
demo exercises the same entry points as production (and one stage's memory is freed before the
next starts).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from crossrec.console import console
from crossrec.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "crossrec_nightly_retrain"


@dataclass
class DemoResult:
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    events_nightly: int = 0
    events_live: int = 0
    consumer: dict = field(default_factory=dict)
    live_users: list[str] = field(default_factory=list)
    lists_before: dict[str, list[str]] = field(default_factory=dict)  # user -> item titles, pre-stream
    ds: str = ""  # the nightly run's logical date


def crossrec_bin() -> str:
    return str(Path(sys.executable).with_name("crossrec"))


def split_log_by_time(events_file: Path, out_dir: Path, live_fraction: float) -> tuple[Path, Path, int, int]:
    """Write the events before / after the cut (the newest ``live_fraction`` of timestamps)."""
    from crossrec.cleaning.normalize import parse_ts_to_ms

    with gzip.open(events_file, "rt", encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    stamps = []
    for line in lines:
        try:
            stamps.append(parse_ts_to_ms(json.loads(line).get("ts")) or 0)
        except (json.JSONDecodeError, AttributeError):
            stamps.append(0)  # unreadable lines go to the nightly side, where cleaning quarantines them
    cut = sorted(stamps)[int(len(stamps) * (1.0 - live_fraction))]
    nightly_dir, live_dir = out_dir / "raw", out_dir / "live"
    nightly_dir.mkdir(parents=True, exist_ok=True)
    live_dir.mkdir(parents=True, exist_ok=True)
    nightly, live = nightly_dir / "events.jsonl.gz", live_dir / "events.jsonl.gz"
    n_nightly = n_live = 0
    with gzip.open(nightly, "wt", encoding="utf-8") as before, gzip.open(live, "wt", encoding="utf-8") as after:
        for line, ts in zip(lines, stamps):
            if ts < cut:
                before.write(line)
                n_nightly += 1
            else:
                after.write(line)
                n_live += 1
    return nightly_dir, live, n_nightly, n_live


def run_stage(name: str, argv: list[str], env: dict[str, str], result: DemoResult, log_dir: Path) -> None:
    console.rule(f"[bold]{name}")
    started = time.monotonic()
    log_file = log_dir / f"{name.replace(' ', '_')}.log"
    with open(log_file, "w") as log:
        proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    result.stages[name] = time.monotonic() - started
    tail = log_file.read_text(errors="replace").splitlines()[-15:]
    if proc.returncode != 0:
        console.print("\n".join(tail))
        raise SystemExit(f"stage '{name}' failed (exit {proc.returncode}); full log: {log_file}")
    console.print(f"{name}: done in {result.stages[name]:.0f}s (log: {log_file})")


def run_demo(
    settings: Settings, *, live_fraction: float = 0.01, use_airflow: bool = True, scheduler: bool = True
) -> DemoResult:
    """``use_airflow``: the nightly DAG under Airflow, with a running scheduler (``scheduler``, what
    production does) or ``airflow dags test`` (one process); else the same commands one by one."""
    from datetime import datetime, timezone

    result = DemoResult(ds=datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    work = settings.work_dir.resolve()
    demo_dir = work / "demo"
    log_dir = demo_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    exe = crossrec_bin()

    nightly_dir, live_file, result.events_nightly, result.events_live = split_log_by_time(
        settings.data_dir / "events.jsonl.gz", demo_dir, live_fraction
    )
    shutil.copyfile(settings.data_dir / "items.jsonl.gz", nightly_dir / "items.jsonl.gz")
    env = {
        **os.environ,
        "CROSSREC_DATA_DIR": str(nightly_dir),
        "CROSSREC_WORK_DIR": str(work),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    split_file = settings.data_dir / "users_split.json"
    if split_file.is_file():
        shutil.copyfile(split_file, nightly_dir / "users_split.json")
    console.print(
        f"log cut: {result.events_nightly:,} events for the nightly pipeline, "
        f"{result.events_live:,} newest events replayed live"
    )

    run_stage("services up", [exe, "services", "up"], env, result, log_dir)
    if use_airflow:
        mode = [] if scheduler else ["--dags-test"]
        name = "nightly DAG (Airflow scheduler)" if scheduler else "nightly DAG (airflow dags test)"
        run_stage(name, [exe, "nightly", "run", "--date", result.ds, *mode], env, result, log_dir)
    else:
        for step in nightly_steps():
            run_stage(" ".join(step), [exe, *step], env, result, log_dir)

    result.live_users = sample_live_users(live_file, settings.target_domain)
    result.lists_before = snapshot_lists(settings, result.live_users)
    result.consumer = stream_live(exe, env, live_file, result, log_dir)
    return result


def sample_live_users(live_file: Path, target_domain: str, n: int = 3) -> list[str]:
    """A few users whose live events include the target domain: their lists should change."""
    users: list[str] = []
    with gzip.open(live_file, "rt", encoding="utf-8") as handle:
        for line in handle:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            user = event.get("user_id")
            if event.get("domain") == target_domain and user and user not in users:
                users.append(user)
                if len(users) == n:
                    break
    return users


def snapshot_lists(settings: Settings, users: list[str], k: int = 5) -> dict[str, list[str]]:
    from crossrec.client import RecClient

    with RecClient(settings) as client:
        return {
            user: [f"{r.title or r.item_id}" for r in client.get(user, settings.target_domain, k).items]
            for user in users
        }


def nightly_steps() -> list[list[str]]:
    """The DAG's steps, for running the nightly pipeline without Airflow (`--no-airflow`)."""
    return [
        ["clean"],
        ["embed"],
        ["features", "stats"],
        ["features", "apply"],
        ["features", "materialize"],
        ["adapt"],
        ["publish"],
    ]


def stream_live(exe: str, env: dict[str, str], live_file: Path, result: DemoResult, log_dir: Path) -> dict:
    """Start the consumer, replay the live events, let it drain, stop it; return its stats."""
    console.rule("[bold]streaming")
    started = time.monotonic()
    consumer_log = log_dir / "consumer.log"
    stats_file = log_dir / "consumer_stats.json"
    stats_file.unlink(missing_ok=True)
    with open(consumer_log, "w") as log:
        consumer = subprocess.Popen(
            [exe, "stream", "--idle-exit-s", "15", "--max-seconds", "600",
             "--heartbeat-file", str(log_dir / "consumer.alive"), "--stats-file", str(stats_file)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        run_stage("replay live events", [exe, "replay", "--input", str(live_file)], env, result, log_dir)
        consumer.wait(timeout=900)
    result.stages["streaming"] = time.monotonic() - started
    if consumer.returncode != 0 or not stats_file.is_file():
        raise SystemExit(f"the consumer failed; see {consumer_log}")
    stats = json.loads(stats_file.read_text())
    console.print(f"consumer: {stats}")
    return stats
