"""Incremental item embedding: a driver-side plan in Arrow, the embedding on Spark (or locally).

Contract (design.md): input = cleaned ``items/`` parquet (domain, item_id, text, ...); output =
``{output}/{encoder}/`` parquet with domain, item_id, embedding (list<float32>), text_hash (sha256
of text), encoder, event_timestamp (UTC, the time the vector was computed), plus encoder_version
(the encoder's weights/pooling/dtype fingerprint) so the next run can tell a changed encoder.

Incremental rule: an item is re-embedded only when its (text_hash, encoder_version) differs from
the previous output; otherwise its previous vector AND its previous event_timestamp are kept, so
Feast's incremental materialisation only ships the changed rows. Items gone from the catalogue
are dropped (counted). The new output is written to a temporary directory and swapped in, so a
failed run never leaves a half-written embeddings table behind.

Why the plan is Arrow on the driver and not Spark: deciding what to re-embed only needs four
short string columns (a few MB even for the full catalogue); as Spark jobs (read, group, join,
cache, two counts) it cost seconds of fixed latency per nightly run, more than embedding a 1 %
delta. The heavy part stays on Spark: a delta larger than ``local_max_items`` (a first run, a
new encoder) is embedded by Spark tasks, one model per Python worker. A small delta is embedded
in the driver process with the same encoder code and all its cores, because starting Spark
tasks (and their models) would cost more than the work. Kept vectors never pass through Spark
or Python objects: previous output files that hold no stale row are hard-linked into the new
output unchanged, the others are filtered in Arrow.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from crossrec.console import console
from crossrec.embedding.hashing import text_hash
from crossrec.embedding.progress import local_progress, spark_progress
from crossrec.embedding.worker import WorkerSpec, embedded_batch, load_encoder, make_embed_fn
from crossrec.encoders import encoder_version

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

EMBEDDING_COLUMNS = ("domain", "item_id", "embedding", "text_hash", "encoder", "event_timestamp", "encoder_version")
REQUIRED_INPUT = ("domain", "item_id", "text")
KEYS = ["domain", "item_id"]
# The schema Spark writes (and pyarrow reads back); driver-written files use it too, so one
# output directory never mixes two spellings of the same table.
OUTPUT_SCHEMA = pa.schema([
    ("domain", pa.string()), ("item_id", pa.string()), ("embedding", pa.list_(pa.field("element", pa.float32()))),
    ("text_hash", pa.string()), ("encoder", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
    ("encoder_version", pa.string()),
])
# pyarrow writes: like Spark's (snappy), with dictionaries only for the repetitive string columns
WRITE_OPTIONS = {"compression": "snappy", "use_dictionary": ["domain", "encoder", "encoder_version"]}
LOCAL_MAX_ITEMS = 2000  # deltas up to this size are embedded in the driver (see the module doc)


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
    embedded_on: str = "spark"  # "spark" | "driver" | "none": where the delta was embedded

    @property
    def items_per_s(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else float("nan")


def output_dir_for(output: str | Path, encoder: str) -> Path:
    return Path(output) / encoder


@dataclass
class _Items:
    table: pa.Table  # domain, item_id, text, text_hash: one row per key
    items_in: int
    skipped: int
    duplicates: int


def _read_items(input_dir: Path) -> _Items:
    """Valid items, one row per (domain, item_id), with the sha256 of their text.

    The same rules the Spark version of this job applied (and ``text_hash`` documents): text is
    trimmed of spaces, an empty text falls back to the trimmed title, rows without text, id or
    domain are skipped, and duplicated ids keep their smallest text (code-point order, as Spark's
    ``min`` on UTF-8).
    """
    if not Path(input_dir).exists():
        raise ValueError(f"{input_dir}: items input does not exist")
    dataset = ds.dataset(str(input_dir), format="parquet", partitioning="hive")
    names = set(dataset.schema.names)
    missing = [c for c in REQUIRED_INPUT if c not in names]
    if missing:
        raise ValueError(f"{input_dir}: items input lacks column(s) {missing}; expected the clean items contract")
    cols = [*REQUIRED_INPUT, *(["title"] if "title" in names else [])]
    raw = dataset.to_table(columns=cols)
    text = pc.utf8_trim(raw["text"].cast(pa.string()), characters=" ")
    if "title" in cols:
        text = pc.coalesce(pc.if_else(pc.equal(text, ""), None, text), pc.utf8_trim(raw["title"].cast(pa.string()), characters=" "))
    table = pa.table({"domain": raw["domain"].cast(pa.string()), "item_id": raw["item_id"].cast(pa.string()), "text": text})
    ok = pc.and_(pc.and_(pc.is_valid(text), pc.not_equal(text, "")), pc.and_(pc.is_valid(table["item_id"]), pc.is_valid(table["domain"])))
    ok = pc.fill_null(ok, False)
    table = table.filter(ok)
    items_in, n_ok = raw.num_rows, table.num_rows
    if n_ok:
        g = table.group_by(KEYS).aggregate([("text", "min")])
        table = pa.table({"domain": g["domain"], "item_id": g["item_id"], "text": g["text_min"]})
    hashes = pa.array([text_hash(t) for t in table["text"].to_pylist()], pa.string())
    return _Items(table.append_column("text_hash", hashes), items_in, items_in - n_ok, n_ok - table.num_rows)


def _previous_files(out_dir: Path) -> list[Path]:
    """The previous output's parquet files, or [] when there is none we can trust."""
    if not out_dir.is_dir():
        return []
    files = sorted(p for p in out_dir.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files or "encoder_version" not in pq.read_schema(files[0]).names:
        return []  # written by something else: cannot trust it
    return files


@dataclass
class _Plan:
    todo: pa.Table  # domain, item_id, text, text_hash
    kept: int
    removed: int
    stale: pa.Table  # keys of previous rows that must not be carried over (changed or removed)


def _plan(items: pa.Table, prev_files: list[Path], version: str) -> _Plan:
    """Classify every key: todo (new, changed text or encoder), kept, or removed."""
    if not prev_files:
        return _Plan(items, 0, 0, items.select(KEYS).slice(0, 0))
    prev = ds.dataset([str(p) for p in prev_files], format="parquet").to_table(
        columns=[*KEYS, "text_hash", "encoder_version"])
    prev = prev.rename_columns([*KEYS, "_prev_hash", "_prev_version"])
    prev = prev.append_column("_in_prev", pa.array(np.ones(prev.num_rows, dtype=bool)))
    joined = items.join(prev, keys=KEYS, join_type="full outer")
    removed = pc.is_null(joined["text"])
    same = pc.and_(pc.equal(joined["_prev_hash"], joined["text_hash"]), pc.equal(joined["_prev_version"], version))
    kept = pc.fill_null(pc.and_(pc.invert(removed), same), False)
    todo = pc.and_(pc.invert(removed), pc.invert(kept))
    had_prev = pc.fill_null(joined["_in_prev"], False)
    stale = joined.filter(pc.and_(had_prev, pc.invert(kept))).select(KEYS)
    return _Plan(
        todo=joined.filter(todo).select(["domain", "item_id", "text", "text_hash"]),
        kept=pc.sum(kept).as_py() or 0, removed=pc.sum(removed).as_py() or 0, stale=stale,
    )


def embed_items(
    spark: SparkSession | Callable[[], SparkSession],
    input_dir: str | Path,
    output: str | Path,
    encoder: str = "minilm",
    *,
    dtype: str = "fp32",
    cache_dir: str | Path,
    batch_size: int | None = None,
    rows_per_partition: int = 4096,
    full: bool = False,
    local_max_items: int = LOCAL_MAX_ITEMS,
) -> EmbedStats:
    """Embed every item whose text or encoder changed since the last run; keep the rest.

    ``full=True`` ignores the previous output (re-embeds everything). ``batch_size`` caps texts
    per forward batch (None: the encoder's token budget decides). Deltas of at most
    ``local_max_items`` items are embedded in this process, larger ones by Spark tasks of
    ``rows_per_partition`` items. ``spark`` may be a factory: it is then only called when the
    delta needs Spark, so a nightly run with nothing or little to embed never pays the JVM's
    start (~6 s, more than embedding a 1 % delta). Returns run statistics.
    """
    t0 = time.perf_counter()
    out_dir = output_dir_for(output, encoder)
    cache_dir = Path(cache_dir)
    version = encoder_version(encoder, dtype, cache_dir)  # also converts SmolLM2 once, on the driver
    run_ts = datetime.now(timezone.utc).replace(microsecond=0)

    items = _read_items(Path(input_dir))
    prev_files = [] if full else _previous_files(out_dir)
    plan = _plan(items.table, prev_files, version)
    n_todo = plan.todo.num_rows

    def stats(embedded_on: str, embed_seconds: float) -> EmbedStats:
        s = EmbedStats(
            encoder=encoder, encoder_version=version, output=str(out_dir), items_in=items.items_in,
            embedded=n_todo, kept=plan.kept, removed=plan.removed, skipped_no_text=items.skipped,
            duplicates=items.duplicates, seconds=time.perf_counter() - t0, embed_seconds=embed_seconds,
            run_timestamp=run_ts.isoformat(), embedded_on=embedded_on,
        )
        _finish(s, out_dir)
        return s

    if n_todo == 0 and plan.removed == 0 and prev_files:
        return stats("none", 0.0)  # nothing changed: the previous output is already the answer

    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        t_embed = time.perf_counter()
        where = "none"
        spec = WorkerSpec(encoder=encoder, dtype=dtype, cache_dir=str(cache_dir), batch_size=batch_size, version=version)
        if n_todo and n_todo <= local_max_items:
            where = "driver"
            _embed_local(plan.todo, tmp_dir, spec, run_ts)
        elif n_todo:
            where = "spark"
            _embed_spark(spark() if callable(spark) else spark, plan.todo, tmp_dir, spec, run_ts, rows_per_partition)
        embed_seconds = time.perf_counter() - t_embed
        tmp_dir.mkdir(parents=True, exist_ok=True)
        if plan.kept:
            _carry_over(prev_files, plan.stale, tmp_dir)
        _swap(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return stats(where, embed_seconds)


def _embed_local(todo: pa.Table, tmp_dir: Path, spec: WorkerSpec, run_ts: datetime) -> None:
    """Embed a small delta here, with every core of this process, and write it as one file."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    enc = load_encoder(spec, threads)
    n = todo.num_rows
    with local_progress(f"embedding {n} items ({spec.encoder}, {spec.dtype}, in the driver)", n) as advance:
        vecs = enc.encode(todo["text"].to_pylist(), spec.batch_size, on_batch=advance)
    table = pa.Table.from_batches([embedded_batch(todo, vecs, spec)]).append_column(
        "event_timestamp", pa.array([run_ts] * n, pa.timestamp("us", tz="UTC")))
    tmp_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.select(list(EMBEDDING_COLUMNS)).cast(OUTPUT_SCHEMA),
                   tmp_dir / f"part-driver-{uuid.uuid4().hex[:8]}.snappy.parquet", **WRITE_OPTIONS)


def _embed_spark(spark: SparkSession, todo: pa.Table, tmp_dir: Path, spec: WorkerSpec, run_ts: datetime,
                 rows_per_partition: int) -> None:
    """Embed a large delta with Spark: equal-cost tasks, one model per Python worker.

    The texts reach the workers as parquet shards next to the output, one per task, and a task
    carries only its shard's path. Building the DataFrame from the driver's table instead put
    every text inside the serialised tasks (Spark warned of 1.2 MB tasks at 38k items; at
    millions of items that is hundreds of MB through the scheduler), and the output directory
    already has to be storage every worker can reach.
    """
    from pyspark.sql import functions as F

    n_todo = todo.num_rows
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    schema = "domain string, item_id string, embedding array<float>, text_hash string, encoder string, encoder_version string"
    # Tasks: a multiple of the cores, each of at most rows_per_partition items, all of the same
    # cost: texts are dealt round-robin by length (longest first), so every task gets the same
    # mix of long and short texts and the workers finish together; the encoder then batches each
    # task's texts by exact token length itself. Few, large tasks: each task costs ~0.5 s of
    # Spark scheduling and Python-worker hand-over (measured between tasks under load), so on
    # 4k items 2 tasks ran 8 % faster than 8.
    cores = max(1, spark.sparkContext.defaultParallelism)
    n_parts = cores * max(1, math.ceil(n_todo / (cores * max(rows_per_partition, 1))))
    shard_dir = shard_dir_for(tmp_dir)
    try:
        shards = write_shards(todo, n_parts, shard_dir)
        # one path per slice: parallelize cuts a list of n_parts elements into n_parts partitions
        paths = spark.createDataFrame(spark.sparkContext.parallelize([(str(x),) for x in shards], len(shards)), "path string")
        embedded = paths.mapInArrow(make_embed_fn(spec), schema).select(
            "domain", "item_id", "embedding", "text_hash", "encoder",
            F.lit(run_ts).cast("timestamp").alias("event_timestamp"), "encoder_version",
        )
        with spark_progress(spark, f"embedding {n_todo} items ({spec.encoder}, {spec.dtype})",
                            f"crossrec-embed-{uuid.uuid4().hex[:6]}"):
            # no dictionary encoding: parquet-mr otherwise hashes every float of every vector into a
            # dictionary before giving up on it (half the JVM's CPU in this job, by JFR samples)
            embedded.write.mode("overwrite").option("parquet.enable.dictionary", "false").parquet(str(tmp_dir))
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)


def shard_dir_for(tmp_dir: Path) -> Path:
    """Where a run's input shards live: beside its temporary output, removed when the run ends."""
    return tmp_dir.with_name(f"{tmp_dir.name}.shards")


def write_shards(todo: pa.Table, n_parts: int, shard_dir: Path) -> list[Path]:
    """Deal the delta's rows into ``n_parts`` parquet files of equal cost (round-robin by text
    length, longest first, ties by id) and return their paths; empty shards are not written."""
    by_length = np.asarray(pc.sort_indices(
        pa.table({"n": pc.utf8_length(todo["text"]), "id": todo["item_id"]}),
        sort_keys=[("n", "descending"), ("id", "ascending")]))
    shard_dir.mkdir(parents=True, exist_ok=True)
    inputs = todo.select(["domain", "item_id", "text", "text_hash"])
    paths = []
    for k in range(n_parts):
        rows = by_length[k::n_parts]
        if len(rows):
            paths.append(shard_dir / f"shard-{k:05d}.parquet")
            pq.write_table(inputs.take(rows), paths[-1])
    return paths


def _carry_over(prev_files: list[Path], stale: pa.Table, tmp_dir: Path) -> None:
    """Put the previous output's still-valid rows into ``tmp_dir`` without re-encoding vectors.

    A file with no stale row is hard-linked (no bytes rewritten); a file with some is read,
    filtered and written again. The vectors and event_timestamps stay exactly as they were.
    """
    stale_keys = pc.binary_join_element_wise(stale["domain"], stale["item_id"], "\x1f")
    tag = uuid.uuid4().hex[:8]
    for i, path in enumerate(prev_files):
        keys = pq.read_table(path, columns=KEYS)
        hit = pc.is_in(pc.binary_join_element_wise(keys["domain"], keys["item_id"], "\x1f"), value_set=stale_keys)
        n_hit = pc.sum(hit).as_py() or 0
        target = tmp_dir / f"part-kept-{i:05d}-{tag}.snappy.parquet"
        if n_hit == 0:
            try:
                os.link(path, target)
            except OSError:  # another filesystem, or no hard links: copy
                shutil.copy2(path, target)
        elif n_hit < keys.num_rows:
            table = pq.read_table(path).select(list(EMBEDDING_COLUMNS)).filter(pc.invert(hit))
            pq.write_table(table.cast(OUTPUT_SCHEMA), target, **WRITE_OPTIONS)


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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
