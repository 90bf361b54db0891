"""Online reads through Feast: user features (the API and the client) and item embeddings
(the end-to-end check of a materialisation, and the benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from feast import FeatureStore

EMBEDDING_REF = "item_embeddings:embedding"


def online_item_embeddings(store: FeatureStore, items: Sequence[str]) -> dict[str, np.ndarray | None]:
    """item_id -> float32 vector as stored (None for items Feast has no vector for)."""
    if not items:
        return {}
    resp = store.get_online_features(features=[EMBEDDING_REF], entity_rows=[{"item_id": i} for i in items]).to_dict()
    out: dict[str, np.ndarray | None] = {}
    for item_id, vec in zip(resp["item_id"], resp["embedding"]):
        out[item_id] = None if vec is None else np.asarray(vec, dtype=np.float32)
    return out


def online_user_features(store: FeatureStore, users: Sequence[str]) -> dict[str, dict[str, Any]]:
    """user_id -> the user_features view's values (None values when unknown)."""
    refs = [f"user_features:{f}" for f in ("recent_items", "recent_domains", "n_events", "last_event_ts_ms", "user_vector")]
    resp = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users]).to_dict()
    names = [r.split(":", 1)[1] for r in refs]
    return {u: {n: resp[n][k] for n in names} for k, u in enumerate(resp["user_id"])}


def verify_item_embeddings(store: FeatureStore, embeddings_dir, batch: int = 1000, atol: float = 1e-6) -> dict[str, int]:
    """Read every item of the offline embeddings table back from the online store and compare.

    Returns counts: items, missing (no online vector), mismatched (vector differs beyond atol).
    This is the end-to-end check that Redis serves exactly the vectors the embedding job wrote.
    """
    import pandas as pd

    df = pd.read_parquet(embeddings_dir, columns=["item_id", "embedding"])
    missing = mismatched = 0
    ids = df["item_id"].astype(str).tolist()
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        got = online_item_embeddings(store, chunk)
        for k, item_id in enumerate(chunk):
            vec = got.get(item_id)
            if vec is None:
                missing += 1
            elif not np.allclose(vec, np.asarray(df["embedding"].iat[start + k], dtype=np.float32), atol=atol):
                mismatched += 1
    return {"items": len(ids), "missing": missing, "mismatched": mismatched}
