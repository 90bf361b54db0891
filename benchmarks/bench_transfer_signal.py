"""How much does a user's source-domain history say about their next target-domain item?

    python benchmarks/bench_transfer_signal.py --input var            # the pair in settings
    CROSSREC_SOURCE_DOMAIN=books CROSSREC_TARGET_DOMAIN=garden python benchmarks/bench_transfer_signal.py --input DIR

The table behind `crossrec diagnose` (crossrec/diagnose.py), printed per user segment: every
training-free signal's test NDCG@10 (popularity, item-KNN from the target history, co-occurrence
from the source history, text cosine to the last target item / the source history / the last item
of either domain), then the fitted target-only blend against the blend that may also read the
source history, with the paired bootstrap CI of the gain. Weights are fitted on the selection set
(training users' held-out last target event), never on test users. The domains come from settings,
so any pair in the raw-log contract runs unchanged.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crossrec.adaptation.data import load_adapt_data
from crossrec.diagnose import ALL_SIGNALS, diagnose_data
from crossrec.settings import get_settings

console = Console(width=160)


def main() -> None:
    settings = get_settings()
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=Path, default=Path(settings.work_dir))
    ap.add_argument("--split", type=Path, default=Path(settings.data_dir) / "users_split.json")
    ap.add_argument("--encoder", default=settings.encoder)
    ap.add_argument("--selection-users", type=int, default=2000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = load_adapt_data(args.input, args.encoder, settings.source_domain, settings.target_domain, args.split if args.split.is_file() else None)
    diag = diagnose_data(data, args.selection_users, say=lambda s: None)
    table = Table(title=f"training-free signals {settings.source_domain} -> {settings.target_domain}, test NDCG@10 (full ranking over {data.catalog.n_target} target items, history masked)")
    table.add_column("user segment")
    table.add_column("n", justify="right")
    for name in ALL_SIGNALS:
        table.add_column(name, justify="right")
    table.add_column("target-only blend", justify="right")
    table.add_column("+ source blend", justify="right")
    table.add_column("gain [95% CI]", justify="right")
    for seg, v in diag["segments"].items():
        if not v.get("n_users"):
            table.add_row(seg, "0", *["-"] * (len(ALL_SIGNALS) + 3))
            continue
        g = v["gain"]
        table.add_row(seg, str(v["n_users"]), *[f"{v['signals_test_ndcg10'][n]:.4f}" for n in ALL_SIGNALS],
                      f"{v['target_only_ndcg10']:.4f}", f"{v['with_source_ndcg10']:.4f}", f"{g['rel']:+.1%} [{g['lo']:+.4f}, {g['hi']:+.4f}]")
    console.print(table)
    console.print(diag["verdict"])
    console.print(f"{len(data.split_users['test'])} test users; {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
