"""Embedding throughput: the Spark job vs a plain loop, vs the CPU's matmul roofline, bf16, incremental.

    python benchmarks/bench_embed.py [--quick] [--input DIR] [--limit N] [--encoder minilm]

Every figure is a ratio against a baseline measured in this same process (the machine is shared,
absolute numbers drift):
  * Spark job items/s  /  plain single-process loop items/s (same items, same encoder, all cores)
  * achieved encoder GFLOP/s (executed matmul FLOPs of the padded batches)  /  fp32 matmul GFLOP/s
  * bf16 speed-up over fp32 (interleaved, one thread by default = a Spark worker), mean/min cosine of bf16 vectors to fp32 ones
  * incremental run with 1 % of texts changed  /  full run (whole job wall time)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.table import Table

from crossrec.console import console
from crossrec.encoders import get_encoder
from crossrec.settings import get_settings


def matmul_gflops(dtype: torch.dtype, n: int = 1024, seconds: float = 3.0) -> float:
    """Best-of sustained GFLOP/s of an n x n matmul with all torch threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def executed_flops(enc, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(executed, useful) matmul FLOPs of ``enc.encode(texts)``: linear layers 2*T*in*out per token,
    attention 2*2*T^2*hidden per layer per sequence; executed counts padded tokens, useful does not."""
    linear = sum(m.in_features * m.out_features for m in enc.model.modules() if isinstance(m, torch.nn.Linear))
    cfg = enc.model.config
    hidden, layers = cfg.hidden_size, cfg.num_hidden_layers
    lengths = enc.token_lengths(texts)
    order = np.argsort(lengths, kind="stable")  # the batching of TextEncoder.encode_raw
    executed = useful = 0.0
    for start in range(0, len(texts), batch_size):
        lens = [lengths[i] for i in order[start : start + batch_size]]
        T = max(lens)
        executed += len(lens) * (2 * T * linear + 4 * T * T * hidden * layers)
        useful += sum(2 * t * linear + 4 * t * t * hidden * layers for t in lens)
    return executed, useful


def load_items(path: Path, limit: int | None) -> pd.DataFrame:
    df = pd.read_parquet(path, columns=["item_id", "text", "domain"])
    df["domain"] = df["domain"].astype(str)
    df = df.sort_values("item_id", kind="stable").reset_index(drop=True)
    return df.head(limit) if limit else df


def write_items(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(path, ignore_errors=True)
    pq.write_to_dataset(pa.Table.from_pandas(df, preserve_index=False), str(path), partition_cols=["domain"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, default=None, help="clean items (default {work_dir}/clean/items)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bf16-limit", type=int, default=5000, help="items for the bf16 comparison")
    p.add_argument("--bf16-threads", type=int, default=1,
                   help="torch threads for the bf16 comparison (1 = how Spark workers run it)")
    p.add_argument("--quick", action="store_true", help="2,000 items, 1,000 for bf16")
    args = p.parse_args()
    if args.quick:
        args.limit, args.bf16_limit = args.limit or 2000, 1000

    settings = get_settings()
    work = Path(settings.work_dir)
    cache = work / "cache" / "models"
    items = load_items(args.input or work / "clean" / "items", args.limit)
    texts = items["text"].tolist()
    cores = torch.get_num_threads()
    console.print(f"{len(texts)} items, encoder {args.encoder}, {cores} torch threads for the loop")

    rows: list[tuple[str, str, str, str]] = []

    # 1. roofline
    fp32_peak = matmul_gflops(torch.float32)
    bf16_peak = matmul_gflops(torch.bfloat16)

    # 2. plain loop (model load excluded: it is a one-off in both)
    enc = get_encoder(args.encoder, threads=cores, cache_dir=cache)
    enc.encode(texts[:64], args.batch_size)
    t = time.perf_counter()
    ref = enc.encode(texts, args.batch_size)
    loop_s = time.perf_counter() - t
    loop_ips = len(texts) / loop_s
    executed, useful = executed_flops(enc, texts, args.batch_size)
    achieved = executed / loop_s / 1e9

    # 3. bf16 on a subset, against fp32 on the same subset
    # interleaved in chunks so that load drift on a shared machine hits both paths alike
    sub = texts[: args.bf16_limit]
    enc = get_encoder(args.encoder, threads=args.bf16_threads, cache_dir=cache)
    enc16 = get_encoder(args.encoder, dtype="bf16", threads=args.bf16_threads, cache_dir=cache)
    enc16.encode(sub[:64], args.batch_size)
    fp32_parts, bf_parts, fp32_sub_s, bf16_s = [], [], 0.0, 0.0
    for start in range(0, len(sub), 500):
        chunk = sub[start : start + 500]
        t = time.perf_counter()
        fp32_parts.append(enc.encode(chunk, args.batch_size))
        fp32_sub_s += time.perf_counter() - t
        t = time.perf_counter()
        bf_parts.append(enc16.encode(chunk, args.batch_size))
        bf16_s += time.perf_counter() - t
    fp32_sub, bf = np.concatenate(fp32_parts), np.concatenate(bf_parts)
    cos = (bf * fp32_sub).sum(axis=1)

    # 4. Spark job: full run, then an incremental run with 1 % of texts changed
    from crossrec.embedding import embed_items, output_dir_for
    from crossrec.spark import spark_session

    spark = spark_session(settings, "crossrec-bench-embed")
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        write_items(items, tmp / "items")
        # warm the session and the Python workers on a handful of items (a nightly job's JVM is warm too)
        write_items(items.head(8), tmp / "warm")
        embed_items(spark, tmp / "warm", tmp / "warm_out", args.encoder, cache_dir=cache, full=True)
        t = time.perf_counter()
        full = embed_items(spark, tmp / "items", tmp / "emb", args.encoder, cache_dir=cache, full=True,
                           batch_size=args.batch_size)
        full_s = time.perf_counter() - t
        spark_vecs = pd.read_parquet(output_dir_for(tmp / "emb", args.encoder)).set_index("item_id")
        spark_vs_loop_cos = float(
            (np.stack(spark_vecs.loc[items["item_id"], "embedding"].to_numpy()) * ref).sum(axis=1).min()
        )

        changed = items.copy()
        rng = np.random.default_rng(0)
        pick = rng.choice(len(changed), size=max(1, len(changed) // 100), replace=False)
        changed.loc[pick, "text"] = changed.loc[pick, "text"] + " | revised"
        write_items(changed, tmp / "items")
        t = time.perf_counter()
        inc = embed_items(spark, tmp / "items", tmp / "emb", args.encoder, cache_dir=cache, batch_size=args.batch_size)
        inc_s = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    spark_ips = full.embedded / full_s
    rows += [
        ("fp32 matmul roofline", f"{fp32_peak:.0f} GFLOP/s", "baseline", ""),
        ("bf16 matmul", f"{bf16_peak:.0f} GFLOP/s", f"{bf16_peak / fp32_peak:.2f}x fp32", ""),
        ("plain loop (fp32)", f"{loop_ips:.0f} items/s ({loop_s:.1f} s)", "baseline", ""),
        ("encoder achieved (loop, executed FLOPs)", f"{achieved:.0f} GFLOP/s",
         f"{achieved / fp32_peak:.2f} of fp32 roofline", "target >= 0.90"),
        ("encoder achieved (Spark job, same FLOPs)", f"{executed / full_s / 1e9:.0f} GFLOP/s",
         f"{executed / full_s / 1e9 / fp32_peak:.2f} of fp32 roofline", "target >= 0.90"),
        ("  padding share of executed FLOPs", f"{1 - useful / executed:.1%}", "", ""),
        ("Spark job, full (whole job wall)", f"{spark_ips:.0f} items/s ({full_s:.1f} s)",
         f"{spark_ips / loop_ips:.2f}x loop", "target >= 0.95"),
        ("Spark job, embed stage only", f"{full.items_per_s:.0f} items/s ({full.embed_seconds:.1f} s)",
         f"{full.items_per_s / loop_ips:.2f}x loop", ""),
        ("Spark vs loop vectors", f"min cos {spark_vs_loop_cos:.6f}", "", ""),
        (f"bf16 loop ({len(sub)} items, {args.bf16_threads} thread(s))", f"{len(sub) / bf16_s:.0f} items/s",
         f"{fp32_sub_s / bf16_s:.2f}x fp32", "target >= 1.8"),
        ("bf16 vs fp32 cosine", f"mean {cos.mean():.5f}, min {cos.min():.5f}", "", "target mean >= 0.995"),
        (f"incremental, 1% changed ({inc.embedded} items)", f"{inc_s:.1f} s",
         f"{inc_s / full_s:.1%} of full", "target <= 5%"),
    ]
    table = Table(title=f"bench_embed: {len(texts)} items, {args.encoder}, {cores} cores")
    for col in ("measure", "value", "ratio", "target"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)


if __name__ == "__main__":
    main()
