"""Nightly batch publish: every active user's top-K, popular fallbacks, display data -> Redis.

The publish *merges* with what the stream wrote since the nightly cut, it never undoes it:

- the cut is the newest event time in the cleaned data (what the batch saw); a user's batch list
  replaces the stored one only when the user's Redis history holds no event newer than the cut
  (one Lua script per user, pipelined: the compare and the write are atomic against the
  consumer). A user whose stream state is newer keeps their list and is then **re-scored by the
  publisher** with the new model from their *current* Redis history, written only if no event
  arrived in between (else the consumer's own, fresher list stands). So after a publish every
  user is on the new model and nobody's newest events stop counting;
- item display hashes are merged the same way against the catalogue snapshot's time (the
  newest file time under ``items/``): a title the stream updated after that stays;
- histories are only *seeded* for users who have none in Redis: the consumer owns them after
  that, and overwriting them from the (older) nightly log would drop fresh events;
- users whose id cannot be a Redis Cluster hash tag (``keys.user_id_problem``: empty or starting
  with ``}``) are skipped and counted (``skipped_user_ids``). The cleaning job quarantines their
  events as ``bad_user_id``, so only cleaned data written before that rule can hold them.

Order matters for readers: item display data and popular lists first, then the users' lists,
and the model pointer last, so a reader that sees the new pointer also sees everything written
with that model. Lists are stored ready to serve, with titles resolved from the merged items.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from crossrec.adaptation.inference import Recommender, load_current
from crossrec.keys import HistoryEvent, KeySchema, RecList, route_of, user_id_problem
from crossrec.publish import ItemDisplay, RecWriter, make_rec_list
from crossrec.recommend import recommend_many
from crossrec.settings import Settings
from crossrec.streaming.catalog import stream_items

POPULAR_N = 100
USER_BATCH = 1024


@dataclass(frozen=True)
class PublishSummary:
    model_version: str
    users: int
    lists_written: int  # batch lists merged in + stream-newer users re-scored from live history
    histories_seeded: int
    items_written: int
    popular: dict[str, int]
    cut_ts: float = 0.0  # unix s: the newest event the batch saw
    kept_newer: int = 0  # users whose history had events after the cut (batch list not applied)
    rescored: int = 0  # of those, re-scored with this model from their current Redis history
    items_kept: int = 0  # item hashes the stream updated after the catalogue snapshot
    skipped_user_ids: int = 0  # users skipped: their id cannot be a hash tag (keys.user_id_problem)
    routes: dict[str, int] = field(default_factory=dict)  # batch lists per route of a routed model (empty: unrouted)


def snapshot_time(path: Path) -> float:
    """When a snapshot directory (or file) was written: the newest mtime under it."""
    path = Path(path)
    times = [f.stat().st_mtime for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path.stat().st_mtime]
    return max(times, default=path.stat().st_mtime)


def read_events(clean_dir: Path) -> pd.DataFrame:
    """Cleaned events (all splits), oldest first per user."""
    events = pd.read_parquet(clean_dir / "events", columns=["user_id", "domain", "item_id", "event_type", "ts_ms"])
    events["domain"] = events["domain"].astype(str)
    return events.sort_values(["user_id", "ts_ms"], kind="stable").reset_index(drop=True)


def without_bad_user_ids(events: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``events`` without the users whose id cannot name Redis keys, and those users' ids.

    The rule is applied once per distinct user (``keys.user_id_problem``), not per row.
    """
    bad = [u for u in events["user_id"].unique().tolist() if user_id_problem(u) is not None]
    if not bad:
        return events, []
    return events[~events["user_id"].isin(bad)].reset_index(drop=True), bad


def read_items(clean_dir: Path) -> list[ItemDisplay]:
    items = pd.read_parquet(clean_dir / "items", columns=["domain", "item_id", "title", "category", "brand"])
    items = items.astype(object).where(items.notna(), None)
    return [ItemDisplay(str(r.domain), r.item_id, r.title, r.category, r.brand) for r in items.itertuples(index=False)]


def popular_lists(events: pd.DataFrame, n: int = POPULAR_N) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per domain, the most-interacted items, scored by share of the domain's events."""
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for domain, group in events.groupby("domain", observed=True):
        counts = group["item_id"].value_counts().head(n)
        out[str(domain)] = (counts.index.tolist(), counts.to_numpy() / len(group))
    return out


