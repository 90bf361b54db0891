"""How much does a user's source-domain history say about their next target-domain item?

    python benchmarks/bench_transfer_signal.py --input var

Training-free scorers on the same split and full-ranking protocol as `crossrec adapt`, so their
NDCG@10 bounds what user-level transfer can add: item-KNN from the target history (the strong
no-transfer baseline), co-occurrence from the *source* history (art item -> office item, counted
over training users), raw text-embedding cosine from either history, and target item-KNN plus a
weighted source term. If the source terms barely move the needle here, a learned model that reads
the source history has little to gain on this data, whatever its architecture.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from crossrec.adaptation.baselines import ItemKNN, Popularity
from crossrec.adaptation.data import SOURCE, TARGET, AdaptData, EvalSet, load_adapt_data, make_eval_set, SPLIT_CODES
from crossrec.evaluation import compute_metrics, rank_batch

console = Console(width=120)


def _train_seqs(data: AdaptData) -> list:
    return [data.users[u] for u in data.split_users["train"] if u in data.users]


def source_histories(data: AdaptData, ev: EvalSet) -> list[np.ndarray]:
    """Each user's source-domain history items, as local source indices."""
    cat = data.catalog
    return [h[cat.domain[h] == SOURCE] - cat.source_offset for h in ev.histories]


def text_cosine(data: AdaptData, ev: EvalSet, dom: int, last: int | None) -> np.ndarray:
    """Cosine of centred frozen text embeddings: sum over the user's last ``last`` items of ``dom``."""
    cat = data.catalog
    emb = torch.from_numpy(cat.embeddings[1:])
    centred = torch.nn.functional.normalize(emb - emb.mean(0), dim=-1)
    q = torch.zeros(len(ev.histories), centred.shape[1])
    for row, hist in enumerate(ev.histories):
        items = hist[cat.domain[hist] == dom]
        items = items[-last:] if last else items
        if items.size:
            q[row] = centred[torch.from_numpy(np.asarray(items - 1, np.int64))].sum(0)
    return (q @ centred[cat.target_offset - 1 :].T).double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=Path, default=Path("var"))
    ap.add_argument("--split", type=Path, default=Path("data/amazon-art-office/users_split.json"))
    ap.add_argument("--encoder", default="minilm")
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = load_adapt_data(args.input, args.encoder, split_path=args.split if args.split.is_file() else None)
    knn = ItemKNN.fit(data, _train_seqs(data))
    cross = ItemKNN.fit(data, _train_seqs(data), history_domain=SOURCE)
    pop = Popularity.fit(data, _train_seqs(data))
    table = Table(title=f"training-free signals, NDCG@10 (full ranking over {data.catalog.n_target} target items, history masked)")
    for col in ("signal", "valid", "test"):
        table.add_column(col, justify="left" if col == "signal" else "right")
    rows: dict[str, list[float]] = {}
    for split in ("valid", "test"):
        ev = make_eval_set(data, data.split_users[split], SPLIT_CODES[split], "mixed", None)
        def ndcg(scores: np.ndarray) -> float:
            return compute_metrics(rank_batch(scores, ev.targets, ev.masks))["NDCG@10"]
        n_tgt = data.catalog.n_target
        tgt_knn = knn.scores(ev.masks)  # masks = the full target history
        src_co = cross.scores(source_histories(data, ev))
        signals = {
            "popularity (training users' target events)": np.broadcast_to(pop.counts, (len(ev.targets), n_tgt)),
            "item-KNN from the target history (no transfer)": tgt_knn,
            "co-occurrence from the source history": src_co,
            "text cosine, last target item": text_cosine(data, ev, TARGET, 1),
            "text cosine, whole source history": text_cosine(data, ev, SOURCE, None),
        }
        for w in (0.1, 0.2, 0.5, 1.0):
            signals[f"item-KNN target + {w:g} x source co-occurrence"] = tgt_knn + w * src_co
        for name, scores in signals.items():
            rows.setdefault(name, []).append(ndcg(scores))
    base = rows["item-KNN from the target history (no transfer)"]
    for name, (valid, test) in rows.items():
        rel = f"  ({test / base[1] - 1:+.1%} vs item-KNN)" if name.startswith("item-KNN target +") else ""
        table.add_row(name, f"{valid:.4f}", f"{test:.4f}{rel}")
    console.print(table)
    console.print(f"{len(data.split_users['valid'])} valid / {len(data.split_users['test'])} test users; {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
