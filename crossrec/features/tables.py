"""Offline feature tables for Feast, computed with pandas from the cleaned events.

Why pandas and not Spark: 200k events and 10k users fit in memory many times over, and a Spark
session would cost more than the computation. Only ``train``-split events are used by default, so
that features served to the evaluation never contain the held-out valid/test events.

``event_timestamp`` of every row is the computation time: these tables are snapshots "as of
tonight", and Feast's ttl then says how long a snapshot may be served.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

EVENT_COLUMNS = ("user_id", "item_id", "domain", "ts_ms", "split")
DAY_MS = 86_400_000


def read_events(events_dir: Path, splits: Sequence[str] | None = ("train",)) -> pd.DataFrame:
    """Cleaned events (clean contract) restricted to ``splits`` (None = all)."""
    events_dir = Path(events_dir)
    if not events_dir.exists():
        raise FileNotFoundError(f"events input {events_dir} does not exist (run `crossrec clean` first)")
    df = pd.read_parquet(events_dir)
    missing = [c for c in EVENT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{events_dir}: events lack column(s) {missing}; expected the clean events contract")
    df = df[list(EVENT_COLUMNS) + (["position"] if "position" in df.columns else [])].copy()
    for col in ("user_id", "item_id", "domain", "split"):
        df[col] = df[col].astype(str)
    if splits is not None:
        df = df[df["split"].isin(list(splits))]
    return df


def item_stats(events: pd.DataFrame, as_of: datetime | None = None) -> pd.DataFrame:
    """Per item: interactions, distinct users, popularity (share of the domain's top item), rank
    within the domain, last event time and recency relative to the domain's last event."""
    as_of = as_of or datetime.now(timezone.utc)
    g = events.groupby(["domain", "item_id"], sort=False)
    stats = g.agg(interactions=("user_id", "size"), users=("user_id", "nunique"), last_interaction_ts_ms=("ts_ms", "max"))
    stats = stats.reset_index()
    by_domain = stats.groupby("domain")
    stats["popularity"] = (stats["interactions"] / by_domain["interactions"].transform("max")).astype(np.float32)
    stats["popularity_rank"] = by_domain["interactions"].rank(method="first", ascending=False).astype(np.int64)
    domain_last = by_domain["last_interaction_ts_ms"].transform("max")
    stats["recency_days"] = ((domain_last - stats["last_interaction_ts_ms"]) / DAY_MS).astype(np.float32)
    stats["interactions"] = stats["interactions"].astype(np.int64)
    stats["users"] = stats["users"].astype(np.int64)
    stats["last_interaction_ts_ms"] = stats["last_interaction_ts_ms"].astype(np.int64)
    stats["event_timestamp"] = pd.Timestamp(as_of).tz_convert("UTC") if pd.Timestamp(as_of).tzinfo else pd.Timestamp(as_of, tz="UTC")
    return stats[["item_id", "domain", "interactions", "users", "popularity", "popularity_rank",
                  "last_interaction_ts_ms", "recency_days", "event_timestamp"]]


def item_stats_daily(events: pd.DataFrame) -> pd.DataFrame:
    """Per item and day with events: interactions, distinct users and popularity *as of the end of
    that day*, stamped with the end of the day.

    Why a time series: the nightly ``item_stats`` snapshot counts every event up to tonight, so
    joined to a training event from months ago it would tell the model how popular the item
    *became* (a leak). Feast's point-in-time join of this table gives each event the latest row
    stamped at or before it: the end of an earlier day, so never a count that includes the event
    itself or anything after it. Popularity is the item's count over the domain's largest count as
    of the same day.
    """
    ev = events[["domain", "item_id", "user_id", "ts_ms"]].sort_values("ts_ms", kind="stable")
    ev = ev.assign(day=ev["ts_ms"] // DAY_MS, new_user=(~ev.duplicated(["item_id", "user_id"])).astype(np.int64))
    daily = (
        ev.groupby(["domain", "item_id", "day"], sort=False, observed=True)
        .agg(n=("user_id", "size"), nu=("new_user", "sum"), last_interaction_ts_ms=("ts_ms", "max"))
        .reset_index()
        .sort_values(["day", "domain", "item_id"], kind="stable")
    )
    by_item = daily.groupby(["domain", "item_id"], sort=False, observed=True)
    daily["interactions"] = by_item["n"].cumsum().astype(np.int64)
    daily["users"] = by_item["nu"].cumsum().astype(np.int64)
    domain_max = daily.groupby(["domain", "day"], observed=True)["interactions"].max().groupby(level=0).cummax()
    keys = pd.MultiIndex.from_arrays([daily["domain"], daily["day"]])
    daily["popularity"] = (daily["interactions"].to_numpy() / domain_max.reindex(keys).to_numpy()).astype(np.float32)
    daily["event_timestamp"] = pd.to_datetime((daily["day"] + 1) * DAY_MS, unit="ms", utc=True)
    daily["last_interaction_ts_ms"] = daily["last_interaction_ts_ms"].astype(np.int64)
    return daily[["item_id", "domain", "interactions", "users", "popularity", "last_interaction_ts_ms", "event_timestamp"]].reset_index(drop=True)


def user_features(
    events: pd.DataFrame,
    embeddings: pd.DataFrame | None = None,
    n_recent: int = 20,
    as_of: datetime | None = None,
) -> pd.DataFrame:
    """Per user: the ``n_recent`` latest items (latest first, all domains), their domains, event
    count, last event time, and ``user_vector`` = normalised mean of those items' embeddings
    (empty list when none of them has an embedding)."""
    as_of = as_of or datetime.now(timezone.utc)
    order = ["user_id", "ts_ms"] + (["position"] if "position" in events.columns else [])
    ev = events.sort_values(order, ascending=True, kind="stable")
    counts = ev.groupby("user_id", sort=True).agg(n_events=("item_id", "size"), last_event_ts_ms=("ts_ms", "max"))
    recent = ev.groupby("user_id", sort=True).tail(n_recent).iloc[::-1]  # latest first
    rec_items = recent.groupby("user_id", sort=True)["item_id"].agg(list)
    rec_domains = recent.groupby("user_id", sort=True)["domain"].agg(list)
    out = counts.join(rec_items.rename("recent_items")).join(rec_domains.rename("recent_domains")).reset_index()
    out["n_events"] = out["n_events"].astype(np.int64)
    out["last_event_ts_ms"] = out["last_event_ts_ms"].astype(np.int64)

    vectors: list[list[float]] = [[] for _ in range(len(out))]
    if embeddings is not None and len(embeddings):
        index = {iid: k for k, iid in enumerate(embeddings["item_id"].astype(str))}
        matrix = np.stack(embeddings["embedding"].map(lambda v: np.asarray(v, dtype=np.float32)).to_numpy())
        user_pos = {u: k for k, u in enumerate(out["user_id"])}
        rows = recent.assign(_e=recent["item_id"].map(index)).dropna(subset=["_e"])
        acc = np.zeros((len(out), matrix.shape[1]), dtype=np.float32)
        np.add.at(acc, rows["user_id"].map(user_pos).to_numpy(), matrix[rows["_e"].astype(np.int64).to_numpy()])
        norms = np.linalg.norm(acc, axis=1)
        for k in np.flatnonzero(norms > 0):
            vectors[k] = (acc[k] / norms[k]).tolist()
    out["user_vector"] = vectors
    out["event_timestamp"] = pd.Timestamp(as_of).tz_convert("UTC") if pd.Timestamp(as_of).tzinfo else pd.Timestamp(as_of, tz="UTC")
    return out[["user_id", "recent_items", "recent_domains", "n_events", "last_event_ts_ms", "user_vector", "event_timestamp"]]


def write_table(df: pd.DataFrame, path: Path) -> Path:
    """Write atomically (Feast may be reading the previous snapshot)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table = pa.Table.from_pandas(df, preserve_index=False)
    if "user_vector" in df.columns:
        table = table.set_column(
            table.schema.get_field_index("user_vector"), "user_vector",
            pa.array(df["user_vector"].tolist(), type=pa.list_(pa.float32())),
        )
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def build_feature_tables(
    events_dir: Path,
    embeddings_dir: Path | None,
    out_paths: dict[str, Path],
    splits: Sequence[str] | None = ("train",),
    n_recent: int = 20,
) -> dict[str, int]:
    """Compute and write item_stats and user_features; returns row counts."""
    events = read_events(events_dir, splits)
    emb = None
    if embeddings_dir is not None and Path(embeddings_dir).exists():
        emb = pd.read_parquet(embeddings_dir, columns=["item_id", "embedding"])
    as_of = datetime.now(timezone.utc).replace(microsecond=0)
    stats = item_stats(events, as_of)
    users = user_features(events, emb, n_recent=n_recent, as_of=as_of)
    write_table(stats, out_paths["item_stats"])
    write_table(users, out_paths["user_features"])
    counts = {"events": len(events), "item_stats": len(stats), "user_features": len(users),
              "users_with_vector": int(sum(1 for v in users["user_vector"] if len(v)))}
    if "item_stats_daily" in out_paths:
        daily = item_stats_daily(events)
        write_table(daily, out_paths["item_stats_daily"])
        counts["item_stats_daily"] = len(daily)
    return counts
