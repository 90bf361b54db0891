"""Incremental item embedding with Spark.

Contract (design.md): input = cleaned ``items/`` parquet (domain, item_id, text, ...); output =
``{output}/{encoder}/`` parquet with domain, item_id, embedding (list<float32>), text_hash (sha256
of text), encoder, event_timestamp (UTC, the time the vector was computed), plus encoder_version
(the encoder's weights/pooling/dtype fingerprint) so the next run can tell a changed encoder.

Incremental rule: an item is re-embedded only when its (text_hash, encoder_version) differs from
the previous output; otherwise its previous vector AND its previous event_timestamp are kept, so
Feast's incremental materialisation only ships the changed rows. Items gone from the catalogue
are dropped (counted). The new output is written to a temporary directory and swapped in, so a
failed run never leaves a half-written embeddings table behind.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from crossrec.console import console
from crossrec.embedding.progress import spark_progress
from crossrec.embedding.worker import WorkerSpec, make_embed_fn
from crossrec.encoders import encoder_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EMBEDDING_COLUMNS = ("domain", "item_id", "embedding", "text_hash", "encoder", "event_timestamp", "encoder_version")
REQUIRED_INPUT = ("domain", "item_id", "text")


@dataclass
class EmbedStats:
    """What a run did; written next to the output as ``{encoder}.last_run.json``."""

    encoder: str
    encoder_version: str
    output: str
    items_in: int
    embedded: int
    kept: int
    removed: int
    skipped_no_text: int
    duplicates: int
    seconds: float
    embed_seconds: float
    run_timestamp: str

    @property
    def items_per_s(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else float("nan")


def output_dir_for(output: str | Path, encoder: str) -> Path:
    return Path(output) / encoder


def _read_items(spark: SparkSession, input_dir: Path) -> tuple[DataFrame, DataFrame]:
    """(valid items, per-row validity flags). Items: one row per (domain, item_id) with text_hash."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(str(input_dir))
    missing = [c for c in REQUIRED_INPUT if c not in df.columns]
    if missing:
        raise ValueError(f"{input_dir}: items input lacks column(s) {missing}; expected the clean items contract")
    text = F.trim(F.col("text"))
    if "title" in df.columns:  # a cleaned item always has text; fall back to the title just in case
        text = F.coalesce(F.when(text != "", text), F.trim(F.col("title")))
    df = df.select("domain", "item_id", text.alias("text"))
    ok = F.col("text").isNotNull() & (F.col("text") != "") & F.col("item_id").isNotNull() & F.col("domain").isNotNull()
    # Duplicated ids (should not survive cleaning): keep the smallest text, deterministically.
    items = (
        df.where(ok).groupBy("domain", "item_id")
        .agg(F.min("text").alias("text"), F.count(F.lit(1)).alias("_copies"))
        .withColumn("text_hash", F.sha2(F.col("text"), 256))
    )
    return items, df.select(ok.alias("_ok"))


def _read_previous(spark: SparkSession, out_dir: Path) -> DataFrame | None:
    if not out_dir.is_dir() or not any(out_dir.glob("*.parquet")):
        return None
    prev = spark.read.parquet(str(out_dir))
    if "encoder_version" not in prev.columns:  # written by something else: cannot trust it
        return None
    return prev


