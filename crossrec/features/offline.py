"""Training inputs through Feast's offline API (point-in-time joins), not by reading parquet.

Two joins, each the right one for its feature:

- **item statistics** are behaviour: each training event gets the ``item_stats_daily`` row of
  its item stamped at or before the event's time (the end of an earlier day), so a statistic
  computed after an event never feeds it;
- **item embeddings** are catalogue content encoded by tonight's encoder, the same vectors
  serving uses; they are joined *as of the training run* (one entity row per item), because the
  incremental embedding job stamps a vector with the time it was computed, not a time the item's
  text was true, and an as-of-event join would drop every item embedded after its first event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from feast import FeatureStore

STATS_DAILY_FEATURES = ("interactions", "users", "popularity")


def events_with_item_stats(
    store: FeatureStore, events: pd.DataFrame, features: Sequence[str] = STATS_DAILY_FEATURES
) -> pd.DataFrame:
    """``events`` (needs ``item_id`` and ``ts_ms``) with each item's statistics as of the event.

    Rows come back in the input order; an event whose item had no earlier day gets nulls (0 for
    ``interactions``/``users``: nothing was seen before it).
    """
    entity = pd.DataFrame({
        "item_id": events["item_id"].astype(str).to_numpy(),
        "event_timestamp": pd.to_datetime(events["ts_ms"].to_numpy(), unit="ms", utc=True),
        "_row": range(len(events)),
    })
    refs = [f"item_stats_daily:{f}" for f in features]
    joined = store.get_historical_features(entity_df=entity, features=refs).to_df()
    # Feast's file store drops entity rows with no row in the ttl window: put them back by row id.
    found = joined.set_index("_row")[list(features)].reindex(range(len(events)))
    out = events.reset_index(drop=True).copy()
    for f in features:
        col = found[f].to_numpy()
        out[f] = pd.Series(col).fillna(0).astype("int64") if f in ("interactions", "users") else pd.Series(col, dtype="float32")
    return out


def item_embeddings_as_of(store: FeatureStore, item_ids: Sequence[str], as_of: datetime | None = None) -> pd.DataFrame:
    """``item_id``, ``domain``, ``embedding`` of the given items as of ``as_of`` (default now);
    items Feast has no vector for are left out."""
    as_of = as_of or datetime.now(timezone.utc)
    entity = pd.DataFrame({"item_id": list(item_ids), "event_timestamp": pd.Timestamp(as_of)})
    refs = ["item_embeddings:embedding", "item_embeddings:domain"]
    got = store.get_historical_features(entity_df=entity, features=refs).to_df()
    got = got[got["embedding"].notna()]
    return got[["item_id", "domain", "embedding"]].reset_index(drop=True)
