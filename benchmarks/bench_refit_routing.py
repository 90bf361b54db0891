"""Re-fit only the routing table of a registered model and compare it per user segment on test users.

    python benchmarks/bench_refit_routing.py --work DIR [--version v0001] [--split users_split.json]
        [--selection-users 2000] [--json out.json]

Why: the routing rule can change without the model changing. Retraining costs most of a
`crossrec adapt` run; the routes are chosen on the selection set from the model's logits and
the training-free scorers only, so this loads the registered weights, rebuilds the same selection
set (``selection_positions``, fixed by its own seed) and the scorers on the same training
sequences, fits the table with the current rule, and evaluates on the test users exactly as
`crossrec adapt` does (``evaluate_routing``). Side by side, test NDCG@10 per segment of: the table
just fitted, the table stored in the artifact (the rule it was fitted with), the model alone and
popularity alone (each a one-route table through the same evaluation). The artifact is only read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

SEGMENTS = ("cold", "1-2", "3+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="work dir with clean/, embeddings/ and registry/")
    parser.add_argument("--version", default=None, help="registered version (default: the current one)")
    parser.add_argument("--split", type=Path, default=None, help="users_split.json the model was trained with")
    parser.add_argument("--selection-users", type=int, default=None, help="default: the artifact's train_config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from crossrec.adaptation.artifacts import load_with_embeddings
    from crossrec.adaptation.data import load_adapt_data
    from crossrec.adaptation.pipeline import evaluate_routing, routing_selection
    from crossrec.adaptation.routing import RouteChoice, RoutingTable, fit_routing
    from crossrec.adaptation.strategies import RunContext
    from crossrec.adaptation.trainer import TrainConfig, logits_eval_set
    from crossrec.registry import registry_for

    console = Console()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    reg = registry_for(args.work)
    version = args.version or reg.current()
    if version is None:
        raise SystemExit(f"no current model in {reg.root}")
    path = reg.path(version)
    config = json.loads((path / "config.json").read_text())
    manifest = json.loads((path / "manifest.json").read_text()) if (path / "manifest.json").is_file() else {}
    data = load_adapt_data(args.work, config["encoder"], config["source_domain"], config["target_domain"], split_path=args.split)
    try:
        model, config = load_with_embeddings(path, data)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    train_cfg = manifest.get("train_config", {})
    selection = args.selection_users if args.selection_users is not None else int(train_cfg.get("selection_users", 2000))
    ctx = RunContext(data, model.cfg, TrainConfig(selection_users=selection), int(config.get("seed", 0)))
    view = config["view"]

    def logits(ev) -> np.ndarray:
        return logits_eval_set(model, data, ev)

    console.print(f"{version}: {config['strategy']} ({view} view), {len(ctx.selection())} selection users; fitting routes")
    scorers, segments = routing_selection(ctx, view)
    refit = fit_routing(data, scorers, logits, segments, config["strategy"], say=console.print)
    tables = {"routed (refit)": refit}
    stored = path / "routing" / "routing.json"
    if stored.is_file():
        tables["routed (stored)"] = RoutingTable.from_dict(json.loads(stored.read_text()))
    for single in ("model", "popularity"):
        tables[single] = RoutingTable({s: RouteChoice(s, single, 0) for s in SEGMENTS}, config["strategy"])
    results = {name: evaluate_routing(ctx, t, scorers, logits, view) for name, t in tables.items()}
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()

    segs = list(next(iter(results.values()))["segments"]["user"])
    out = Table(title=f"test NDCG@10 per user segment ({version}, {config['strategy']})")
    out.add_column("scorer")
    for seg in segs:
        out.add_column(f"{seg} (n={results['model']['segments']['user'][seg]['n_users']})", justify="right")
    out.add_column("all", justify="right")
    for name, r in results.items():
        out.add_row(name, *[f"{r['segments']['user'][s]['NDCG@10']:.4f}" for s in segs], f"{r['test']['NDCG@10']:.4f}")
    console.print(out)
    routes = Table(title="routes (fallback: kept unless a challenger's CI excludes zero)")
    for col in ("segment", "selection users", "refit route", "fallback", "stored route", "reason"):
        routes.add_column(col)
    for seg in SEGMENTS:
        c = refit.routes[seg]
        old = tables.get("routed (stored)")
        routes.add_row(seg, str(c.n_users), c.route, c.fallback, old.routes[seg].route if old and seg in old.routes else "-", c.reason)
    console.print(routes)
    console.print(f"{seconds:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"version": version, "routing": refit.to_dict(), "results": results, "seconds": seconds}, indent=2, default=float))


if __name__ == "__main__":
    main()
