"""What serving through the routing table costs per consumer batch, against the plain model.

    python benchmarks/bench_routed_serving.py [--work DIR] [--batch 500] [--repeats 5]

Loads the registry's current version of ``--work`` (default: settings' work dir) twice in this
process, routed (``RoutedRecommender``) and plain (``Recommender``), and times
``top_k_for_users(batch, k)`` for batches of users of one segment each: ``cold`` (20 source
events), ``1-2`` (18 source + 2 target events) and ``3+`` (10 + 10), items drawn at random from
the model's catalogue, as bench_stream seeds its users. Each cell is the median of the repeats;
the ratio routed / plain is measured in the same process, batch for batch. The table says which
route the version's table stores for each segment. Run timings under the timing lock:
``flock /tmp/crossrec-timing.lock python benchmarks/bench_routed_serving.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from crossrec.settings import Settings  # noqa: E402

SEGMENTS = {"cold": (20, 0), "1-2": (18, 2), "3+": (10, 10)}  # (source, target) events per user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="work dir with a registry (default: settings)")
    parser.add_argument("--batch", type=int, default=500, help="users per batch (the consumer's poll is ~500 events)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    from crossrec.adaptation.inference import Recommender
    from crossrec.adaptation.routing import RoutedRecommender
    from crossrec.registry import registry_for

    settings = Settings() if args.work is None else Settings(work_dir=args.work)
    reg = registry_for(settings.work_dir)
    version = reg.current()
    if version is None:
        raise SystemExit(f"no current model in {reg.root}")
    load_before = os.getloadavg()
    routed = RoutedRecommender(version, reg.path(version))
    plain = Recommender(version, reg.path(version))
    keys = plain._keys[1:]  # row 0 is padding
    by_domain = {d: [k for k in keys if k[0] == d] for d in (plain.source_domain, plain.target_domain)}
    rng = random.Random(0)

    table_rows = []
    for seg, (n_src, n_tgt) in SEGMENTS.items():
        batch = {
            f"u{i}": rng.sample(by_domain[plain.source_domain], n_src) + rng.sample(by_domain[plain.target_domain], n_tgt)
            for i in range(args.batch)
        }
        times: dict[str, list[float]] = {"plain": [], "routed": []}
        for _ in range(args.repeats):
            for name, rec in (("plain", plain), ("routed", routed)):
                t = time.perf_counter()
                rec.top_k_for_users(batch, args.k)
                times[name].append(time.perf_counter() - t)
        p, r = float(np.median(times["plain"])), float(np.median(times["routed"]))
        route, weights = routed.route_of_segment(seg)
        label = route + (" (" + ", ".join(f"{n} {w:g}" for n, w in weights.items()) + ")" if weights else "")
        table_rows.append((seg, label, p, r))
    load_after = os.getloadavg()

    table = Table(title=(f"routed vs plain top_k_for_users: {version} of {settings.work_dir}, {len(plain.target_items):,} target items, "
                         f"{args.batch} users per batch, median of {args.repeats}; load average {load_before[0]:.2f} before / {load_after[0]:.2f} after"))
    for col in ("segment", "route stored", "plain ms / batch", "routed ms / batch", "routed / plain", "routed µs / user"):
        table.add_column(col)
    for seg, label, p, r in table_rows:
        table.add_row(seg, label, f"{1000 * p:.0f}", f"{1000 * r:.0f}", f"{r / p:.2f}x", f"{1e6 * r / args.batch:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
