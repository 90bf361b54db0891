"""A small raw-log sample cut from a full one: the first ``n_users`` users (by sorted id) with every
one of their events and every item those events touch. Used by ``bench_nightly.py --quick`` and
the Airflow/Spark integration tests, so that they run the real pipeline on seconds of data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def write_sample(src: Path, out: Path, n_users: int) -> dict[str, int]:
    """Write ``events.jsonl.gz`` and ``items.jsonl.gz`` of the sample into ``out``; returns counts."""
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(src / "events.jsonl.gz", "rt", encoding="utf-8") as handle:
        events = [json.loads(line) for line in handle if line.strip()]
    users = sorted({e["user_id"] for e in events})[:n_users]
    keep_users = set(users)
    kept = [e for e in events if e["user_id"] in keep_users]
    wanted_items = {(e["domain"], e["item_id"]) for e in kept}
    with gzip.open(src / "items.jsonl.gz", "rt", encoding="utf-8") as handle:
        items = [i for i in (json.loads(line) for line in handle if line.strip()) if (i["domain"], i["item_id"]) in wanted_items]
    with gzip.open(out / "events.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(e) + "\n" for e in kept)
    with gzip.open(out / "items.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(i) + "\n" for i in items)
    return {"users": len(users), "events": len(kept), "items": len(items)}
