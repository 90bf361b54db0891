"""Tail slots on Art -> Office: the routed model with and without them, per seed, on test users.

    python benchmarks/bench_tail_slots.py --work W --seeds 42,43,44 [--from var/seeds] [--json out.json]

Why: the slots trade a little of the head for the tail (``crossrec/adaptation/tail_slots.py``), so
the numbers that matter are the overall NDCG@10 and the tail's (held-out item with fewer than 5
training interactions) of the same routing table with its chosen slots and with none. Each seed
trains the strategy its ``bench_seeds`` run chose (``--from``: that run's ``seed{S}.json``; else
target_only) with ``bench_seeds``' defaults, so the model is the one that run routed; fits the
routing table with the current rule and ``settings.adapt.tail_slot_margin``; and evaluates it on the
test users exactly as ``crossrec adapt`` does, once as fitted and once with every segment's slots
set to 0. SASRec's tail, for the ratio, is read from the same seed's ``bench_seeds`` result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="work dir with clean/ and embeddings/")
    ap.add_argument("--split", type=Path, default=REPO_ROOT / "data/amazon-art-office/users_split.json")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--from", dest="from_dir", type=Path, default=None, help="a bench_seeds output dir: each seed's chosen strategy and SASRec's tail")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from crossrec.adaptation.data import load_adapt_data
    from crossrec.adaptation.model import ModelConfig
    from crossrec.adaptation.pipeline import evaluate_routing, routing_selection
    from crossrec.adaptation.routing import RoutingTable, fit_routing
    from crossrec.adaptation.strategies import STRATEGIES, RunContext
    from crossrec.adaptation.trainer import TrainConfig, logits_eval_set
    from crossrec.evaluation import TAIL_SEGMENTS, pooled

    def tail_ndcg(item_segments: dict) -> tuple[float, int]:
        """NDCG@10 over the test events whose item had fewer than 5 training interactions."""
        return pooled(item_segments, TAIL_SEGMENTS)

    console = Console()
    data = load_adapt_data(args.work, "minilm", "art", "office", split_path=args.split)
    train_cfg = TrainConfig(max_epochs=15, patience=3, pretrain_epochs=8)  # bench_seeds' defaults
    model_cfg = ModelConfig(dim=64, max_len=50)
    rows, out = [], {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        prior = json.loads((args.from_dir / f"seed{seed}.json").read_text()) if args.from_dir else {}
        strategy = prior.get("strategy_choice", {}).get("chosen", "target_only")
        ctx = RunContext(data, model_cfg, train_cfg, seed, cache={}, progress=None)
        trained = STRATEGIES[strategy](ctx)
        model = trained.model
        cache: dict[int, np.ndarray] = {}

        def logits(ev) -> np.ndarray:
            if id(ev) not in cache:
                cache[id(ev)] = logits_eval_set(model, data, ev)
            return cache[id(ev)]

        scorers, segments = routing_selection(ctx, trained.view)
        table = fit_routing(data, scorers, logits, segments, strategy, say=console.print, tail_slot_margin=train_cfg.tail_slot_margin)
        plain = RoutingTable({s: dataclasses.replace(c, tail_slots=0) for s, c in table.routes.items()}, table.strategy)
        res = {"slots": evaluate_routing(ctx, table, scorers, logits, trained.view), "none": evaluate_routing(ctx, plain, scorers, logits, trained.view)}
        sasrec = prior.get("segments", {}).get("sasrec", {}).get("item")
        sasrec_tail = tail_ndcg(sasrec)[0] if sasrec else None
        out[seed] = {"strategy": strategy, "routing": table.to_dict(), "results": res, "sasrec_tail": sasrec_tail, "seconds": time.perf_counter() - t0}
        for name, r in res.items():
            tail, n = tail_ndcg(r["segments"]["item"])
            ratio = f"{tail / sasrec_tail:.2f}x" if sasrec_tail else "-"
            rows.append((str(seed), strategy, name, f"{r['test']['NDCG@10']:.4f}", f"{tail:.4f} (n={n})",
                         f"{r['segments']['item']['item 5+ training interactions']['NDCG@10']:.4f}", f"{sasrec_tail:.4f}" if sasrec_tail else "-", ratio))
        console.print(f"seed {seed}: {time.perf_counter() - t0:.0f} s; slots per segment " + ", ".join(f"{s}: {c.tail_slots}" for s, c in table.routes.items()))
    tab = Table(title="routed model, test users: tail slots as chosen vs none")
    for col in ("seed", "strategy", "slots", "NDCG@10", "tail (< 5 interactions)", "item 5+", "SASRec tail", "tail vs SASRec"):
        tab.add_column(col)
    for r in rows:
        tab.add_row(*r)
    console.print(tab)
    for name in ("none", "slots"):
        tails = [tail_ndcg(o["results"][name]["segments"]["item"])[0] for o in out.values()]
        overall = [o["results"][name]["test"]["NDCG@10"] for o in out.values()]
        sas = [o["sasrec_tail"] for o in out.values() if o["sasrec_tail"]]
        ratio = f"; pooled vs SASRec {np.mean(tails) / np.mean(sas):.2f}x" if len(sas) == len(tails) else ""
        console.print(f"{name}: NDCG@10 {np.mean(overall):.4f} ± {np.std(overall):.4f}, tail {np.mean(tails):.4f} ± {np.std(tails):.4f}{ratio}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