def embed_items(
    spark: SparkSession,
    input_dir: str | Path,
    output: str | Path,
    encoder: str = "minilm",
    *,
    dtype: str = "fp32",
    cache_dir: str | Path,
    batch_size: int = 64,
    rows_per_partition: int = 1024,
    full: bool = False,
) -> EmbedStats:
    """Embed every item whose text or encoder changed since the last run; keep the rest.

    ``full=True`` ignores the previous output (re-embeds everything). Returns run statistics.
    """
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    out_dir = output_dir_for(output, encoder)
    cache_dir = Path(cache_dir)
    version = encoder_version(encoder, dtype, cache_dir)  # also converts SmolLM2 once, on the driver
    run_ts = datetime.now(timezone.utc).replace(microsecond=0)
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")

    items, flags = _read_items(spark, Path(input_dir))
    prev = None if full else _read_previous(spark, out_dir)

    # One small "plan" table: every key of the catalogue and of the previous output, classified.
    # Only hashes and versions are read from the previous output here, not the vectors.
    if prev is not None:
        prev_meta = prev.select(
            "domain", "item_id", F.col("text_hash").alias("_prev_hash"), F.col("encoder_version").alias("_prev_version")
        )
        plan = items.join(prev_meta, ["domain", "item_id"], "full_outer")
        status = (
            F.when(F.col("text").isNull(), F.lit("removed"))
            .when((F.col("_prev_hash") == F.col("text_hash")) & (F.col("_prev_version") == F.lit(version)), F.lit("kept"))
            .otherwise(F.lit("todo"))
        )
        plan = plan.withColumn("_status", status)
    else:
        plan = items.withColumn("_status", F.lit("todo"))
    plan = plan.cache()
    counts = {r["_status"]: (r["n"], r["copies"]) for r in plan.groupBy("_status").agg(
        F.count(F.lit(1)).alias("n"), F.sum("_copies").alias("copies")).collect()}
    flag_counts = {r["_ok"]: r["count"] for r in flags.groupBy("_ok").count().collect()}
    n_todo, n_kept, removed = (counts.get(k, (0, 0))[0] for k in ("todo", "kept", "removed"))
    skipped = flag_counts.get(False, 0)
    items_in = skipped + flag_counts.get(True, 0)
    duplicates = sum((counts.get(k, (0, 0))[1] or 0) for k in ("todo", "kept")) - n_todo - n_kept

    if n_todo == 0 and removed == 0 and prev is not None:
        # Nothing changed: the previous output is already the answer; don't rewrite 60 MB.
        plan.unpersist()
        stats = EmbedStats(
            encoder=encoder, encoder_version=version, output=str(out_dir), items_in=items_in, embedded=0,
            kept=n_kept, removed=0, skipped_no_text=skipped, duplicates=duplicates,
            seconds=time.perf_counter() - t0, embed_seconds=0.0, run_timestamp=run_ts.isoformat(),
        )
        _finish(stats, out_dir)
        return stats

    todo = plan.where(F.col("_status") == "todo").select("domain", "item_id", "text", "text_hash")
    kept = None
    if prev is not None and n_kept:
        kept_keys = plan.where(F.col("_status") == "kept").select("domain", "item_id")
        # keys are tiny next to the vectors: broadcast them so the 60 MB of vectors never shuffle
        kept = prev.join(F.broadcast(kept_keys), ["domain", "item_id"], "left_semi").select(
            "domain", "item_id", "embedding", "text_hash", F.lit(encoder).alias("encoder"),
            "event_timestamp", "encoder_version",
        )

    spec = WorkerSpec(encoder=encoder, dtype=dtype, cache_dir=str(cache_dir), batch_size=batch_size, version=version)
    schema = "domain string, item_id string, embedding array<float>, text_hash string, encoder string, encoder_version string"
    # At least one partition per core even for a small delta, so every worker shares the work.
    n_parts = max(1, min(n_todo, spark.sparkContext.defaultParallelism), math.ceil(n_todo / max(rows_per_partition, 1)))
    # Range-partition by text length, longest first: batches pad less, and the slow partitions
    # run first so the tail of the stage is short, cheap tasks (both workers busy to the end).
    todo = todo.repartitionByRange(n_parts, F.length("text").desc(), F.col("item_id"))
    embedded = todo.mapInArrow(make_embed_fn(spec), schema).select(
        "domain", "item_id", "embedding", "text_hash", "encoder",
        F.lit(run_ts).cast("timestamp").alias("event_timestamp"), "encoder_version",
    )
    result = embedded if kept is None else embedded.unionByName(kept)
    if n_todo == 0 and kept is not None:
        result = kept  # only removals: skip the (empty) embedding stage entirely

    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    t_embed = time.perf_counter()
    with spark_progress(spark, f"embedding {n_todo} items ({encoder}, {dtype})", f"crossrec-embed-{uuid.uuid4().hex[:6]}"):
        result.write.mode("overwrite").parquet(str(tmp_dir))
    embed_seconds = time.perf_counter() - t_embed
    _swap(tmp_dir, out_dir)
    plan.unpersist()

    stats = EmbedStats(
        encoder=encoder, encoder_version=version, output=str(out_dir), items_in=items_in,
        embedded=n_todo, kept=n_kept, removed=removed, skipped_no_text=skipped, duplicates=duplicates,
        seconds=time.perf_counter() - t0, embed_seconds=embed_seconds, run_timestamp=run_ts.isoformat(),
    )
    _finish(stats, out_dir)
    return stats


def _finish(stats: EmbedStats, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    out_dir.with_name(f"{out_dir.name}.last_run.json").write_text(json.dumps(asdict(stats), indent=2))
    if stats.skipped_no_text or stats.duplicates:
        console.print(
            f"[yellow]embed:[/] skipped {stats.skipped_no_text} item(s) without text, "
            f"{stats.duplicates} duplicate id row(s) merged"
        )


def _swap(tmp_dir: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp_dir`` (the previous output was fully read by now)."""
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
