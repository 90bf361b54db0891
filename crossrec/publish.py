"""The write side of the Redis read contract: what the batch publisher and the consumer call.

Every key name and value encoding comes from :mod:`crossrec.keys`; this module only decides *how*
to write them efficiently and safely:

- writes go through non-transactional pipelines in bounded batches, so publishing a million users
  costs a few thousand round trips instead of a million, without one giant buffer in memory;
- each recommendation list is a single ``SET`` of one JSON string, stored ready to serve (titles
  and explanations resolved here, once per write, instead of on every read), so a reader sees
  either the old list or the new one, never half of each;
- everything that must be atomic over several keys is one Lua script over keys of *one user*
  (they share the ``{user_id}`` hash tag), so it runs unchanged on a Redis Cluster: a user's
  capped history (``LPUSH`` + ``LTRIM``), and the publisher's merge (a batch list replaces the
  stored one only when the user's history holds no event newer than the batch's cut);
- item display hashes (title, category, brand, updated_at) are written for *every* domain,
  because an explanation usually names a history item of the other domain; the batch writes them
  through a merge too (a hash the stream updated after the snapshot stays).

:func:`explain` is the pure-numpy half of the explanations: for each recommended item, the history
item whose vector is most similar (cosine). Scorers put its id in ``RecItem.because``; the writer
stores its title and domain with the list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis
from redis.exceptions import NoScriptError

from crossrec.keys import HISTORY_CAP, HistoryEvent, KeySchema, RecItem, RecList, Row
from crossrec.settings import Settings

# Fields of an item display hash; readers rely on exactly these names.
ITEM_FIELDS: tuple[str, ...] = ("title", "category", "brand")
DEFAULT_BATCH = 500  # commands per pipeline flush: big enough to amortise the RTT, small in memory
DEFAULT_DOMAINS: tuple[str, ...] = tuple(Settings.model_fields["domains"].default_factory())  # type: ignore[misc]
DISPLAY_TTL_S = 30.0  # how long a writer trusts an item row it read (rows it wrote: until replaced)
DISPLAY_ROWS = 200_000  # rows a writer keeps in memory (a long-running consumer must stay bounded)


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

    def row(self) -> Row:
        return (self.title or None, self.category or None, self.brand or None)


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
    route: str | None = None,
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
    return RecList(items=items, model_version=model_version, source=source, route=route, **extra)


# -- Lua: each script touches the keys of one user (one hash slot) or one item -------------------
# KEYS[1] = history; ARGV[1] = cap, ARGV[2..] = events oldest first.
_PUSH_HISTORY = """
redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
return 1
"""
# KEYS[1] = history; ARGV = events oldest first (may be none).
_REPLACE_HISTORY = """
redis.call('DEL', KEYS[1])
if #ARGV > 0 then redis.call('LPUSH', KEYS[1], unpack(ARGV)) end
return 1
"""
# KEYS[1] = the user's list, KEYS[2] = the user's history; ARGV[1] = new list, ARGV[2] = cut (unix s).
# The batch list replaces the stored one unless the history holds an event newer than the cut:
# then the stream saw more than the batch did, and the stored list (and history) win.
_MERGE_LIST = """
local newest = nil
for _, raw in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local ok, event = pcall(cjson.decode, raw)
  if ok and type(event) == 'table' and tonumber(event['ts']) then
    local ts = tonumber(event['ts'])
    if newest == nil or ts > newest then newest = ts end
  end
