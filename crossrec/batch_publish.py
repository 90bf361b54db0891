"""Nightly batch publish: every active user's top-K, popular fallbacks, display data -> Redis.

Order matters for readers: item display data and popular lists first, then the users' lists,
and the model pointer last, so a reader that sees the new pointer also sees everything written
with that model. Histories are only *seeded* for users who have none in Redis: the consumer owns
them after that, and overwriting them from the (older) nightly log would drop fresh events.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from crossrec.adaptation.inference import Recommender, load_current
from crossrec.keys import HistoryEvent, KeySchema
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
    lists_written: int
    histories_seeded: int
    items_written: int
    popular: dict[str, int]


def read_events(clean_dir: Path) -> pd.DataFrame:
    """Cleaned events (all splits), oldest first per user."""
    events = pd.read_parquet(clean_dir / "events", columns=["user_id", "domain", "item_id", "event_type", "ts_ms"])
    events["domain"] = events["domain"].astype(str)
    return events.sort_values(["user_id", "ts_ms"], kind="stable").reset_index(drop=True)


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


def publish(settings: Settings, clean_dir: Path, recommender: Recommender | None = None) -> PublishSummary:
    recommender = recommender or load_current(settings)
    stream_items(settings, recommender)  # items the stream added since the model's catalogue was built
    events = read_events(clean_dir)
    writer = RecWriter.from_settings(settings)
    try:
        items_written = writer.write_items(read_items(clean_dir))
        popular = popular_lists(events)
        for domain, (ids, scores) in popular.items():
            writer.write_popular(domain, make_rec_list(ids, scores, "popular", source="popular"))

        histories = {
            user: list(zip(group["domain"], group["item_id"]))
            for user, group in events.groupby("user_id", sort=False)
        }
        users = list(histories)
        seeded = _seed_histories(writer, events, settings)
        written = 0
        with Progress() as progress:
            task = progress.add_task("publishing top-K lists", total=len(users))
            for start in range(0, len(users), USER_BATCH):
                chunk = {u: histories[u] for u in users[start : start + USER_BATCH]}
                recs = recommend_many(recommender, chunk, settings.top_k)
                written += writer.write_many_recs(
                    settings.target_domain,
                    (
                        (user, make_rec_list([r.item_id for r in items], [r.score for r in items],
                                             recommender.version, because=[r.because for r in items]))
                        for user, items in recs.items()
                    ),
                )
                progress.advance(task, len(chunk))
        writer.set_current_model(recommender.version)
    finally:
        writer.close()
    return PublishSummary(recommender.version, len(users), written, seeded, items_written,
                          {d: len(ids) for d, (ids, _) in popular.items()})


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
