"""Feast online reads of item embeddings from Redis: p50/p99 for 1 and 100 items.

    python benchmarks/bench_feast.py [--quick] [--reps N]

Needs the project's Redis with item embeddings materialised (`crossrec features materialize`).
Baseline, measured in the same process on the same keys: a raw redis-py pipeline of HGETALL on
the Redis hashes Feast wrote (what a hand-written client would do) - the ratio is Feast's overhead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from crossrec.console import console
from crossrec.settings import get_settings


def timed(fn, reps: int) -> np.ndarray:
    fn()  # warm
    out = np.empty(reps)
    for k in range(reps):
        t = time.perf_counter()
        fn()
        out[k] = (time.perf_counter() - t) * 1e3
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    reps = 50 if args.quick else args.reps

    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from crossrec.features.online import online_item_embeddings
    from crossrec.features.store import PROJECT, definitions_module, feature_store
    from crossrec.redis_conn import redis_client

    settings = get_settings()
    store = feature_store(settings)
    emb_dir = definitions_module().feature_paths(Path(settings.work_dir), settings.encoder)["item_embeddings"]
    ids = pd.read_parquet(emb_dir, columns=["item_id"])["item_id"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    client = redis_client(settings)

    def raw_keys(items):
        return [_redis_key(PROJECT, EntityKey(join_keys=["item_id"], entity_values=[Value(string_val=i)]), 3) for i in items]

    table = Table(title=f"bench_feast: online item embeddings ({len(ids)} items in store, {reps} reads each)")
    for col in ("read", "feast p50 ms", "feast p99 ms", "raw redis p50 ms", "raw p99 ms", "feast / raw (p50)"):
        table.add_column(col)
    for n in (1, 100):
        batches = [list(rng.choice(ids, size=n, replace=False)) for _ in range(reps + 1)]
        it = iter(batches)
        got = online_item_embeddings(store, batches[0])
        assert all(v is not None for v in got.values()), "some items are not materialised"
        feast_ms = timed(lambda: online_item_embeddings(store, next(it)), reps)
        keysets = [raw_keys(b) for b in batches]
        kit = iter(keysets)

        def raw():
            pipe = client.pipeline(transaction=False)
            for key in next(kit):
                pipe.hgetall(key)
            return pipe.execute()

        raw_ms = timed(raw, reps)
        f50, f99 = np.percentile(feast_ms, [50, 99])
        r50, r99 = np.percentile(raw_ms, [50, 99])
        table.add_row(f"{n} item(s)", f"{f50:.2f}", f"{f99:.2f}", f"{r50:.2f}", f"{r99:.2f}", f"{f50 / r50:.1f}x")
    console.print(table)


if __name__ == "__main__":
    main()
