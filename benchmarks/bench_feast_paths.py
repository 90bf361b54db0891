"""What Feast costs on the paths that read it: training's offline join and the online user read.

    python benchmarks/bench_feast_paths.py [--quick]

Offline: the Art-Office training set (the real 208,541 events and 38,396 item ids of the shared
data set) joined to item embeddings (as of the run) and to the point-in-time item statistics
(``item_stats_daily``, as of each event) through Feast's ``get_historical_features``, against the
direct way: reading the embeddings parquet, and the same point-in-time join done by hand with
``pandas.merge_asof``. The vectors are random 384-d float32 (what is timed is moving and joining
them, not computing them), so no encoder or Spark run is needed.

Online: one user's features (``user_features`` view) through ``RecClient.user_features`` (Feast's
``get_online_features``) against a direct Redis ``GET`` of a value of the same size, in the same
process, p50/p99.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT.parent / "shared" / "data" / "amazon-art-office"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_events() -> tuple[pd.DataFrame, pd.DataFrame]:
    with gzip.open(DATA / "events.jsonl.gz", "rt") as fh:
        events = pd.DataFrame([json.loads(line) for line in fh])
    events["ts_ms"] = pd.to_datetime(events["ts"], utc=True).astype("int64") // 1_000_000
    events["split"] = "train"
    with gzip.open(DATA / "items.jsonl.gz", "rt") as fh:
        items = pd.DataFrame([{"item_id": r["item_id"], "domain": r["domain"]} for r in map(json.loads, fh)])
    return events[["user_id", "item_id", "domain", "ts_ms", "split"]], items


def best(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def pct(samples: list[float], q: float) -> float:
    xs = sorted(samples)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from rich.console import Console
    from rich.table import Table

    from crossrec.client import RecClient
    from crossrec.features.offline import events_with_item_stats, item_embeddings_as_of
    from crossrec.features.store import apply, definitions_module, materialize
    from crossrec.features.tables import build_feature_tables
    from crossrec.services import redis_service
    from crossrec.settings import Settings

    console = Console(width=160)
    reps = 1 if args.quick else 3
    n_online = 300 if args.quick else 2000
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="crossrec-feast-"))
    settings = Settings.model_validate({"work_dir": tmp / "work", "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"},
                                        "services": {"run_dir": tmp / "run"}})
    service = redis_service(settings)
    service.start(timeout_s=30)
    try:
        with console.status("reading the Art-Office events and writing the feature tables"):
            events, items = load_events()
            rng = np.random.default_rng(0)
            vecs = rng.normal(size=(len(items), 384)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            emb_dir = Path(settings.work_dir) / "embeddings" / "minilm"
            emb_dir.mkdir(parents=True)
            pd.DataFrame({"item_id": items["item_id"], "domain": items["domain"], "embedding": list(vecs),
                          "text_hash": "x", "encoder": "minilm",
                          "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")}).to_parquet(emb_dir / "part-0.parquet")
            events_dir = tmp / "events"
            events.to_parquet(events_dir, partition_cols=["domain"])
            paths = definitions_module().feature_paths(Path(settings.work_dir), "minilm")
            build_feature_tables(events_dir, None, {k: paths[k] for k in ("item_stats", "item_stats_daily", "user_features")})
            store = apply(settings)
            materialize(settings, ["user_features"], store=store, incremental=False)
        ids = items["item_id"].tolist()
        daily_path = paths["item_stats_daily"]

        def direct() -> int:
            emb = pd.read_parquet(emb_dir, columns=["item_id", "domain", "embedding"])
            daily = pd.read_parquet(daily_path).sort_values("event_timestamp")
            ev = events.assign(event_timestamp=pd.to_datetime(events["ts_ms"], unit="ms", utc=True)).sort_values("event_timestamp")
            joined = pd.merge_asof(ev, daily[["item_id", "event_timestamp", "interactions", "users", "popularity"]],
                                   on="event_timestamp", by="item_id", allow_exact_matches=True)
            return len(emb) + len(joined)

        def via_feast() -> int:
            emb = item_embeddings_as_of(store, ids)
            joined = events_with_item_stats(store, events)
            return len(emb) + len(joined)

        with console.status("offline: direct parquet + merge_asof"):
            t_direct, _ = best(direct, reps)
        with console.status("offline: embeddings through Feast"):
            t_emb, _ = best(lambda: len(item_embeddings_as_of(store, ids)), reps)
        with console.status("offline: point-in-time item stats through Feast"):
            t_stats, _ = best(lambda: len(events_with_item_stats(store, events)), reps)
        with console.status("offline: embeddings parquet read alone"):
            t_emb_direct, _ = best(lambda: len(pd.read_parquet(emb_dir, columns=["item_id", "domain", "embedding"])), reps)

        users = events["user_id"].drop_duplicates().sample(200, random_state=0).tolist()
        client = RecClient(settings)
        features = client.user_features(users[0])
        assert features["found"] and features["n_events"], features
        raw = json.dumps(features, default=str).encode()
        client.redis.set("bench:user", raw)
        feast_lat, redis_lat = [], []
        for k in range(n_online):
            u = users[k % len(users)]
            t0 = time.perf_counter()
            client.user_features(u)
            feast_lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.redis.get("bench:user")
            redis_lat.append(time.perf_counter() - t0)
        client.close()
    finally:
        service.stop()

    table = Table(title=f"Feast's cost, Art-Office ({len(events):,} events, {len(ids):,} items); "
                        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after, {os.cpu_count()} cores")
    for col in ("path", "Feast", "direct", "Feast / direct"):
        table.add_column(col, justify="left" if col == "path" else "right")
    table.add_row("offline: item embeddings (as of the run), s", f"{t_emb:.2f}", f"{t_emb_direct:.2f}", f"{t_emb / t_emb_direct:.1f}x")
    table.add_row("offline: embeddings + PIT item stats for every event, s", f"{t_emb + t_stats:.2f}",
                  f"{t_direct:.2f} (parquet + merge_asof)", f"{(t_emb + t_stats) / t_direct:.1f}x")
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        f, r = pct(feast_lat, q), pct(redis_lat, q)
        table.add_row(f"online: one user's features, {name} ms (n={n_online})", f"{f:.3f}", f"{r:.3f} (Redis GET, {len(raw)} B)", f"{f / r:.1f}x")
    console.print(table)


if __name__ == "__main__":
    main()
