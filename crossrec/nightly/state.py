"""Where the nightly pipeline keeps what one run decided, and what later runs compare against.

Layout under ``{work_dir}/nightly/``::

    runs/{ds}/          one logical date: dq.json, times.json, adapt/ (metrics.json, results.json, report.html),
                        decision.json, summary.json; a retry of that date rewrites the same files
    last_good.json      the cleaned-data counts of the newest run that finished (the DQ baseline)
    weekly/{ds}/        the weekly strategy review's adapt output
    winner.json         the strategy the last weekly review chose (what the nightly retrains)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from crossrec.settings import Settings


def nightly_root(settings: Settings) -> Path:
    return Path(settings.work_dir) / "nightly"


def run_dir(settings: Settings, ds: str) -> Path:
    path = nightly_root(settings) / "runs" / ds
    path.mkdir(parents=True, exist_ok=True)
    return path


def nightly_run_key(ds: str) -> str:
    return f"nightly-{ds}"


def weekly_run_key(ds: str) -> str:
    return f"weekly-{ds}"


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_json(path: Path, data: Any) -> None:
    """Write through a temp file + rename, so a crash never leaves half a record behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
    os.replace(tmp, path)


def record_time(settings: Settings, ds: str, task: str, seconds: float) -> None:
    """Add one task's wall time to the run's times.json (tasks of a run run one after another)."""
    path = run_dir(settings, ds) / "times.json"
    times = read_json(path) or {}
    times[task] = round(seconds, 2)
    write_json(path, times)