end
if newest ~= nil and newest > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1] = the user's list, KEYS[2] = the user's history; ARGV[1] = new list, ARGV[2] = the history
# head the list was scored from ('' for none). Written only if no event arrived since the read.
_SET_IF_HEAD = """
local head = redis.call('LINDEX', KEYS[2], 0)
if (head or '') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1] = item hash; ARGV[1] = cut (unix s), ARGV[2..] = field, value pairs (with updated_at).
_MERGE_ITEM = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'updated_at'))
if stored ~= nil and stored > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""


class LuaScripts:
    """Lua scripts run by SHA inside pipelines, on a single Redis or a cluster alike.

    ``register_script`` cannot load scripts for a cluster pipeline, so the SHAs are loaded up
    front (``SCRIPT LOAD`` goes to every primary of a cluster) and a command answered NOSCRIPT
    (a node restarted or failed over since) is loaded again and re-run alone.
    """

    SOURCES = {"push_history": _PUSH_HISTORY, "replace_history": _REPLACE_HISTORY, "merge_list": _MERGE_LIST,
               "set_if_head": _SET_IF_HEAD, "merge_item": _MERGE_ITEM}

    def __init__(self, client: Any, extra: dict[str, str] | None = None) -> None:
        self.client = client
        self.sources = {**self.SOURCES, **(extra or {})}
        self.sha: dict[str, str] = {}

    def load(self) -> None:
        for name, src in self.sources.items():
            sha = self.client.script_load(src)
            if isinstance(sha, dict):  # some cluster clients answer per node
                sha = next(iter(sha.values()))
            self.sha[name] = sha.decode() if isinstance(sha, bytes) else str(sha)

    def run(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]], batch_size: int) -> list[Any]:
        """Run ``(script, keys, args)`` calls pipelined in batches; their results, in order."""
        if not self.sha:
            self.load()
        results: list[Any] = []
        for start in range(0, len(calls), batch_size):
            chunk = calls[start : start + batch_size]
            pipe = self.client.pipeline(transaction=False)
            for name, keys, args in chunk:
                # execute_command: redis-py blocks the evalsha *method* on cluster pipelines, though
                # EVALSHA over one slot's keys is routed like any keyed command.
                pipe.execute_command("EVALSHA", self.sha[name], len(keys), *keys, *args)
            out = pipe.execute(raise_on_error=False)
            missing = [i for i, r in enumerate(out) if isinstance(r, NoScriptError)]
            if missing:
                self.load()
                for i in missing:
                    name, keys, args = chunk[i]
                    out[i] = self.client.evalsha(self.sha[name], len(keys), *keys, *args)
            for r in out:
                if isinstance(r, Exception):
                    raise r
            results.extend(out)
        return results


class _DisplayRows:
    """Item rows the writer needs to store lists ready to serve: write-through, read-through.

    Rows this writer wrote are exact until it writes them again; rows read from Redis (written
    by another process) are trusted for ``ttl_s``, and so is the absence of a row: an item
    another process writes later is found within ``ttl_s`` (one it writes itself at once).
    Why remember absences: an explanation is looked up in every domain and found in one, so
    without it each list write re-read the other domains' missing rows, thousands of HMGETs
    per consumer batch.
    """

    def __init__(self, ttl_s: float = DISPLAY_TTL_S, max_rows: int = DISPLAY_ROWS) -> None:
        self.ttl_s = ttl_s
        self.max_rows = max_rows
        self.rows: dict[tuple[str, str], tuple[float, Row]] = {}

    def put(self, key: tuple[str, str], row: Row, ttl_s: float = float("inf")) -> None:
        if len(self.rows) >= self.max_rows and key not in self.rows:
            # Drop the oldest tenth (dicts keep insertion order); a dropped row is re-read if needed.
            for old in list(self.rows)[: max(1, self.max_rows // 10)]:
                del self.rows[old]
        self.rows[key] = (time.monotonic() + ttl_s, row)

    def drop(self, key: tuple[str, str]) -> None:
        self.rows.pop(key, None)

    def resolve(self, keys: Iterable[tuple[str, str]], fetch: Callable[[list[tuple[str, str]]], list[Any]]) -> dict[tuple[str, str], Row]:
        now = time.monotonic()
        out: dict[tuple[str, str], Row] = {}
        missing: list[tuple[str, str]] = []
        for key in dict.fromkeys(keys):
            hit = self.rows.get(key)
            if hit is not None and hit[0] >= now:
                if hit[1][0] is not None:
                    out[key] = hit[1]
            else:
                missing.append(key)
        if missing:
            for key, raw in zip(missing, fetch(missing)):
                row = cast(Row, tuple(_text(v) for v in raw))
                if row[0] is not None:
                    out[key] = row
                self.put(key, row, self.ttl_s)  # a row without a title is no row: remembered as absent
        return out


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return text or None  # writers store "" for a missing field


class RecWriter:
    """Pipelined writes of everything serving reads; one instance per process is enough."""

    def __init__(
        self,
        client: redis.Redis,
        schema: KeySchema,
        *,
        history_cap: int = HISTORY_CAP,
        batch_size: int = DEFAULT_BATCH,
        domains: Sequence[str] = DEFAULT_DOMAINS,
    ) -> None:
        if history_cap < 1:
            raise ValueError("history_cap must be >= 1")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.client = client
        self.schema = schema
        self.history_cap = history_cap
        self.batch_size = batch_size
        self.domains = tuple(domains)
        self.display = _DisplayRows()
        self.scripts = LuaScripts(client)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RecWriter:
        from crossrec.redis_conn import redis_client

        kwargs.setdefault("domains", settings.domains)
        return cls(redis_client(settings), KeySchema(settings.key_prefix), **kwargs)

    def close(self) -> None:
        self.client.close()

    # -- recommendation lists --------------------------------------------------------------
    def serve_json(self, domain: str, recs: RecList) -> str:
        """One list in its stored, ready-to-serve form (display data resolved now)."""
        return self.serve_many(domain, [recs])[0]

    def serve_many(self, domain: str, lists: Sequence[RecList]) -> list[str]:
        """Lists in their stored form, display rows of all of them fetched in one round trip
        (the consumer queues the bodies on its own pipeline with its other writes)."""
        probe = tuple(d for d in self.domains if d != domain) + (domain,)
        wanted = [(domain, it.item_id) for recs in lists for it in recs.items]
        wanted += [(d, it.because) for recs in lists for it in recs.items if it.because for d in probe]
        rows = self.display.resolve(wanted, self._fetch_rows)
        return [recs.to_json(domain, rows, probe) for recs in lists]

    def _fetch_rows(self, keys: list[tuple[str, str]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for domain, item_id in keys:
            pipe.hmget(self.schema.item(domain, item_id), list(ITEM_FIELDS))
        return cast(list[Any], pipe.execute())

    def write_recs(self, domain: str, user_id: str, recs: RecList) -> None:
        """Replace one user's list (a single SET: readers never see a partial list)."""
        self.write_many_recs(domain, [(user_id, recs)])

    def write_many_recs(self, domain: str, lists: Iterable[tuple[str, RecList]]) -> int:
        """Replace many users' lists in pipelined batches; returns how many lists were written."""
        check_domain(domain)
        count = 0
        for chunk in _chunks(lists, self.batch_size):
            bodies = self.serve_many(domain, [recs for _, recs in chunk])
            pipe = self.client.pipeline(transaction=False)
            for (user_id, _), body in zip(chunk, bodies):
                pipe.set(self.schema.recs(domain, check_id("user_id", user_id)), body)
            pipe.execute()
            count += len(chunk)
        return count

    def merge_many_recs(self, domain: str, lists: Iterable[tuple[str, RecList]], cut_s: float) -> list[str]:
        """The batch's write: replace each list unless the user's history is newer than ``cut_s``.

        One script call per user (its list and history share a slot), pipelined per batch, so the
        compare and the replace are atomic against the consumer. Returns the users whose stored
        state was newer and therefore kept (the caller re-scores them from their live history).
        """
        check_domain(domain)
        kept: list[str] = []
        for chunk in _chunks(lists, self.batch_size):
            bodies = self.serve_many(domain, [recs for _, recs in chunk])
            calls = [
                ("merge_list", [self.schema.recs(domain, check_id("user_id", user)), self.schema.history(user)], [body, repr(float(cut_s))])
                for (user, _), body in zip(chunk, bodies)
            ]
            for (user, _), written in zip(chunk, self.scripts.run(calls, self.batch_size)):
                if not written:
                    kept.append(user)
        return kept

    def write_recs_if_history_unchanged(self, domain: str, lists: Iterable[tuple[str, RecList, bytes | None]]) -> int:
        """Write lists scored from a history read earlier, unless an event arrived since (then the
        consumer, which saw that event, writes the fresher list). Returns how many were written."""
        check_domain(domain)
        written = 0
        for chunk in _chunks(lists, self.batch_size):
            bodies = self.serve_many(domain, [recs for _, recs, _ in chunk])
            calls = [
                ("set_if_head", [self.schema.recs(domain, check_id("user_id", user)), self.schema.history(user)], [body, head or b""])
                for (user, _, head), body in zip(chunk, bodies)
            ]
            written += sum(int(r) for r in self.scripts.run(calls, self.batch_size))
        return written

    def delete_recs(self, domain: str, user_id: str) -> bool:
        """Drop a user's list so readers fall back to popular items (e.g. after a GDPR erase)."""
        return bool(self.client.delete(self.schema.recs(check_domain(domain), check_id("user_id", user_id))))

    def write_popular(self, domain: str, recs: RecList) -> None:
        """The domain's fallback list for users who have no personal list yet."""
        self.client.set(self.schema.popular(check_domain(domain)), self.serve_json(domain, recs))

    def set_current_model(self, version: str) -> None:
        """Point serving at a model version; written last by a publish so readers see a full set."""
        self.client.set(self.schema.current_model(), check_id("model version", version))

    def current_model(self) -> str | None:
        raw = cast("bytes | str | None", self.client.get(self.schema.current_model()))
        return raw.decode() if isinstance(raw, bytes) else raw

    # -- catalogue display data ------------------------------------------------------------
    def write_items(self, items: Iterable[ItemDisplay], updated_at: float | None = None) -> int:
        """Upsert display hashes (title, category, brand, updated_at) for items of any domain."""
        stamp = repr(float(time.time() if updated_at is None else updated_at))
        count = 0
        for chunk in _chunks(items, self.batch_size):
            pipe = self.client.pipeline(transaction=False)
            for it in chunk:
                key = self.schema.item(check_domain(it.domain), check_id("item_id", it.item_id))
                pipe.hset(key, mapping={**it.fields(), "updated_at": stamp})
                self.display.put((it.domain, it.item_id), it.row())
            pipe.execute()
            count += len(chunk)
        return count

    def merge_items(self, items: Iterable[ItemDisplay], cut_s: float) -> tuple[int, list[ItemDisplay]]:
        """The batch's item write: a hash updated after ``cut_s`` (by the stream) stays.

        Returns (written, kept); kept items' rows are re-read from Redis when a list needs them.
        """
        stamp = repr(float(cut_s))
        written = 0
        kept: list[ItemDisplay] = []
        for chunk in _chunks(items, self.batch_size):
            calls = []
            for it in chunk:
                key = self.schema.item(check_domain(it.domain), check_id("item_id", it.item_id))
                pairs = [x for kv in {**it.fields(), "updated_at": stamp}.items() for x in kv]
                calls.append(("merge_item", [key], [stamp, *pairs]))
            for it, ok in zip(chunk, self.scripts.run(calls, self.batch_size)):
                if ok:
                    written += 1
                    self.display.put((it.domain, it.item_id), it.row())
                else:
                    kept.append(it)
                    self.display.drop((it.domain, it.item_id))
        return written, kept

    # -- user history ----------------------------------------------------------------------
    def push_history(self, user_id: str, events: Sequence[HistoryEvent]) -> None:
        """Append events (given oldest first) to a user's capped, newest-first history."""
        self.push_many_histories([(user_id, events)])

    def push_many_histories(self, histories: Iterable[tuple[str, Sequence[HistoryEvent]]]) -> int:
        """Append to many users' histories; one script per user keeps LPUSH+LTRIM atomic and the
        cap exact (a per-user script, not one MULTI over many users: that spans slots on a cluster)."""
        calls = []
        for user_id, events in histories:
            if not events:
                continue
            # LPUSH pushes its arguments left to right, so the last argument ends up at the head:
            # giving events oldest-first leaves the newest at index 0.
            tail = list(events)[-self.history_cap :]
            calls.append(("push_history", [self.schema.history(check_id("user_id", user_id))],
                          [self.history_cap, *(event.to_json() for event in tail)]))
        self.scripts.run(calls, self.batch_size)
        return len(calls)

    def replace_history(self, user_id: str, events: Sequence[HistoryEvent]) -> None:
        """Set a user's history to exactly ``events`` (oldest first); the batch path is idempotent."""
        tail = list(events)[-self.history_cap :]
        self.scripts.run([("replace_history", [self.schema.history(check_id("user_id", user_id))],
                           [event.to_json() for event in tail])], 1)


def _chunks(values: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for value in values:
        chunk.append(value)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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

    best = most_similar(unit_rows(recs), unit_rows(hist))
    ids: list[str | None] = [history_item_ids[int(j)] for j in best]
    return ids[0] if single else ids


def most_similar(rec_units: np.ndarray, history_units: np.ndarray) -> np.ndarray:
    """Per recommended row, the position of the most similar history row (``unit_rows`` of both).

    ``crossrec.recommend.explained_many`` computes the same for many users in one stacked
    product, with this tie rule; its test holds it equal to ``explain`` per user.
    """
    sims = rec_units @ history_units.T  # (k, h)
    # argmax returns the first maximum; flip so that ties resolve to the most recent item.
    return history_units.shape[0] - 1 - np.argmax(sims[:, ::-1], axis=1)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1; each row's result depends on that row alone."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)  # a zero vector stays zero (similar to nothing)
