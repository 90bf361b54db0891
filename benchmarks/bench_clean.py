"""Cleaning throughput (events/s) of the Spark clean job on the Art-Office data.

    python benchmarks/bench_clean.py [--quick] [--repeat N] [--input DIR]

The machine is shared and noisy, so the job is compared with a baseline measured in the same
process: a plain single-threaded pandas pass over the same files (read the JSON lines, parse
timestamps to UTC, drop exact duplicates, check items exist). The baseline does far less than
the job (no quarantine, normalisation, near-dups, splits or parquet output); the ratio says
what the full job costs relative to "just reading the data", and it is what to track over time.
``--quick`` uses the first 20,000 events (all items) so it finishes in well under a minute.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crossrec.console import console  # noqa: E402
from crossrec.settings import get_settings  # noqa: E402

QUICK_EVENTS = 20_000


def pandas_baseline(input_dir: Path) -> tuple[int, int, float]:
    """(rows in, rows kept, seconds) of a minimal pandas clean of the same files."""
    import pandas as pd

    start = time.perf_counter()
    frames = [pd.read_json(p, lines=True, dtype=False) for p in sorted(input_dir.glob("events*.jsonl*"))]
    events = pd.concat(frames, ignore_index=True)
    items = pd.concat(
        [pd.read_json(p, lines=True, dtype=False) for p in sorted(input_dir.glob("items*.jsonl*"))],
        ignore_index=True,
    )
    rows_in = len(events)
    events["ts"] = pd.to_datetime(events["ts"], utc=True, errors="coerce")
    events = events.dropna(subset=["user_id", "domain", "item_id", "event_type", "ts"])
    events = events.drop_duplicates(subset=["user_id", "domain", "item_id", "event_type", "ts"])
    known = set(zip(items["domain"], items["item_id"], strict=True))
    events = events[[k in known for k in zip(events["domain"], events["item_id"], strict=True)]]
    events = events.sort_values(["user_id", "ts"])
    return rows_in, len(events), time.perf_counter() - start


def make_quick_input(source: Path, target: Path, n_events: int) -> Path:
    """First ``n_events`` event lines and every item, so the quick run still finds its items."""
    target.mkdir(parents=True, exist_ok=True)
    with gzip.open(source / "events.jsonl.gz", "rt") as src, gzip.open(target / "events.jsonl.gz", "wt") as dst:
        for i, line in enumerate(src):
            if i >= n_events:
                break
            dst.write(line)
    shutil.copy(source / "items.jsonl.gz", target / "items.jsonl.gz")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_EVENTS:,} events only")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of the Spark job (best is reported)")
    parser.add_argument("--input", type=Path, default=None, help="raw-log dir (default: settings.data_dir)")
    args = parser.parse_args()

    from crossrec.cleaning.pipeline import run_clean
    from crossrec.spark import spark_session

    settings = get_settings()
    tmp = Path(tempfile.mkdtemp(prefix="bench_clean_"))
    try:
        input_dir = args.input or Path(settings.data_dir)
        if args.quick:
            input_dir = make_quick_input(input_dir, tmp / "input", QUICK_EVENTS)
        base_in, base_kept, base_s = pandas_baseline(input_dir)

        start = time.perf_counter()
        spark = spark_session(settings, app_name="bench-clean")
        spark.range(1).count()
        session_s = time.perf_counter() - start

        runs = []
        for i in range(max(1, args.repeat)):
            summary = run_clean(spark, settings, input_dir, tmp / f"out{i}")
            runs.append(summary)
        best = min(runs, key=lambda s: s.elapsed_s)
        spark.stop()

        table = Table(
            title=f"clean throughput on {input_dir}" + (" (quick)" if args.quick else ""),
            title_justify="left",
            caption=f"job: Spark {settings.spark.master}, whole job wall time (items included); "
            "baseline: pandas read + parse + exact dedupe, 1 core, same process",
            caption_justify="left",
        )
        for name in ("run", "events in", "events kept", "seconds", "events/s", "vs pandas"):
            table.add_column(name, justify="left" if name == "run" else "right")
        base_rate = base_in / base_s
        table.add_row("pandas baseline", f"{base_in:,}", f"{base_kept:,}",
                      f"{base_s:.1f}", f"{base_rate:,.0f}", "1.00x")
        for i, run in enumerate(runs):
            rate = run.events.rows_in / run.elapsed_s
            table.add_row(f"clean job #{i + 1}", f"{run.events.rows_in:,}",
                          f"{run.events.rows_kept:,}", f"{run.elapsed_s:.1f}", f"{rate:,.0f}",
                          f"{rate / base_rate:.2f}x")
        console.print(table)
        console.print(
            f"spark session start {session_s:.1f} s (not included); best run {best.elapsed_s:.1f} s; "
            f"balanced={best.balanced}; rows_in {best.rows_in:,} = kept {best.rows_kept:,} + "
            f"rejected {best.rejected:,}"
        )
        return 0 if best.balanced else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
