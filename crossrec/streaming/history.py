"""Exactly-once history appends with bounded dedupe state, many events per round trip.

Each event goes through one Lua script (atomic on the server) that looks its ``event_id`` up in
the user's dedupe ZSET ``{p}:dedupe:{{user}}``; a new id is added there (scored by the event
time) and the entry is pushed to the capped history. The ZSET keeps only the user's
``dedupe_window`` most recent ids, so the dedupe state is bounded per user instead of one key per
event for days. Both keys carry the user id as a hash tag: in Redis Cluster they share a slot, as
one script's keys must.

The window: a re-delivered or replayed event is recognised while its id is among the user's
``dedupe_window`` newest applied ids (by event time). An event *older* than every id of a full
window cannot be told apart from a duplicate; it is not applied but reported as
``outside_dedupe_window`` (the consumer dead-letters it), never silently dropped. Kafka
re-delivers at most the uncommitted events (``max_pending_events`` plus one poll of
``max_poll_records``: batches wait uncommitted for their Feast push), so a window at least as
large as one user's events among those covers every crash re-delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import redis

from crossrec.keys import HistoryEvent, KeySchema
from crossrec.publish import LuaScripts

APPLIED, DUPLICATE, OUTSIDE_WINDOW = 1, 0, 2

# KEYS[1] = dedupe zset, KEYS[2] = history list
# ARGV = event id, event ms, history entry json, history cap, dedupe window, read back ('1': return
# {outcome, the history after this event} instead of the outcome alone)
_APPLY_EVENT_LUA = """
local outcome = 1
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  outcome = 0
else
  local window = tonumber(ARGV[5])
  if redis.call('ZCARD', KEYS[1]) >= window then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    if tonumber(ARGV[2]) < tonumber(oldest[2]) then
      outcome = 2
    end
  end
  if outcome == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(window + 1))
    redis.call('LPUSH', KEYS[2], ARGV[3])
    redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
  end
end
if ARGV[6] == '1' then
  return {outcome, redis.call('LRANGE', KEYS[2], 0, -1)}
end
return outcome
"""


@dataclass(frozen=True)
class PendingEvent:
    """An event ready to apply: who, which id, when, and the history entry to push."""

    user_id: str
    event_id: str
    ts_ms: int
    entry: HistoryEvent


class HistoryApplier:
    """Applies a batch of events with one pipeline of script calls (one round trip)."""

    def __init__(self, client: redis.Redis, schema: KeySchema, *, history_cap: int, dedupe_window: int) -> None:
        self.client = client
        self.schema = schema
        self.history_cap = history_cap
        self.dedupe_window = dedupe_window
        # Run by SHA through the writer's script runner, so the same pipeline works on a cluster.
        self._scripts = LuaScripts(client, {"apply_event": _APPLY_EVENT_LUA})

    def apply_and_read(self, events: Sequence[PendingEvent]) -> tuple[list[int], dict[str, list[bytes]]]:
        """One outcome per event, in order (``APPLIED``, ``DUPLICATE`` or ``OUTSIDE_WINDOW``), and
        each user's raw newest-first history as it stands after the batch.

        Redis runs a pipeline's commands in order, so two events of one user in a batch are
        pushed in the order they were polled, as with one call per event. Why the read-back:
        scoring needs the histories the batch just changed; the script of each user's last event
        in the batch returns them, so the batch costs one round trip instead of two, and a script
        re-run after NOSCRIPT still returns what it wrote.
        """
        if not events:
            return [], {}
        last = {ev.user_id: i for i, ev in enumerate(events)}
        calls = [
            ("apply_event", [self.schema.dedupe(ev.user_id), self.schema.history(ev.user_id)],
             [ev.event_id, ev.ts_ms, ev.entry.to_json(), self.history_cap, self.dedupe_window, "1" if last[ev.user_id] == i else "0"])
            for i, ev in enumerate(events)
        ]
        outcomes: list[int] = []
        histories: dict[str, list[bytes]] = {}
        for ev, reply in zip(events, self._scripts.run(calls, len(calls))):
            if isinstance(reply, list):
                outcomes.append(int(reply[0]))
                histories[ev.user_id] = list(reply[1])
            else:
                outcomes.append(int(reply))
        return outcomes, histories

    def read_histories(self, users: Sequence[str]) -> list[list[bytes]]:
        """Raw newest-first history entries of each user, one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.lrange(self.schema.history(user), 0, -1)
        return pipe.execute()

    def read_events(self, users: Sequence[str], decoder: HistoryDecoder) -> dict[str, list[HistoryEvent]]:
        """Each user's stored history as events, oldest first, unreadable entries left out: for
        the Feast push, which has no one to report them to (the scoring path reports them)."""
        return {user: decoder.decode(raw)[0] for user, raw in zip(users, self.read_histories(users))}


_decode = msgspec.json.Decoder().decode

DECODED_ENTRIES = 100_000  # decoded history entries a consumer keeps (about 40 MB at most)


class HistoryDecoder:
    """Stored newest-first entries -> (events oldest first, the entries that are not events).

    Each entry is decoded on its own, as ``HistoryEvent.from_json`` would, so one bad entry
    never hides or shifts the others. msgspec's decoder does it in a third of the time of
    ``json.loads`` (a batch reads thousands of entries); an entry msgspec refuses (NaN, a
    non-UTF-8 encoding that ``json.loads`` detects) gets ``from_json`` itself, so the verdict
    on every entry is the same as before. Decoded entries are remembered by their bytes (an
    entry never changes, and an active user's history is re-read at each of their events),
    bounded by ``max_entries``: past it the oldest tenth is dropped.
    """

    def __init__(self, max_entries: int = DECODED_ENTRIES) -> None:
        self.max_entries = max_entries
        self.known: dict[bytes, HistoryEvent] = {}

    def decode(self, raw: Sequence[bytes]) -> tuple[list[HistoryEvent], list[bytes]]:
        known = self.known
        events: list[HistoryEvent] = []
        bad: list[bytes] = []
        for entry in reversed(raw):
            event = known.get(entry)
            if event is None:
                event = _decode_entry(entry)
                if event is None:
                    bad.append(entry)
                    continue
                if len(known) >= self.max_entries:
                    for old in list(known)[: max(1, self.max_entries // 10)]:
                        del known[old]
                known[entry] = event
            events.append(event)
        return events, bad


def _decode_entry(entry: bytes) -> HistoryEvent | None:
    try:
        return HistoryEvent(**_decode(entry))
    except Exception:  # noqa: BLE001, S110 - msgspec is stricter; from_json decides below
        pass
    try:
        return HistoryEvent.from_json(entry)
    except Exception:  # noqa: BLE001 - an entry someone else wrote wrongly
        return None