def publish(
    settings: Settings,
    clean_dir: Path,
    recommender: Recommender | None = None,
    *,
    cut_ts: float | None = None,
    items_as_of: float | None = None,
) -> PublishSummary:
    """Merge tonight's lists and catalogue into Redis (see the module docstring), pointer last.

    ``cut_ts`` (unix s) overrides the cut taken from the data; ``items_as_of`` the snapshot time of
    the catalogue.
    """
    recommender = recommender or load_current(settings)
    stream_items(settings, recommender)  # items the stream added since the model's catalogue was built
    events, bad_users = without_bad_user_ids(read_events(clean_dir))
    cut = float(cut_ts) if cut_ts is not None else (float(events["ts_ms"].max()) / 1000.0 if len(events) else 0.0)
    items_cut = float(items_as_of) if items_as_of is not None else snapshot_time(Path(clean_dir) / "items")
    writer = RecWriter.from_settings(settings)
    try:
        items_written, items_kept = writer.merge_items(read_items(clean_dir), items_cut)
        popular = popular_lists(events)
        for domain, (ids, scores) in popular.items():
            writer.write_popular(domain, make_rec_list(ids, scores, "popular", source="popular"))

        histories = {
            user: list(zip(group["domain"], group["item_id"]))
            for user, group in events.groupby("user_id", sort=False)
        }
        users = list(histories)
        seeded = _seed_histories(writer, events, settings)
        merged = 0
        routes: Counter[str] = Counter()
        kept: list[str] = []
        with Progress() as progress:
            task = progress.add_task("publishing top-K lists", total=len(users))
            for start in range(0, len(users), USER_BATCH):
                chunk = {u: histories[u] for u in users[start : start + USER_BATCH]}
                lists = _lists(recommender, chunk, settings.top_k)
                routes.update(recs.route for _, recs in lists if recs.route is not None)
                newer = writer.merge_many_recs(settings.target_domain, lists, cut)
                kept += newer
                merged += len(lists) - len(newer)
                progress.advance(task, len(chunk))
        rescored = rescore_live(writer, recommender, kept, settings)
        writer.set_current_model(recommender.version)
    finally:
        writer.close()
    return PublishSummary(recommender.version, len(users), merged + rescored, seeded, items_written,
                          {d: len(ids) for d, (ids, _) in popular.items()}, cut, len(kept), rescored, len(items_kept),
                          len(bad_users), dict(routes))


def _lists(recommender: Recommender, histories: dict[str, list[tuple[str, str]]], k: int) -> list[tuple[str, RecList]]:
    recs = recommend_many(recommender, histories, k)
    return [
        (user, make_rec_list([r.item_id for r in items], [r.score for r in items], recommender.version,
                             because=[r.because for r in items], route=route_of(items)))
        for user, items in recs.items()
    ]


def rescore_live(writer: RecWriter, recommender: Recommender, users: list[str], settings: Settings) -> int:
    """Re-score ``users`` with ``recommender`` from their current Redis history.

    Each list is written only if the user's history head is still the one it was scored from
    (otherwise an event arrived and the consumer writes the fresher list). Returns lists written.
    """
    written = 0
    for start in range(0, len(users), USER_BATCH):
        chunk = users[start : start + USER_BATCH]
        pipe = writer.client.pipeline(transaction=False)
        for user in chunk:
            pipe.lrange(writer.schema.history(user), 0, -1)
        raws = pipe.execute()
        heads: dict[str, bytes | None] = {}
        histories: dict[str, list[tuple[str, str]]] = {}
        for user, raw in zip(chunk, raws):
            heads[user] = raw[0] if raw else None
            events = []
            for entry in reversed(raw):  # oldest first
                try:
                    event = HistoryEvent.from_json(entry)
                except (ValueError, TypeError):
                    continue  # a corrupt entry is the readers' to report; it cannot be scored
                events.append((event.domain, event.item_id))
            histories[user] = events
        lists = _lists(recommender, histories, settings.top_k)
        written += writer.write_recs_if_history_unchanged(
            settings.target_domain, [(user, recs, heads[user]) for user, recs in lists]
        )
    return written


def _seed_histories(writer: RecWriter, events: pd.DataFrame, settings: Settings) -> int:
    """Write histories only for users who have none yet (the consumer owns existing ones)."""
    schema = KeySchema(settings.key_prefix)
    users = events["user_id"].unique().tolist()
    exists: list[int] = []
    for start in range(0, len(users), USER_BATCH):
        pipe = writer.client.pipeline(transaction=False)
        for user in users[start : start + USER_BATCH]:
            pipe.exists(schema.history(user))
        exists += pipe.execute()
    missing = {u for u, e in zip(users, exists) if not e}
    tail = events[events["user_id"].isin(missing)].groupby("user_id", sort=False).tail(writer.history_cap)
    seeded = [
        (user, [HistoryEvent(r.domain, r.item_id, r.event_type, r.ts_ms / 1000.0) for r in group.itertuples(index=False)])
        for user, group in tail.groupby("user_id", sort=False)
    ]
    return writer.push_many_histories(seeded)
