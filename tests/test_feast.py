"""Feast repo: config from settings, feature tables, and the round trip into the real Redis.

The round trip uses the real Spark embedding job's output, Feast apply + materialise into the
session's Redis, and reads back through ``get_online_features``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_settings
from test_embed import catalogue, write_items

from crossrec.embedding import embed_items, output_dir_for
from crossrec.features.store import redis_connection_string
from crossrec.features.tables import build_feature_tables, item_stats, item_stats_daily, user_features, write_table
from crossrec.settings import Settings


def test_connection_string_survives_feast_parser(tmp_path):
    from feast.infra.online_stores.redis import RedisOnlineStore

    s = make_settings(tmp_path, redis={"url": "redis://10.0.0.5:6390/2", "password": 'p"w\\d=1', "tls": True})
    nodes, params = RedisOnlineStore._parse_connection_string(redis_connection_string(s))
    assert nodes == [{"host": "10.0.0.5", "port": "6390"}]
    assert params == {"db": 2, "password": 'p"w\\d=1', "ssl": True}
    plain = make_settings(tmp_path, redis={"url": "redis://127.0.0.1:7000/0"})
    assert redis_connection_string(plain) == "127.0.0.1:7000,db=0"
    with pytest.raises(ValueError, match="','"):
        redis_connection_string(make_settings(tmp_path, redis={"url": "redis://h:1/0", "password": "a,b"}))


def events_frame() -> pd.DataFrame:
    """u1: art-00000, art-00001, office-00000 (train) then office-00001 (test); u2: one office item."""
    rows = [
        ("u1", "art-00000", "art", 1_000, "train"), ("u1", "art-00001", "art", 2_000, "train"),
        ("u1", "office-00000", "office", 3_000, "train"), ("u1", "office-00001", "office", 4_000, "test"),
        ("u2", "office-00000", "office", 86_401_000, "train"), ("u2", "art-00000", "art", 5_000, "train"),
    ]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "ts_ms", "split"])
    df["event_id"] = [f"e{k}" for k in range(len(df))]
    df["event_type"] = "review"
    df["ts"] = pd.to_datetime(df["ts_ms"], unit="ms", utc=True)
    df["rating"] = None
    df["position"] = df.groupby("user_id")["ts_ms"].rank(method="first").astype("int32") - 1
    return df


def test_item_stats_logic():
    ev = events_frame()
    stats = item_stats(ev[ev["split"] == "train"]).set_index("item_id")
    assert stats.loc["office-00000", "interactions"] == 2 and stats.loc["office-00000", "users"] == 2
    assert stats.loc["office-00000", "popularity"] == 1.0 and stats.loc["office-00000", "popularity_rank"] == 1
    assert stats.loc["art-00000", "interactions"] == 2 and stats.loc["art-00001", "popularity"] == 0.5
    assert stats.loc["art-00001", "popularity_rank"] == 2
    assert "office-00001" not in stats.index  # test-split event not used
    assert stats.loc["office-00000", "recency_days"] == 0.0
    assert stats.loc["art-00001", "recency_days"] == pytest.approx(3.0 / 86_400)  # 5_000 - 2_000 ms


def test_user_features_logic():
    ev = events_frame()
    emb = pd.DataFrame({"item_id": ["art-00000", "office-00000"],
                        "embedding": [np.array([1, 0, 0], np.float32), np.array([0, 1, 0], np.float32)]})
    users = user_features(ev[ev["split"] == "train"], emb, n_recent=2).set_index("user_id")
    assert users.loc["u1", "recent_items"] == ["office-00000", "art-00001"]  # latest first, truncated
    assert users.loc["u1", "recent_domains"] == ["office", "art"]
    assert users.loc["u1", "n_events"] == 3
    np.testing.assert_allclose(users.loc["u1", "user_vector"], [0, 1, 0])  # art-00001 has no embedding
    np.testing.assert_allclose(users.loc["u2", "user_vector"], np.array([1, 1, 0]) / np.sqrt(2), atol=1e-6)


@pytest.fixture()
def feast_settings(services_settings: Settings, tmp_path: Path, redis_client) -> Settings:
    """The session's real Redis (flushed by ``redis_client``) with a private work_dir."""
    return services_settings.model_copy(update={"work_dir": tmp_path / "work"})


