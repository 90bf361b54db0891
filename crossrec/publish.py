"""The write side of the Redis read contract: what the batch publisher and the consumer call.

Every key name and value encoding comes from :mod:`crossrec.keys`; this module only decides *how*
to write them efficiently and safely:

- writes go through non-transactional pipelines in bounded batches, so publishing a million users
  costs a few thousand round trips instead of a million, without one giant buffer in memory;
- each recommendation list is a single ``SET`` of one JSON string, so a reader sees either the old
  list or the new one, never half of each (the atomic replacement the contract promises);
- a user's history is a capped list (``LPUSH`` + ``LTRIM`` in one ``MULTI``), newest first, so the
  consumer can append events forever without the key growing;
- item display hashes (title, category, brand) are written for *every* domain, because an
  explanation usually names a history item of the other domain ("because you bought <an Art
  item>" on an Office recommendation).

:func:`explain` is the pure-numpy half of the explanations: for each recommended item, the history
item whose vector is most similar (cosine). Writers store its id in ``RecItem.because``; readers
turn the id into a title.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis

from crossrec.keys import HISTORY_CAP, HistoryEvent, KeySchema, RecItem, RecList
from crossrec.settings import Settings

# Fields of an item display hash; readers rely on exactly these names.
ITEM_FIELDS: tuple[str, ...] = ("title", "category", "brand")
DEFAULT_BATCH = 500  # commands per pipeline flush: big enough to amortise the RTT, small in memory


@dataclass(frozen=True)
class ItemDisplay:
    """What a reader needs to show an item to a person (not what the model needs)."""

    domain: str
    item_id: str
    title: str
    category: str | None = None
    brand: str | None = None

    def fields(self) -> dict[str, str]:
        # Missing values are stored as "" (not omitted) so that rewriting an item also clears a
        # field that disappeared from the catalogue instead of leaving the stale value behind.
        return {"title": self.title or "", "category": self.category or "", "brand": self.brand or ""}


def check_domain(domain: str) -> str:
    """A domain is part of key names, so it must be non-empty and free of the ':' separator."""
    if not domain or ":" in domain or domain.strip() != domain:
        raise ValueError(f"invalid domain {domain!r}: must be non-empty, without ':' or surrounding spaces")
    return domain


def check_id(kind: str, value: str) -> str:
    """Ids end a key, so ':' is harmless there, but an empty id would alias another key family."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid {kind} {value!r}: must be a non-empty string")
    return value


def make_rec_list(
    item_ids: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    model_version: str,
    *,
    because: Sequence[str | None] | None = None,
    source: str = "batch",
    updated_at: float | None = None,
) -> RecList:
    """Build a ``RecList`` from parallel arrays (what a scorer produces), best score first.

    Sorting here rather than trusting the caller keeps the "list is in rank order" invariant in the
    one place that writes lists.
    """
    if len(item_ids) != len(scores):
        raise ValueError(f"{len(item_ids)} item ids but {len(scores)} scores")
    if because is not None and len(because) != len(item_ids):
        raise ValueError(f"{len(item_ids)} item ids but {len(because)} explanations")
    reasons = list(because) if because is not None else [None] * len(item_ids)
    order = sorted(range(len(item_ids)), key=lambda i: -float(scores[i]))
    items = [RecItem(item_id=str(item_ids[i]), score=float(scores[i]), because=reasons[i]) for i in order]
    extra: dict[str, Any] = {} if updated_at is None else {"updated_at": float(updated_at)}
    return RecList(items=items, model_version=model_version, source=source, **extra)


