"""A tiny synthetic data set in the exact clean + embedding contracts (tests, --quick benchmark).

Why structured rather than random: a test that "training works" must be able to fail. Items belong
to latent topics shared by both domains; an item's text embedding is its topic centroid plus noise,
and each user buys mostly from one topic in both domains. A model that learns anything beats
popularity here, and transfer from the source domain is genuinely possible.

``planted`` adds a cross-domain signal of known strength: source item i has a "twin" target item
(same index, same topic, a text embedding close to the source item's), and each target event is,
with probability ``planted``, the twin of the user's most recent source item. Only the source
history can predict those events at item level, so a transfer method that cannot recover them is
broken whatever a real pair says. ``planted=0`` draws exactly the data it always drew.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd


def write_synthetic(
    work_dir: Path,
    n_users: int = 40,
    n_items: int = 30,
    dim: int = 16,
    n_topics: int = 3,
    events_per_user: tuple[int, int] = (6, 12),
    encoder: str = "minilm",
    seed: int = 0,
    domains: tuple[str, str] = ("art", "office"),
    planted: float = 0.0,
) -> Path:
    """Write ``clean/events``, ``clean/items``, ``embeddings/{encoder}`` and users_split.json."""
    rng = np.random.default_rng(seed)
    work_dir = Path(work_dir)
    centroids = rng.normal(size=(n_topics, dim))
    items, emb_rows = [], []
    topic_items: dict[tuple[str, int], list[str]] = {}
    shifts: list[np.ndarray] = []
    raw_src: list[np.ndarray] = []
    for di, d in enumerate(domains):
        shift = rng.normal(scale=0.5, size=dim)  # a per-domain offset the adaptor must remove
        shifts.append(shift)
        for i in range(n_items):
            t = i % n_topics
            iid = f"{d}-{i:03d}"
            v = centroids[t] + shift + rng.normal(scale=0.4, size=dim)
            if planted > 0 and di == 0:
                raw_src.append(v - shift)
            if planted > 0 and di == 1:  # the twin: the source item's text moved into this domain
                v = raw_src[i] + shift + rng.normal(scale=0.1, size=dim)
            v = (v / np.linalg.norm(v)).astype(np.float32)
            text = f"{d} item {i} topic {t}"
            items.append({"item_id": iid, "title": text, "attributes": None, "category": None, "brand": None, "text": text, "domain": d})
            emb_rows.append({"domain": d, "item_id": iid, "embedding": v.tolist(), "text_hash": hashlib.sha256(text.encode()).hexdigest(), "encoder": encoder, "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")})
            topic_items.setdefault((d, t), []).append(iid)
    events = []
    for u in range(n_users):
        uid = f"U{u:04d}"
        topic = u % n_topics
        n = int(rng.integers(*events_per_user))
        doms = [domains[int(x)] for x in rng.integers(0, 2, size=n)]
        doms[-2:] = [domains[1], domains[1]]  # at least two target events (valid + test)
        owned_src: list[int] = []
        for p, d in enumerate(doms):
            if planted > 0 and d == domains[1] and owned_src and rng.random() < planted:
                iid = f"{d}-{owned_src[-1]:03d}"  # the twin of the user's most recent source item
            else:
                t = topic if rng.random() < 0.85 else int(rng.integers(n_topics))
                iid = str(rng.choice(topic_items[(d, t)]))
            if planted > 0 and d == domains[0]:
                owned_src.append(int(iid.rsplit("-", 1)[1]))
            ts = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(hours=u * 1000 + p)
            events.append({"event_id": f"{uid}:{p}", "user_id": uid, "item_id": iid, "event_type": "review", "ts": ts, "ts_ms": int(ts.value // 10**6), "rating": None, "position": p, "split": "train", "domain": d})
    ev = pd.DataFrame(events)
    ev["position"] = ev["position"].astype("int32")
    ev["rating"] = ev["rating"].astype("float64")
    tgt = ev[ev["domain"] == domains[1]]
    rank_from_end = tgt.groupby("user_id").cumcount(ascending=False)
    ev.loc[tgt.index[rank_from_end == 0], "split"] = "test"
    ev.loc[tgt.index[rank_from_end == 1], "split"] = "valid"
    (work_dir / "clean").mkdir(parents=True, exist_ok=True)
    ev.to_parquet(work_dir / "clean" / "events", partition_cols=["domain"], index=False)
    pd.DataFrame(items).to_parquet(work_dir / "clean" / "items", partition_cols=["domain"], index=False)
    (work_dir / "embeddings" / encoder).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(emb_rows).to_parquet(work_dir / "embeddings" / encoder / "part-0.parquet", index=False)
    users = [f"U{u:04d}" for u in range(n_users)]
    perm = [users[i] for i in rng.permutation(n_users)]
    a, b = int(0.6 * n_users), int(0.8 * n_users)
    split = {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}
    (work_dir / "users_split.json").write_text(json.dumps(split))
    return work_dir
