"""Re-decide two defaults on the selection set (never on test users): the GRU residual and transfer_view.

    python benchmarks/bench_defaults.py --input var [--max-epochs 15] [--device auto]

Both defaults were first chosen by looking at test NDCG@10. This trains, on the same split and
seed, target_only with and without the residual skip path, and pretrain_finetune_all with the
'target' and the 'mixed' transfer view, and compares each pair on the selection set (training
users' held-out last target event; early stopping stays on the validation users) with a paired
bootstrap CI. The rule of the issue applies: the current default stays unless the alternative's
CI excludes zero in its favour. Test NDCG@10 is printed for the record only.
(benchmarks/bench_seeds.py --defaults runs the same decision beside its seeds.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from crossrec.adaptation.data import AdaptData, load_adapt_data
from crossrec.adaptation.model import ModelConfig
from crossrec.adaptation.strategies import STRATEGIES, RunContext
from crossrec.adaptation.trainer import TrainConfig
from crossrec.evaluation import compute_metrics, paired_bootstrap, per_user

console = Console(width=150)
PAIRS = (("residual", True, False), ("transfer_view", "target", "mixed"))


def decide_defaults(data: AdaptData, mcfg: ModelConfig, max_epochs: int, seed: int, device: str = "cpu", log: Callable[[str], None] = print) -> list[dict]:
    """Train the four runs and decide each default on the selection set; one row per default."""
    tc = {"max_epochs": max_epochs, "device": device}
    runs = {
        ("residual", True): ("target_only", ModelConfig(**{**mcfg.to_dict(), "residual": True}), TrainConfig(**tc)),
        ("residual", False): ("target_only", ModelConfig(**{**mcfg.to_dict(), "residual": False}), TrainConfig(**tc)),
        ("transfer_view", "target"): ("pretrain_finetune_all", mcfg, TrainConfig(**tc, pretrain_epochs=min(8, max_epochs), transfer_view="target")),
        ("transfer_view", "mixed"): ("pretrain_finetune_all", mcfg, TrainConfig(**tc, pretrain_epochs=min(8, max_epochs), transfer_view="mixed")),
    }
    per, test = {}, {}
    for key, (name, m, t) in runs.items():
        t0 = time.perf_counter()
        ctx = RunContext(data, m, t, seed, 1.0, progress=None)
        trained = STRATEGIES[name](ctx)
        per[key] = per_user(trained.ranks(data, ctx.eval_set("select", trained.view)))
        test[key] = compute_metrics(trained.ranks(data, ctx.eval_set("test", trained.view)))["NDCG@10"]
        log(f"{key}: selection NDCG@10 {per[key].mean():.4f} test {test[key]:.4f} ({time.perf_counter() - t0:.0f}s)")
    rows = []
    for param, cur, alt in PAIRS:
        ci = paired_bootstrap(per[(param, alt)], per[(param, cur)])
        rows.append({"default": param, "current": cur, "alternative": alt, "select_current": float(per[(param, cur)].mean()),
                     "select_alternative": float(per[(param, alt)].mean()), "ci_alt_minus_current": ci,
                     "decision": f"keep {cur}" if not ci["lo"] > 0 else f"switch to {alt}",
                     "test_current_record_only": test[(param, cur)], "test_alternative_record_only": test[(param, alt)]})
    return rows


def main() -> None:
    from crossrec.settings import get_settings

    settings = get_settings()
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=Path, default=Path(settings.work_dir))
    ap.add_argument("--split", type=Path, default=Path(settings.data_dir) / "users_split.json")
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=settings.seed)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--quick", action="store_true", help="synthetic fixture instead of the shared data (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.quick:
        import tempfile

        from crossrec.adaptation.synthetic import write_synthetic

        work = write_synthetic(Path(tempfile.mkdtemp(prefix="bench_defaults_")) / "work", n_users=300, n_items=60, dim=16)
        data = load_adapt_data(work, split_path=work / "users_split.json")
        mcfg = ModelConfig(in_dim=16, dim=16, max_len=20)
        args.max_epochs = min(args.max_epochs, 3)
    else:
        data = load_adapt_data(args.input, settings.encoder, settings.source_domain, settings.target_domain, args.split if args.split.is_file() else None)
        mcfg = ModelConfig(in_dim=int(data.catalog.embeddings.shape[1]))
    rows = decide_defaults(data, mcfg, args.max_epochs, args.seed, args.device, log=console.log)
    table = Table(title="defaults re-decided on the selection set (paired bootstrap, 95% CI)")
    for col in ("default", "current", "alternative", "selection current", "selection alt", "alt - current [CI]", "decision", "test current / alt (record only)"):
        table.add_column(col)
    for r in rows:
        ci = r["ci_alt_minus_current"]
        table.add_row(r["default"], str(r["current"]), str(r["alternative"]), f"{r['select_current']:.4f}", f"{r['select_alternative']:.4f}",
                      f"{ci['diff']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]", r["decision"],
                      f"{r['test_current_record_only']:.4f} / {r['test_alternative_record_only']:.4f}")
    console.print(table)


if __name__ == "__main__":
    main()