class RecWriter:
    """Pipelined writes of everything serving reads; one instance per process is enough."""

    def __init__(
        self,
        client: redis.Redis,
        schema: KeySchema,
        *,
        history_cap: int = HISTORY_CAP,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        if history_cap < 1:
            raise ValueError("history_cap must be >= 1")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.client = client
        self.schema = schema
        self.history_cap = history_cap
        self.batch_size = batch_size

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RecWriter:
        from crossrec.redis_conn import redis_client

        return cls(redis_client(settings), KeySchema(settings.key_prefix), **kwargs)

    def close(self) -> None:
        self.client.close()

    # -- recommendation lists --------------------------------------------------------------
    def write_recs(self, domain: str, user_id: str, recs: RecList) -> None:
        """Replace one user's list (a single SET: readers never see a partial list)."""
        self.client.set(self.schema.recs(check_domain(domain), check_id("user_id", user_id)), recs.to_json())

    def write_many_recs(self, domain: str, lists: Iterable[tuple[str, RecList]]) -> int:
        """Replace many users' lists in pipelined batches; returns how many lists were written."""
        check_domain(domain)
        return self._pipelined(
            (lambda pipe, kv=kv: pipe.set(self.schema.recs(domain, check_id("user_id", kv[0])), kv[1].to_json()))
            for kv in lists
        )

    def delete_recs(self, domain: str, user_id: str) -> bool:
        """Drop a user's list so readers fall back to popular items (e.g. after a GDPR erase)."""
        return bool(self.client.delete(self.schema.recs(check_domain(domain), check_id("user_id", user_id))))

    def write_popular(self, domain: str, recs: RecList) -> None:
        """The domain's fallback list for users who have no personal list yet."""
        self.client.set(self.schema.popular(check_domain(domain)), recs.to_json())

    def set_current_model(self, version: str) -> None:
        """Point serving at a model version; written last by a publish so readers see a full set."""
        self.client.set(self.schema.current_model(), check_id("model version", version))

    def current_model(self) -> str | None:
        raw = cast("bytes | str | None", self.client.get(self.schema.current_model()))
        return raw.decode() if isinstance(raw, bytes) else raw

    # -- catalogue display data ------------------------------------------------------------
    def write_items(self, items: Iterable[ItemDisplay]) -> int:
        """Upsert display hashes (title, category, brand) for items of any domain."""
        return self._pipelined(
            (
                lambda pipe, it=it: pipe.hset(
                    self.schema.item(check_domain(it.domain), check_id("item_id", it.item_id)), mapping=it.fields()
                )
            )
            for it in items
        )

    # -- user history ----------------------------------------------------------------------
    def push_history(self, user_id: str, events: Sequence[HistoryEvent]) -> None:
        """Append events (given oldest first) to a user's capped, newest-first history."""
        self.push_many_histories([(user_id, events)])

    def push_many_histories(self, histories: Iterable[tuple[str, Sequence[HistoryEvent]]]) -> int:
        """Append to many users' histories; LPUSH+LTRIM per user inside MULTI keeps the cap exact."""
        count = 0
        pipe = self.client.pipeline(transaction=True)
        pending = 0
        for user_id, events in histories:
            if not events:
                continue
            key = self.schema.history(check_id("user_id", user_id))
            # LPUSH pushes its arguments left to right, so the last argument ends up at the head:
            # giving events oldest-first leaves the newest at index 0.
            tail = list(events)[-self.history_cap :]
            pipe.lpush(key, *(event.to_json() for event in tail))
            pipe.ltrim(key, 0, self.history_cap - 1)
            count += 1
            pending += 2
            if pending >= self.batch_size:
                pipe.execute()
                pending = 0
        if pending:
            pipe.execute()
        return count

    def replace_history(self, user_id: str, events: Sequence[HistoryEvent]) -> None:
        """Set a user's history to exactly ``events`` (oldest first); the batch path is idempotent."""
        key = self.schema.history(check_id("user_id", user_id))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        tail = list(events)[-self.history_cap :]
        if tail:
            pipe.lpush(key, *(event.to_json() for event in tail))
        pipe.execute()

    # -- plumbing --------------------------------------------------------------------------
    def _pipelined(self, commands: Iterable[Any]) -> int:
        """Queue commands on a non-transactional pipeline, flushing every ``batch_size``."""
        count = 0
        pipe = self.client.pipeline(transaction=False)
        for queue in commands:
            queue(pipe)
            count += 1
            if count % self.batch_size == 0:
                pipe.execute()
        if count % self.batch_size:
            pipe.execute()
        return count


# -- explanations ------------------------------------------------------------------------------
def explain(
    rec_item_vectors: np.ndarray | Sequence[Any],
    history_item_vectors: np.ndarray | Mapping[str, Any] | Sequence[Any],
    history_item_ids: Sequence[str] | None = None,
) -> list[str | None] | str | None:
    """For each recommended item, the id of the history item most similar to it (cosine argmax).

    ``rec_item_vectors``: shape (k, d), or (d,) for a single item.
    ``history_item_vectors``: a mapping ``{history item id: vector}``, or an array (h, d) together
    with ``history_item_ids`` (h ids, in the same order).

    Returns one history item id per recommended item (a list for 2-D input, a single id for 1-D
    input); ``None`` where there is no history. Cosine rather than the raw dot product, because
    the question is "which past item is this one *like*", not "which past item has the biggest
    vector". Ties go to the later history position, i.e. the more recent item when histories are
    given oldest first.
    """
    if isinstance(history_item_vectors, Mapping):
        if history_item_ids is not None:
            raise ValueError("give history ids either as mapping keys or as history_item_ids, not both")
        history_item_ids = list(history_item_vectors.keys())
        hist = (
            np.stack([np.asarray(v, dtype=np.float32) for v in history_item_vectors.values()])
            if history_item_ids
            else np.zeros((0, 0), dtype=np.float32)
        )
    else:
        if history_item_ids is None:
            raise ValueError("history_item_ids is required when history vectors are an array")
        hist = np.asarray(history_item_vectors, dtype=np.float32)
        history_item_ids = list(history_item_ids)

    recs = np.asarray(rec_item_vectors, dtype=np.float32)
    single = recs.ndim == 1
    if single:
        recs = recs[None, :]
    if recs.ndim != 2:
        raise ValueError(f"rec_item_vectors must be 1-D or 2-D, got shape {recs.shape}")

    if len(history_item_ids) == 0:
        out: list[str | None] = [None] * recs.shape[0]
        return out[0] if single else out
    if hist.ndim != 2 or hist.shape[0] != len(history_item_ids):
        raise ValueError(f"history vectors {hist.shape} do not match {len(history_item_ids)} history ids")
    if hist.shape[1] != recs.shape[1]:
        raise ValueError(f"dimension mismatch: recs have {recs.shape[1]}, history has {hist.shape[1]}")

    sims = _unit_rows(recs) @ _unit_rows(hist).T  # (k, h)
    # argmax returns the first maximum; flip so that ties resolve to the most recent item.
    best = hist.shape[0] - 1 - np.argmax(sims[:, ::-1], axis=1)
    ids: list[str | None] = [history_item_ids[int(j)] for j in best]
    return ids[0] if single else ids


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)  # a zero vector stays zero (similar to nothing)
