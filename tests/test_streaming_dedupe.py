"""The bounded dedupe state on a real Redis: a per-user window of recent event ids instead of one
key per event, exact inside the window, explicit (never silent) outside it."""

from __future__ import annotations

import pytest

from crossrec.keys import HistoryEvent, KeySchema
from crossrec.settings import Settings
from crossrec.streaming.history import APPLIED, DUPLICATE, OUTSIDE_WINDOW, HistoryApplier, PendingEvent

pytestmark = pytest.mark.integration

WINDOW, CAP = 20, 5


def _events(user: str, ids: range) -> list[PendingEvent]:
    return [PendingEvent(user, f"e{n}", 1_600_000_000_000 + n, HistoryEvent("office", f"o{n}", "click", 1.6e9 + n)) for n in ids]


@pytest.fixture()
def applier(services_settings: Settings, redis_client) -> HistoryApplier:
    return HistoryApplier(redis_client, KeySchema(services_settings.key_prefix), history_cap=CAP, dedupe_window=WINDOW)


def test_state_per_user_stays_bounded_and_recent_ids_are_recognised(applier: HistoryApplier, redis_client) -> None:
    assert applier.apply_and_read(_events("u1", range(50)))[0] == [APPLIED] * 50
    schema = applier.schema
    assert redis_client.zcard(schema.dedupe("u1")) == WINDOW  # not 50 keys: one bounded set
    assert redis_client.llen(schema.history("u1")) == CAP
    assert not redis_client.keys(f"{schema.prefix}:seen:*")
    # a re-delivery of the newest WINDOW events changes nothing
    assert applier.apply_and_read(_events("u1", range(30, 50)))[0] == [DUPLICATE] * WINDOW
    assert [HistoryEvent.from_json(e).item_id for e in redis_client.lrange(schema.history("u1"), 0, -1)] == ["o49", "o48", "o47", "o46", "o45"]
    # older than every remembered id: reported, not applied and not silently dropped
    assert applier.apply_and_read(_events("u1", range(5, 6)))[0] == [OUTSIDE_WINDOW]
    # other users are independent; a newer event of u1 applies
    assert applier.apply_and_read(_events("u2", range(0, 1)) + _events("u1", range(60, 61)))[0] == [APPLIED, APPLIED]


def test_apply_and_read_returns_each_users_history_as_it_stands_after_the_batch(applier: HistoryApplier, redis_client) -> None:
    """One round trip applies and reads: each user's history after their last event of the batch,
    whatever that event's outcome, and again after the server lost its scripts (NOSCRIPT re-run)."""
    schema = applier.schema
    applier.apply_and_read(_events("u1", range(20, 50)))  # u1's window is full: e30 to e49
    batch = _events("u1", range(50, 52)) + _events("u2", range(0, 2)) + _events("u1", range(51, 52)) + _events("u3", range(0, 1))
    batch += _events("u3", range(0, 1)) + _events("u1", range(1, 2))  # u3's last is a duplicate; u1's last is outside the window
    outcomes, histories = applier.apply_and_read(batch)
    assert outcomes == [APPLIED, APPLIED, APPLIED, APPLIED, DUPLICATE, APPLIED, DUPLICATE, OUTSIDE_WINDOW]
    assert set(histories) == {"u1", "u2", "u3"}
    for user in ("u1", "u2", "u3"):
        assert histories[user] == redis_client.lrange(schema.history(user), 0, -1)
    assert [HistoryEvent.from_json(e).item_id for e in histories["u1"]] == ["o51", "o50", "o49", "o48", "o47"]
    assert [HistoryEvent.from_json(e).item_id for e in histories["u2"]] == ["o1", "o0"]
    redis_client.script_flush()
    outcomes, histories = applier.apply_and_read(_events("u2", range(2, 3)))
    assert outcomes == [APPLIED]
    assert [HistoryEvent.from_json(e).item_id for e in histories["u2"]] == ["o2", "o1", "o0"]
    assert applier.apply_and_read([]) == ([], {})


def test_dedupe_key_shares_the_users_hash_tag() -> None:
    key = KeySchema("crossrec").dedupe("user-7")
    assert key == "crossrec:dedupe:{user-7}"


def test_history_decode_gives_the_same_verdict_per_entry_as_from_json() -> None:
    """The fast (msgspec) decode: same events, same bad entries, whatever the entry holds."""
    from crossrec.streaming.history import HistoryDecoder

    good = [HistoryEvent("office", f"o{n}", "click", 1.6e9 + n).to_json().encode() for n in range(3)]
    odd = [
        b'{"domain":"art","item_id":"a1","event_type":"click","ts":NaN}',  # json.loads accepts NaN, msgspec does not
        '{"domain":"art","item_id":"a2","event_type":"click","ts":1}'.encode("utf-16"),  # json.loads detects UTF-16
        b"\xef\xbb\xbf{}",  # a BOM, then an object missing every field
        b"not json",
        b'["office","o1","click",1]',  # valid JSON, not an event
        b'{"domain":"art","item_id":"a3","event_type":"click","ts":1,"extra":1}',  # an unknown field
        b"\xff\xfe\x00",  # not text at all
    ]
    raw = [good[2], odd[0], odd[1], good[1], *odd[2:], good[0]]  # newest first, as stored
    decoder = HistoryDecoder(max_entries=4)
    events, bad = decoder.decode(raw)
    expected_events, expected_bad = [], []
    for entry in reversed(raw):
        try:
            expected_events.append(HistoryEvent.from_json(entry))
        except Exception:  # noqa: BLE001 - the reference verdict
            expected_bad.append(entry)
    assert events == expected_events and bad == expected_bad
    assert [e.item_id for e in events] == ["o0", "o1", "a2", "a1", "o2"] and len(bad) == 5
    # decoded entries are remembered (bounded); the same bytes give the same verdict from memory
    assert 0 < len(decoder.known) <= 4 and not set(decoder.known) & set(bad)
    assert decoder.decode(raw) == (events, bad) and decoder.decode(raw[::-1]) == (events[::-1], bad[::-1])
