"""The clean job: raw multi-domain logs in, contract parquet + quarantine + summary out.

Stages (each labels rows rather than filtering them, so every input row ends up either in an
output table or in the quarantine with exactly one reason):

1. discover and read every events/items file as strings (``readers``)
2. items: normalise text, require item_id/domain/title, drop duplicate items (``validate``)
3. events: normalise ids/timestamps/ratings, check domain and item against the kept catalogue
4. drop exact then near duplicates (``dedupe``); optionally the per-domain k-core (``kcore``)
5. time-order each user, assign positions and the leave-last-out split (``split``)
6. write items/, events/, sequences/, splits/, quarantine/ and summary.json

Output layout under ``output_dir`` (the design's clean contract):
``items/`` and ``events/`` parquet partitioned by domain, ``sequences/`` parquet,
``splits/`` parquet partitioned by split (valid/test rows only, a convenience view of
``events.split``), ``quarantine/`` JSON lines, ``summary.json``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from rich.console import Console

from crossrec.cleaning import reasons as R
from crossrec.cleaning.dedupe import label_duplicates
from crossrec.cleaning.kcore import kcore_filter
from crossrec.cleaning.readers import UnreadableFile, discover_inputs, read_raw
from crossrec.cleaning.split import assign_positions_and_splits, build_sequences
from crossrec.cleaning.summary import NO_DOMAIN, CleanSummary, DomainCounts, SourceCounts
from crossrec.cleaning.validate import label_events, label_items
from crossrec.console import console as default_console
from crossrec.settings import Settings

DEFAULT_NEAR_DUP_WINDOW_S = 60.0
ITEM_COLUMNS = ("item_id", "title", "attributes", "category", "brand", "text", "domain")
EVENT_COLUMNS = (
    "event_id", "user_id", "item_id", "event_type", "ts", "ts_ms", "rating", "position", "split",
    "domain",
)
QUARANTINE_COLUMNS = ("source", "reason", "domain", "raw")


@contextmanager
def _step(console: Console, label: str) -> Iterator[None]:
    """A spinner while a stage runs, then one line with its duration (Spark stages are slow)."""
    start = time.perf_counter()
    with console.status(f"[bold]clean[/]: {label} ..."):
        yield
    console.print(f"  [dim]clean: {label} ({time.perf_counter() - start:.1f} s)[/]")


def _write_parquet(df: DataFrame, path: Path, partition_by: str | None = None,
                   sort_by: tuple[str, ...] = ()) -> None:
    # Static overwrite: the session default is dynamic (other jobs append partitions), but a
    # clean run must replace its whole output, or a domain dropped from the input would linger.
    writer_df = df.repartition(partition_by) if partition_by else df
    if sort_by:
        writer_df = writer_df.sortWithinPartitions(*sort_by)
    writer = writer_df.write.mode("overwrite").option("partitionOverwriteMode", "static")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    writer.parquet(str(path))


def _unreadable_rows(spark: SparkSession, files: list[UnreadableFile]) -> DataFrame:
    rows = [(f.kind, R.UNREADABLE_FILE, None, f"{f.path}: {f.error}") for f in files]
    return spark.createDataFrame(
        rows, "source string, reason string, domain string, raw string"
    )


def _quarantine(source: str, df: DataFrame) -> DataFrame:
    return df.select(F.lit(source).alias("source"), "reason", "domain", "raw")


def _domain_counts(df: DataFrame) -> dict[str, int]:
    return {(r["domain"] or NO_DOMAIN): r["count"] for r in df.groupBy("domain").count().collect()}


def run_clean(
    spark: SparkSession,
    settings: Settings,
    input_dir: Path | str,
    output_dir: Path | str,
    *,
    near_dup_window_s: float | None = DEFAULT_NEAR_DUP_WINDOW_S,
    kcore: int | None = None,
    console: Console | None = None,
) -> CleanSummary:
    """Clean every events/items file in ``input_dir`` into ``output_dir``; returns the summary.

    ``near_dup_window_s``: same user/item/type repeats within this many seconds are near
    duplicates (None disables). ``kcore``: per-domain k-core on the kept events (None/0 = off).
    Raises only for unusable arguments (missing input dir, no events files); bad rows and even
    unreadable files become quarantine records.
    """
    out = console or default_console
    started = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    files = discover_inputs(input_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Parquet TIMESTAMP_MICROS (UTC-adjusted) rather than legacy INT96, so pandas/pyarrow readers
    # get a tz-aware UTC column as the contract says.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    target = settings.target_domain.strip().lower()
    persisted: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        persisted.append(df.persist())
        return df

    try:
        with _step(out, f"items: read + validate ({sum(f.kind == 'items' for f in files)} files)"):
            items_raw, bad_items = read_raw(spark, files, "items")
            items_lab = keep(label_items(items_raw))
            items_kept = items_lab.filter(F.col("reason").isNull()).select(*ITEM_COLUMNS)
            catalogue_domains = {r["domain"] for r in items_kept.select("domain").distinct().collect()}
        known_domains = sorted(catalogue_domains | {d.strip().lower() for d in settings.domains})

        with _step(out, f"events: read + validate ({sum(f.kind == 'events' for f in files)} files)"):
            events_raw, bad_events = read_raw(spark, files, "events")
            events_lab = keep(label_events(events_raw, known_domains, items_kept.select("domain", "item_id")))
            events_in = _domain_counts(events_lab)
        with _step(out, "events: de-duplicate" + (f" + {kcore}-core" if kcore else "")):
            deduped = keep(label_duplicates(events_lab.filter(F.col("reason").isNull()),
                                            near_dup_window_s))
            kept = deduped.filter(F.col("reason").isNull())
            rejected_events = [events_lab.filter(F.col("reason").isNotNull()),
                               deduped.filter(F.col("reason").isNotNull())]
            if kcore:
                kept, removed = kcore_filter(kept, kcore)
                rejected_events.append(removed)
            final = keep(
                assign_positions_and_splits(kept, target)
                .withColumn("ts", F.timestamp_millis("ts_ms"))
                .select(*EVENT_COLUMNS)
            )
            events_kept = _domain_counts(final)

        with _step(out, "write items, events, sequences, splits"):
            _write_parquet(items_kept, output_dir / "items", "domain", ("item_id",))
            _write_parquet(final, output_dir / "events", "domain", ("user_id", "position"))
            sequences = keep(build_sequences(final))
            _write_parquet(sequences, output_dir / "sequences", sort_by=("user_id",))
            split_rows = final.filter(F.col("split") != "train").select(
                "user_id", "domain", "item_id", "event_id", "ts_ms", "position", "split"
            )
            _write_parquet(split_rows, output_dir / "splits", "split", ("user_id",))
            users = sequences.count()
            splits = {r["split"]: r["count"] for r in final.groupBy("split").count().collect()}

        with _step(out, "write quarantine + summary"):
            parts = [_quarantine("events", df) for df in rejected_events]
            parts.append(_quarantine("items", items_lab.filter(F.col("reason").isNotNull())))
            parts.append(_unreadable_rows(spark, bad_items + bad_events))
            quarantine = keep(reduce(DataFrame.unionByName, parts).select(*QUARANTINE_COLUMNS))
            quarantine.coalesce(1).write.mode("overwrite").option("ignoreNullFields", "false").json(
                str(output_dir / "quarantine")
            )
            rejected = quarantine.groupBy("source", "domain", "reason").count().collect()
            items_in = _domain_counts(items_lab)
            items_kept_n = _domain_counts(items_kept)
    finally:
        for df in persisted:
            df.unpersist()

    summary = _summarise(
        events_in, events_kept, items_in, items_kept_n, rejected, bad_items, bad_events
    )
    summary.users = users
    summary.splits = {name: splits.get(name, 0) for name in ("train", "valid", "test")}
    summary.near_dup_window_s = near_dup_window_s
    summary.kcore = kcore or None
    summary.inputs = [str(f.path) for f in files]
    summary.output_dir = str(output_dir)
    summary.elapsed_s = round(time.perf_counter() - started, 2)
    summary.write_json(output_dir / "summary.json")
    return summary


def _summarise(events_in: dict[str, int], events_kept: dict[str, int], items_in: dict[str, int],
               items_kept: dict[str, int], rejected: list, bad_items: list[UnreadableFile],
               bad_events: list[UnreadableFile]) -> CleanSummary:
    """Fold the collected counts into a ``CleanSummary`` (unreadable files count as 1 row in)."""
    per_domain: dict[str, DomainCounts] = {}

    def dom(name: str | None) -> DomainCounts:
        return per_domain.setdefault(name or NO_DOMAIN, DomainCounts())

    events = SourceCounts(sum(events_in.values()) + len(bad_events), sum(events_kept.values()))
    items = SourceCounts(sum(items_in.values()) + len(bad_items), sum(items_kept.values()))
    for name, n in events_in.items():
        dom(name).events_in += n
    for name, n in events_kept.items():
        dom(name).events_kept += n
    for name, n in items_in.items():
        dom(name).items_in += n
    for name, n in items_kept.items():
        dom(name).items_kept += n
    if bad_events:
        dom(None).events_in += len(bad_events)
    if bad_items:
        dom(None).items_in += len(bad_items)
    for row in rejected:
        source = events if row["source"] == "events" else items
        reason, n = row["reason"], row["count"]
        source.rejected_by_reason[reason] = source.rejected_by_reason.get(reason, 0) + n
        d = dom(row["domain"])
        d.rejected_by_reason[reason] = d.rejected_by_reason.get(reason, 0) + n
    for counts in (events, items):
        counts.rejected_by_reason = dict(sorted(counts.rejected_by_reason.items()))
    return CleanSummary(events=events, items=items, per_domain=dict(sorted(per_domain.items())))
