"""Wall time of the nightly DAG, per task and in total: a cold run (empty work dir) and a warm one
(the next night, nothing changed), run the way production runs it (a real Airflow scheduler started
by crossrec, real Redis/broker/Spark/Feast/torch), on the shipped Art-Office data.

    python benchmarks/bench_nightly.py                 # full data: cold, then warm
    python benchmarks/bench_nightly.py --quick         # a 300-user sample of it
    python benchmarks/bench_nightly.py --weekly        # also time the weekly strategy review (per task)
    python benchmarks/bench_nightly.py --dags-test     # `airflow dags test` instead of the scheduler

Run it under ``flock /tmp/crossrec-timing.lock`` on a shared machine. Targets on 2 cores: cold
<= 15 min, warm <= 3 min, weekly review <= 20 min. Per-task times are what each task recorded
(``crossrec nightly timed``); "DAG run" is trigger-to-finish, so it includes the scheduler's own
hand-over time between tasks; "Airflow start" is db migrate + the three components.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
console = Console(width=140, highlight=False)
TARGETS = {"cold": 15 * 60, "warm": 3 * 60, "weekly": 20 * 60}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 300-user sample instead of the full data")
    ap.add_argument("--users", type=int, default=300, help="users in the --quick sample")
    ap.add_argument("--weekly", action="store_true", help="also time the weekly strategy review")
    ap.add_argument("--dags-test", action="store_true", help="airflow dags test instead of the scheduler")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    data = REPO / "data" / "amazon-art-office"
    if args.quick:
        from crossrec.nightly.sample import write_sample

        data = tmp / "raw"
        console.print(f"sample: {write_sample(REPO / 'data' / 'amazon-art-office', data, args.users)}")
    os.environ.update({
        "CROSSREC_WORK_DIR": str(tmp / "work"), "CROSSREC_DATA_DIR": str(data),
        "CROSSREC_SERVICES__RUN_DIR": str(tmp / "run"),
        "CROSSREC_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
        "CROSSREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "CROSSREC_NIGHTLY__AIRFLOW_PORT": str(free_port()), "CROSSREC_NIGHTLY__SCHEDULER_HEALTH_PORT": str(free_port()),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    })
    from crossrec.nightly.airflow_runner import airflow_bin, airflow_down, airflow_env, airflow_up, migrate_db, run_dag
    from crossrec.nightly.state import read_json
    from crossrec.services import services_down, services_up
    from crossrec.settings import Settings

    settings = Settings()
    console.print(f"load average before: {os.getloadavg()}")
    services_up(settings)
    rows: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        if args.dags_test:
            migrate_db(settings)
        else:
            airflow_up(settings)
        totals["Airflow start"] = time.monotonic() - t0
        runs = [("cold", "crossrec_nightly_retrain", "2026-01-05"), ("warm", "crossrec_nightly_retrain", "2026-01-06")]
        if args.weekly:
            runs.append(("weekly", "crossrec_weekly_strategy_review", "2026-01-04"))
        for label, dag_id, ds in runs:
            started = time.monotonic()
            if args.dags_test:
                env = {**os.environ, **airflow_env(settings)}
                done = subprocess.run([airflow_bin(), "dags", "test", dag_id, ds], env=env, capture_output=True, text=True)
                state = "success" if done.returncode == 0 else "failed"
            else:
                state = run_dag(settings, dag_id, ds, timeout_s=3 * 3600).state
            totals[label] = time.monotonic() - started
            if state != "success":
                console.print(f"[red]{label} run of {dag_id} {ds}: {state}[/]")
                return 1
            times = read_json(Path(settings.work_dir) / "nightly" / "runs" / ds / "times.json") or {}
            for task, secs in times.items():
                rows.setdefault(task, {})[label] = secs
            # printed as each run ends, so a run cut short still leaves the earlier runs' figures
            console.print(f"{label} ({dag_id} {ds}): {totals[label]:.1f} s trigger to finish; per task: "
                          + ", ".join(f"{t} {s:.1f}" for t, s in times.items()) + f"; load average {os.getloadavg()}")
            summary = read_json(Path(settings.work_dir) / "nightly" / "runs" / ds / "summary.json") or {}
            if summary:
                console.print(f"{label}: decision {summary.get('decision')}: {summary.get('why')}; "
                              f"embedding {json.dumps(summary.get('embedding'))}")
    finally:
        if not args.dags_test:
            airflow_down(settings)
        services_down(settings)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    labels = [label for label, _, _ in runs]
    table = Table(title=f"nightly DAG wall time ({'sample' if args.quick else 'full Art-Office data'}, "
                        f"{'airflow dags test' if args.dags_test else 'Airflow scheduler'})")
    table.add_column("task")
    for label in labels:
        table.add_column(f"{label} s", justify="right")
    for task, by_label in rows.items():
        table.add_row(task, *[f"{by_label[label]:.1f}" if label in by_label else "-" for label in labels])
    table.add_row("[bold]DAG run (trigger to finish)", *[f"[bold]{totals[label]:.1f}" for label in labels])
    table.add_row("target", *[f"<= {TARGETS[label]}" for label in labels])
    console.print(table)
    console.print(f"Airflow start (db migrate + components): {totals['Airflow start']:.1f} s; "
                  f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
