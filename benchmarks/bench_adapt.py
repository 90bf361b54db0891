"""Benchmark the nightly adaptation run: seconds per epoch, peak RSS, full comparison time.

    python benchmarks/bench_adapt.py --input var            # shared Art-Office data (clean + embeddings)
    python benchmarks/bench_adapt.py --quick                # synthetic fixture, seconds

The machine is shared, so absolute seconds are noisy: every figure is also given as a ratio to a
fixed reference workload (a 1024x1024 fp32 matmul loop) timed in the same process before and after.
The nightly target is the full comparison (all strategies, 1 seed, fraction curve) <= 600 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from crossrec.adaptation.model import ModelConfig
from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
from crossrec.adaptation.synthetic import write_synthetic
from crossrec.adaptation.trainer import TrainConfig

console = Console()
TARGET_S = 600.0


def reference_seconds(reps: int = 40) -> float:
    """Seconds of a fixed fp32 matmul workload (the unit for contention-robust ratios)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=Path, default=Path("var"))
    ap.add_argument("--split", type=Path, default=Path("data/amazon-art-office/users_split.json"))
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--quick", action="store_true", help="synthetic fixture instead of the shared data")
    ap.add_argument("--fractions", default="0.05,0.1,0.25,0.5,1.0")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_adapt_"))
    if args.quick:
        work = write_synthetic(tmp / "work", n_users=200, n_items=100, dim=32)
        split = work / "users_split.json"
        model, train = ModelConfig(dim=32, max_len=20), TrainConfig(max_epochs=3, pretrain_epochs=2, patience=1)
    else:
        work, split = args.input, args.split
        model, train = ModelConfig(), TrainConfig()
    ref0 = reference_seconds()
    opts = AdaptOptions(
        input_dir=work,
        output_dir=tmp / "out",
        strategies=["all"],
        seeds=[0],
        fractions=[float(x) for x in args.fractions.split(",")],
        encoder=args.encoder,
        split_path=split if split.is_file() else None,
        registry_dir=tmp / "registry",
        model=model,
        train=train,
    )
    res = run_adapt(opts, say=lambda s: console.log(s))
    ref1 = reference_seconds()
    ref = (ref0 + ref1) / 2
    table = Table(title=f"adaptation benchmark ({'synthetic' if args.quick else work}; reference workload {ref0:.2f}s before / {ref1:.2f}s after)")
    for col in ("part", "seconds", "x reference", "epochs", "s/epoch", "test NDCG@10"):
        table.add_column(col, justify="right")
    for name, t in res["timing"].items():
        secs = t["train_s"][0] + t["eval_s"][0]
        spe = t["s_per_epoch"][0]
        table.add_row(name, f"{secs:.1f}", f"{secs / ref:.0f}", str(t["epochs"][0]), "-" if spe is None else f"{spe:.2f}", f"{res['test'][name]['NDCG@10']['mean']:.4f}")
    run = res["run"]
    if "routed" in res["test"]:
        secs = res.get("routing", {}).get("seconds", float("nan"))
        table.add_row("routed (fit + test)", f"{secs:.1f}", f"{secs / ref:.0f}", "", "", f"{res['test']['routed']['NDCG@10']['mean']:.4f}")
    if "diagnose" in res and "seconds" in res["diagnose"]:
        secs = res["diagnose"]["seconds"]
        table.add_row("diagnose", f"{secs:.1f}", f"{secs / ref:.0f}", "", "", "")
    for part in ("load_s", "main_comparison_s", "fraction_curve_s", "total_s"):
        table.add_row(part, f"{run[part]:.1f}", f"{run[part] / ref:.0f}", "", "", "")
    console.print(table)
    ok = run["total_s"] <= TARGET_S
    console.print(f"peak RSS {run['peak_rss_mb']:.0f} MB; full comparison incl. fraction curve {run['total_s']:.0f}s "
                  f"(target <= {TARGET_S:.0f}s: {'met' if ok else 'MISSED'}); threads={run['threads']}")


if __name__ == "__main__":
    main()