def test_feast_round_trip(spark, feast_settings: Settings, tmp_path: Path):
    from crossrec.features.online import online_item_embeddings, online_user_features, verify_item_embeddings
    from crossrec.features.store import apply, definitions_module, materialize

    work = Path(feast_settings.work_dir)
    cat = catalogue()
    items = write_items(cat, tmp_path / "items")
    cache = tmp_path / "models"
    embed_items(spark, items, work / "embeddings", "minilm", cache_dir=cache, rows_per_partition=8)
    emb_dir = output_dir_for(work / "embeddings", "minilm")
    events_dir = tmp_path / "events"
    events_frame().to_parquet(events_dir, partition_cols=["domain"])
    paths = definitions_module().feature_paths(work, "minilm")
    counts = build_feature_tables(events_dir, emb_dir, {k: paths[k] for k in ("item_stats", "item_stats_daily", "user_features")})
    assert counts == {"events": 5, "item_stats": 3, "user_features": 2, "users_with_vector": 2, "item_stats_daily": 4}

    store = apply(feast_settings)
    assert {fv.name for fv in store.list_feature_views()} == {"item_embeddings", "item_stats", "item_stats_daily", "user_features"}
    assert store.get_feature_service("recommender") is not None
    materialize(feast_settings, store=store)

    written = pd.read_parquet(emb_dir).set_index("item_id")
    online = online_item_embeddings(store, list(written.index) + ["office-nope"])
    assert online.pop("office-nope") is None
    for item_id, vec in online.items():
        np.testing.assert_allclose(vec, written.loc[item_id, "embedding"], rtol=0, atol=1e-7)
    assert verify_item_embeddings(store, emb_dir) == {"items": len(cat), "missing": 0, "mismatched": 0}

    # the feature service gives stats and embeddings in one read
    resp = store.get_online_features(features=store.get_feature_service("recommender"),
                                     entity_rows=[{"item_id": "office-00000", "user_id": "u1"}]).to_dict()
    assert resp["interactions"] == [2] and resp["recent_items"] == [["office-00000", "art-00001", "art-00000"]]

    # the streaming consumer's path: push fresh user features, read them back at once
    pushed = pd.DataFrame([{
        "user_id": "u1", "recent_items": ["office-00001", "office-00000"], "recent_domains": ["office", "office"],
        "n_events": 4, "last_event_ts_ms": 4_000, "user_vector": [0.6, 0.8],
        "event_timestamp": pd.Timestamp.now(tz="UTC"),
    }])
    store.push("user_features_push", pushed)
    u1 = online_user_features(store, ["u1"])["u1"]
    assert u1["recent_items"] == ["office-00001", "office-00000"] and u1["n_events"] == 4

    # incremental: change one item, re-embed, incremental materialisation updates only it
    time.sleep(1.1)
    changed = cat.copy()
    changed.loc[changed["item_id"] == "art-00002", "text"] = "a different text | art"
    write_items(changed, items)
    stats = embed_items(spark, items, work / "embeddings", "minilm", cache_dir=cache, rows_per_partition=8)
    assert stats.embedded == 1
    materialize(feast_settings, ["item_embeddings"], store=store)
    rewritten = pd.read_parquet(emb_dir).set_index("item_id")
    after = online_item_embeddings(store, ["art-00002", "art-00001"])
    np.testing.assert_allclose(after["art-00002"], rewritten.loc["art-00002", "embedding"], atol=1e-7)
    assert not np.allclose(after["art-00002"], written.loc["art-00002", "embedding"])
    np.testing.assert_allclose(after["art-00001"], written.loc["art-00001", "embedding"], atol=1e-7)


# -- point-in-time training inputs -------------------------------------------------------------
DAY = 86_400_000


def leaky_events() -> pd.DataFrame:
    """'hot' is bought once on day 0 and by 50 users on day 5; 'cold' once a day on days 0-5."""
    rows = [("u0", "hot", 1_000)] + [(f"u{k}", "hot", 5 * DAY + k) for k in range(1, 51)]
    rows += [(f"c{d}", "cold", d * DAY + 500) for d in range(6)]
    return pd.DataFrame([{"user_id": u, "item_id": i, "domain": "office", "ts_ms": t, "split": "train"} for u, i, t in rows])


def test_item_stats_daily_counts_only_what_happened_by_the_end_of_each_day():
    daily = item_stats_daily(leaky_events()).set_index(["item_id", "event_timestamp"])
    end = lambda d: pd.Timestamp((d + 1) * DAY, unit="ms", tz="UTC")  # noqa: E731
    assert daily.loc[("hot", end(0)), "interactions"] == 1 and daily.loc[("hot", end(5)), "interactions"] == 51
    assert daily.loc[("hot", end(0)), "popularity"] == 1.0  # tied with cold on day 0
    assert daily.loc[("cold", end(4)), "popularity"] == 1.0 and daily.loc[("cold", end(5)), "popularity"] == pytest.approx(6 / 51)
    assert daily.loc[("hot", end(5)), "users"] == 51


