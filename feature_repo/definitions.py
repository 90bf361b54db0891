"""Feast definitions of crossrec: entities, sources, feature views, the recommender's service.

Shaped like Feast's own templates (one Entity per key, a FileSource per offline parquet table, a
FeatureView with a typed schema and a ttl, a FeatureService), with one difference: the parquet
locations depend on the deployment's work_dir and encoder, so everything is built by
:func:`build_definitions`. ``crossrec features apply`` calls it with paths from Settings; the
module-level objects at the bottom make plain ``feast apply`` work too (paths from the
``FEAST_CROSSREC_WORK_DIR`` / ``FEAST_CROSSREC_ENCODER`` environment variables).

TTLs: ``event_timestamp`` of an embedding is the time it was computed, and the incremental job
keeps the old timestamp of every unchanged item, so a catalogue vector can be months old and still
current. Feast drops rows older than the ttl from historical retrieval (measured with the file
offline store), so embeddings get a ttl of ~10 years (= "valid until re-embedded"). Item stats
and user features are recomputed nightly; their ttl only needs to cover missed nights.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

ITEM_EMBEDDINGS = "item_embeddings"
ITEM_STATS = "item_stats"
ITEM_STATS_DAILY = "item_stats_daily"
USER_FEATURES = "user_features"
USER_PUSH_SOURCE = "user_features_push"
RECOMMENDER_SERVICE = "recommender"

EMBEDDING_TTL = timedelta(days=3650)
STATS_TTL = timedelta(days=30)
USER_TTL = timedelta(days=30)


def feature_paths(work_dir: Path, encoder: str) -> dict[str, Path]:
    """Where the offline parquet tables live (the embedding job and `crossrec features stats` write them)."""
    work_dir = Path(work_dir).resolve()
    return {
        ITEM_EMBEDDINGS: work_dir / "embeddings" / encoder,
        ITEM_STATS: work_dir / "features" / "item_stats.parquet",
        ITEM_STATS_DAILY: work_dir / "features" / "item_stats_daily.parquet",
        USER_FEATURES: work_dir / "features" / "user_features.parquet",
    }


def build_definitions(work_dir: Path, encoder: str = "minilm") -> dict[str, object]:
    """All Feast objects of the repo, by name, for the given work_dir and encoder."""
    paths = feature_paths(work_dir, encoder)

    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
                  description="A catalogue item (ids are unique across domains).")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
                  description="A user, across all domains.")

    embeddings_source = FileSource(
        name=f"{ITEM_EMBEDDINGS}_source", path=str(paths[ITEM_EMBEDDINGS]), timestamp_field="event_timestamp",
        description=f"crossrec embed output ({encoder})",
    )
    stats_source = FileSource(
        name=f"{ITEM_STATS}_source", path=str(paths[ITEM_STATS]), timestamp_field="event_timestamp",
    )
    stats_daily_source = FileSource(
        name=f"{ITEM_STATS_DAILY}_source", path=str(paths[ITEM_STATS_DAILY]), timestamp_field="event_timestamp",
    )
    user_batch_source = FileSource(
        name=f"{USER_FEATURES}_source", path=str(paths[USER_FEATURES]), timestamp_field="event_timestamp",
    )
    # The streaming consumer pushes each touched user's fresh features here (store.push), in the
    # batch in which it writes their lists; the API and the client read them online.
    user_push_source = PushSource(name=USER_PUSH_SOURCE, batch_source=user_batch_source)

    item_embeddings = FeatureView(
        name=ITEM_EMBEDDINGS, entities=[item], ttl=EMBEDDING_TTL, online=True, source=embeddings_source,
        schema=[
            Field(name="embedding", dtype=Array(Float32), description=f"L2-normalised {encoder} text embedding"),
            Field(name="domain", dtype=String),
            Field(name="text_hash", dtype=String),
            Field(name="encoder", dtype=String),
        ],
        tags={"encoder": encoder},
    )
    item_stats = FeatureView(
        name=ITEM_STATS, entities=[item], ttl=STATS_TTL, online=True, source=stats_source,
        schema=[
            Field(name="domain", dtype=String),
            Field(name="interactions", dtype=Int64),
            Field(name="users", dtype=Int64),
            Field(name="popularity", dtype=Float32, description="interactions / max interactions in the domain"),
            Field(name="popularity_rank", dtype=Int64, description="1 = most popular in its domain"),
            Field(name="last_interaction_ts_ms", dtype=Int64),
            Field(name="recency_days", dtype=Float32, description="days from the item's last event to the domain's last"),
        ],
    )
    # Training only (offline): the point-in-time series of item statistics, one row per item and
    # day, stamped at the end of the day (see crossrec.features.tables.item_stats_daily). The ttl
    # is long because a count stays true until the item's next event, however far away.
    item_stats_daily = FeatureView(
        name=ITEM_STATS_DAILY, entities=[item], ttl=EMBEDDING_TTL, online=False, source=stats_daily_source,
        schema=[
            Field(name="domain", dtype=String),
            Field(name="interactions", dtype=Int64, description="events up to the end of the row's day"),
            Field(name="users", dtype=Int64),
            Field(name="popularity", dtype=Float32, description="interactions / the domain's max, same day"),
            Field(name="last_interaction_ts_ms", dtype=Int64),
        ],
    )
    user_features = FeatureView(
        name=USER_FEATURES, entities=[user], ttl=USER_TTL, online=True, source=user_push_source,
        schema=[
            Field(name="recent_items", dtype=Array(String), description="latest first, all domains"),
            Field(name="recent_domains", dtype=Array(String)),
            Field(name="n_events", dtype=Int64),
            Field(name="last_event_ts_ms", dtype=Int64),
            Field(name="user_vector", dtype=Array(Float32), description="normalised mean of recent item embeddings"),
        ],
    )
    recommender = FeatureService(
        name=RECOMMENDER_SERVICE,
        features=[item_embeddings[["embedding"]], item_stats, user_features],  # domain comes from item_stats
        description="What the recommender reads online.",
    )
    return {
        "item": item, "user": user, "user_push_source": user_push_source,
        ITEM_EMBEDDINGS: item_embeddings, ITEM_STATS: item_stats, ITEM_STATS_DAILY: item_stats_daily,
        USER_FEATURES: user_features,
        RECOMMENDER_SERVICE: recommender,
    }


# Module-level objects for the plain `feast` CLI (`feast -c feature_repo apply`).
_defs = build_definitions(
    Path(os.environ.get("FEAST_CROSSREC_WORK_DIR", Path(__file__).resolve().parent.parent / "var")),
    os.environ.get("FEAST_CROSSREC_ENCODER", "minilm"),
)
item = _defs["item"]
user = _defs["user"]
user_features_push = _defs["user_push_source"]
item_embeddings = _defs[ITEM_EMBEDDINGS]
item_stats = _defs[ITEM_STATS]
item_stats_daily = _defs[ITEM_STATS_DAILY]
user_features = _defs[USER_FEATURES]
recommender = _defs[RECOMMENDER_SERVICE]