def test_training_join_is_point_in_time_correct(feast_settings: Settings):
    """Through Feast's get_historical_features: an event sees the item's statistics as of the end
    of the previous day, never the all-time popularity (51 interactions) that the nightly snapshot
    holds, nor its own day's events."""
    from crossrec.features.offline import events_with_item_stats
    from crossrec.features.store import apply, definitions_module

    work = Path(feast_settings.work_dir)
    events = leaky_events()
    paths = definitions_module().feature_paths(work, feast_settings.encoder)
    write_table(item_stats(events), paths["item_stats"])  # the leak-prone all-time snapshot
    write_table(item_stats_daily(events), paths["item_stats_daily"])
    store = apply(feast_settings)
    assert item_stats(events).set_index("item_id").loc["hot", "interactions"] == 51

    probe = pd.DataFrame({"item_id": ["hot", "hot", "hot", "hot", "cold"],
                          "ts_ms": [500, 2 * DAY, 5 * DAY + 10, 6 * DAY, 5 * DAY + 600]})
    joined = events_with_item_stats(store, probe)
    assert joined["item_id"].tolist() == probe["item_id"].tolist()  # input order kept
    assert joined["interactions"].tolist() == [0, 1, 1, 51, 5]
    # cold on day 5 sees day 4's popularity (5 of the domain's max 5 = 1.0), not the all-time 6/51
    assert joined["popularity"].iloc[4] == pytest.approx(1.0)
    assert item_stats(events).set_index("item_id").loc["cold", "popularity"] == pytest.approx(6 / 51)


def test_training_reads_its_inputs_through_feast(feast_settings: Settings, tmp_path: Path, monkeypatch) -> None:
    """With the feature tables written, load_adapt_data takes the embeddings and the per-event item
    statistics from Feast's offline API; the catalogue equals the one read from parquet."""
    from crossrec.adaptation.data import load_adapt_data
    from crossrec.adaptation.synthetic import write_synthetic
    from crossrec.features.store import definitions_module
    from crossrec.settings import get_settings

    work = write_synthetic(tmp_path / "work", n_users=12, n_items=10, dim=8)
    direct = load_adapt_data(work)
    assert direct.feature_source == "parquet" and direct.event_stats is None

    paths = definitions_module().feature_paths(work, "minilm")
    build_feature_tables(work / "clean" / "events", paths["item_embeddings"],
                         {k: paths[k] for k in ("item_stats", "item_stats_daily", "user_features")}, splits=None)
    monkeypatch.setenv("CROSSREC_REDIS__URL", feast_settings.redis.url)
    get_settings.cache_clear()
    try:
        via_feast = load_adapt_data(work)
    finally:
        get_settings.cache_clear()
    assert via_feast.feature_source == "feast"
    assert via_feast.catalog.keys == direct.catalog.keys
    np.testing.assert_allclose(via_feast.catalog.embeddings, direct.catalog.embeddings, atol=1e-7)
    assert via_feast.fingerprint == direct.fingerprint
    stats = via_feast.event_stats
    events = pd.read_parquet(work / "clean" / "events")
    assert stats is not None and len(stats) == len(events)
    # point in time: an item's first event ever sees no interactions before it
    first = stats.sort_values("ts_ms").drop_duplicates("item_id")
    assert (first["interactions"] == 0).all()
    assert stats["interactions"].max() < events["item_id"].value_counts().max() + 1


def push_user(store, user: str, n_events: int, recent: list[str]) -> None:  # type: ignore[no-untyped-def]
    """What the streaming consumer pushes for a touched user (user_features_push)."""
    store.push("user_features_push", pd.DataFrame([{
        "user_id": user, "recent_items": recent, "recent_domains": ["office"] * len(recent), "n_events": n_events,
        "last_event_ts_ms": 1_700_000_000_000, "user_vector": [0.6, 0.8], "event_timestamp": pd.Timestamp.now(tz="UTC"),
    }]))


def test_api_and_client_read_user_features_from_the_online_store(feast_settings: Settings) -> None:
    import asyncio

    from fastapi.testclient import TestClient

    from crossrec.client import AsyncRecClient, RecClient
    from crossrec.features.store import apply
    from serving.app import create_app

    store = apply(feast_settings)
    push_user(store, "u1", 7, ["o3", "o2", "o1"])
    with RecClient(feast_settings) as client:
        got = client.user_features("u1")
        assert got["found"] and got["n_events"] == 7 and got["recent_items"] == ["o3", "o2", "o1"]
        assert got["user_vector"] == pytest.approx([0.6, 0.8])
        missing = client.user_features("nobody")
        assert missing["found"] is False and missing["n_events"] is None
    with TestClient(create_app(feast_settings)) as http:
        res = http.get("/users/u1/features")
        assert res.status_code == 200 and res.json()["recent_items"] == ["o3", "o2", "o1"]
        assert res.json()["n_events"] == 7 and res.json()["found"] is True
        assert http.get("/users/nobody/features").json()["found"] is False
        assert http.get(f"/users/{'x' * 200}/features").status_code == 422

    async def aread() -> dict:
        aio = AsyncRecClient(feast_settings)
        try:
            return await aio.user_features("u1")
        finally:
            await aio.close()

    assert asyncio.run(aread())["n_events"] == 7
