"""The Redis key contract: key names, value encodings, and that RecWriter writes exactly them.

Pure-logic tests (JSON round trips, ``explain``) run without services; the writer tests go to the
real session Redis, because "what bytes land under which key" is the contract downstream
services depend on.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from crossrec.keys import SCHEMA_VERSION, HistoryEvent, KeySchema, RecItem, RecList, user_id_problem
from crossrec.publish import ItemDisplay, RecWriter, explain, make_rec_list


# -- pure contract -----------------------------------------------------------------------------
def test_key_names_are_prefixed_and_stable() -> None:
    ks = KeySchema("shop")
    assert ks.recs("office", "U1") == "shop:recs:office:{U1}"
    assert ks.popular("art") == "shop:popular:art"
    assert ks.current_model() == "shop:model:current"
    assert ks.item("art", "B00X") == "shop:item:art:B00X"
    assert ks.history("U1") == "shop:history:{U1}"
    assert ks.recs_pattern("office") == "shop:recs:office:{*"
    assert ks.user_of_recs_key("office", b"shop:recs:office:{U:1}") == "U:1"


@pytest.mark.parametrize("user", ["U1", "a:b", "x}y", "{odd", "é ü"])
def test_a_users_keys_share_one_cluster_slot(user: str) -> None:
    """Redis Cluster hashes only the hash tag: a user's list (each domain) and history must map
    to one slot, so a script over them runs on a cluster."""
    from redis.crc import key_slot

    ks = KeySchema("crossrec")
    slots = {key_slot(k.encode()) for k in (ks.recs("office", user), ks.recs("art", user), ks.history(user))}
    assert len(slots) == 1
    assert SCHEMA_VERSION == 2  # key names changed from schema 1: the contract version moved with them


@pytest.mark.parametrize("user", ["", "}", "}u1"])
def test_a_user_id_that_would_make_an_empty_hash_tag_names_no_key(user: str) -> None:
    """``{}`` is no hash tag: Redis would hash each whole key, so the user's keys would spread over slots."""
    from redis.crc import key_slot

    ks = KeySchema("crossrec")
    assert user_id_problem(user) is not None
    raw = [f"crossrec:recs:office:{{{user}}}", f"crossrec:history:{{{user}}}", f"crossrec:dedupe:{{{user}}}"]
    assert len({key_slot(k.encode()) for k in raw}) > 1  # why the rule exists
    for build in (lambda: ks.recs("office", user), lambda: ks.history(user), lambda: ks.dedupe(user)):
        with pytest.raises(ValueError, match="empty Redis Cluster hash tag"):
            build()
    assert user_id_problem("u}1") is None and user_id_problem("{u") is None  # a non-empty tag: one slot


@pytest.mark.parametrize("prefix", ["", "a:b"])
def test_prefix_must_be_nonempty_without_separator(prefix: str) -> None:
    with pytest.raises(ValueError):
        KeySchema(prefix)


def test_reclist_json_round_trip_keeps_everything() -> None:
    recs = RecList(
        items=[RecItem("i1", 0.9, because="h1"), RecItem("i2", 0.5)],
        model_version="m7",
        updated_at=1700000000.25,
        source="stream",
    )
    raw = recs.to_json()
    assert json.loads(raw)["v"] == SCHEMA_VERSION
    assert RecList.from_json(raw) == recs
    assert RecList.from_json(raw.encode()) == recs


def test_reclist_json_keeps_tricky_scores_and_texts_exactly() -> None:
    """Any JSON reader gets the values ``json.dumps`` would have written: scores bit for bit
    (exponent forms, subnormals, float32 values), texts with quotes, control characters and
    non-ASCII; stored as compact UTF-8."""
    rng = np.random.default_rng(0)
    scores = [1e-7, 1e-5, 5e-324, 0.1 + 0.2, 1e22, -0.0, 1.0, float(np.float32(0.7))]
    scores += [float(x) for x in rng.random(50) * 10.0 ** rng.integers(-12, 12, 50)]
    texts = ['quote " and \\ backslash', "ctl \x00\x1f\x7f tab\t nl\n", "ü — 漢字 😀", "\u2028\u2029 </script>"]
    items = [RecItem(f"o{i}", score, because=f"h{i % 4}") for i, score in enumerate(scores)]
    display = {("office", f"o{i}"): (texts[i % 4], texts[(i + 1) % 4], None) for i in range(len(items))}
    display.update({("art", f"h{i}"): (texts[i], None, None) for i in range(4)})
    recs = RecList(items=items, model_version="m\u00e9", updated_at=1.7e9 + 1e-6, source="stream", route="blend")
    raw = recs.to_json("office", display, ("art", "office"))
    assert "ü — 漢字 😀" in raw and "\\u00fc" not in raw  # UTF-8, not ASCII escapes
    assert RecList.from_json(raw) == recs
    body = json.loads(raw)
    assert np.array([it["score"] for it in body["items"]]).view(np.int64).tolist() == np.array(scores).view(np.int64).tolist()
    assert [(it["title"], it["category"], it["because"]["title"]) for it in body["items"]] == [
        (texts[i % 4], texts[(i + 1) % 4], texts[i % 4]) for i in range(len(items))]
    assert '": ' not in raw and '", "' not in raw  # compact separators


def test_stored_list_is_ready_to_serve() -> None:
    """Titles, ranks and explanations (resolved in the other domain first) are in the value."""
    recs = RecList(items=[RecItem("o1", 0.9, because="h1"), RecItem("o2", 0.5, because="gone")], model_version="m", updated_at=5.0)
    display = {("office", "o1"): ("Stapler", "Office", None), ("art", "h1"): ("Brush", None, None),
               ("office", "h1"): ("Not this one", None, None)}
    body = json.loads(recs.to_json("office", display, ("art", "office")))
    assert body["items"][0] == {"rank": 1, "item_id": "o1", "score": 0.9, "title": "Stapler", "category": "Office",
                                "brand": None, "because": {"item_id": "h1", "title": "Brush", "domain": "art",
                                                           "text": "because you bought Brush"}}
    assert body["items"][1]["title"] is None and body["items"][1]["rank"] == 2
    assert body["items"][1]["because"] == {"item_id": "gone", "title": None, "domain": None, "text": "because you bought gone"}
    assert (body["source"], body["model_version"], body["updated_at"]) == ("batch", "m", 5.0)


def test_reclist_rejects_other_schema_versions() -> None:
    payload = json.loads(RecList(items=[], model_version="m").to_json())
    payload["v"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema version"):
        RecList.from_json(json.dumps(payload))


def test_make_rec_list_sorts_by_score_and_keeps_explanations_aligned() -> None:
    recs = make_rec_list(["a", "b", "c"], np.array([0.1, 0.9, 0.5]), "m1", because=["ha", "hb", None])
    assert [(r.item_id, r.because) for r in recs.items] == [("b", "hb"), ("c", None), ("a", "ha")]
    assert all(isinstance(r.score, float) for r in recs.items)
    with pytest.raises(ValueError):
        make_rec_list(["a"], [0.1, 0.2], "m1")
    with pytest.raises(ValueError):
        make_rec_list(["a"], [0.1], "m1", because=[])


# -- explain(): cosine argmax ------------------------------------------------------------------
def test_explain_uses_cosine_not_dot_product() -> None:
    # h_big has the largest dot product with the rec item but points elsewhere; h_aligned is
    # parallel to it. Cosine must pick h_aligned.
    rec = np.array([[1.0, 0.0]])
    hist = np.array([[10.0, 10.0], [0.1, 0.0]])
    assert explain(rec, hist, ["h_big", "h_aligned"]) == ["h_aligned"]
    assert explain(rec[0], hist, ["h_big", "h_aligned"]) == "h_aligned"


def test_explain_per_row_and_mapping_input() -> None:
    rng = np.random.default_rng(0)
    hist = rng.normal(size=(5, 16)).astype(np.float32)
    ids = [f"h{i}" for i in range(5)]
    # Each rec item is a noisy copy of one history item: that one must be named.
    picks = [3, 0, 4, 4]
    recs = hist[picks] + 0.01 * rng.normal(size=(4, 16))
    assert explain(recs, hist, ids) == [ids[p] for p in picks]
    assert explain(recs, dict(zip(ids, hist))) == [ids[p] for p in picks]


def test_explain_ties_prefer_the_most_recent_history_item() -> None:
    hist = np.array([[1.0, 0.0], [2.0, 0.0]])  # same direction, oldest first
    assert explain(np.array([1.0, 0.0]), hist, ["old", "new"]) == "new"


def test_explain_edge_cases() -> None:
    assert explain(np.ones((3, 4)), {}, None) == [None, None, None]
    assert explain(np.ones(4), np.zeros((0, 4)), []) is None
    # A zero rec vector is similar to nothing, but still gets a (deterministic) answer.
    assert explain(np.zeros((1, 2)), np.array([[1.0, 0.0]]), ["h"]) == ["h"]
    with pytest.raises(ValueError, match="dimension"):
        explain(np.ones((1, 3)), np.ones((2, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="do not match"):
        explain(np.ones((1, 4)), np.ones((2, 4)), ["a"])
    with pytest.raises(ValueError, match="required"):
        explain(np.ones((1, 4)), np.ones((2, 4)))


# -- RecWriter against the real Redis -----------------------------------------------------------
@pytest.fixture()
def writer(redis_client) -> RecWriter:
    return RecWriter(redis_client, KeySchema("crossrec"), history_cap=5, batch_size=3)


def test_writer_puts_each_value_under_the_schema_key(writer: RecWriter, redis_client) -> None:
    ks = writer.schema
    recs = make_rec_list(["o1", "o2"], [0.8, 0.3], "m1", because=["a1", "a2"], updated_at=1234.5)
    writer.write_recs("office", "u1", recs)
    writer.write_popular("office", make_rec_list(["o9"], [42.0], "m1", source="popular"))
    writer.write_items([ItemDisplay("office", "o1", "Stapler", category="Office", brand=None)])
    writer.set_current_model("m1")

    assert RecList.from_json(redis_client.get(ks.recs("office", "u1"))) == recs
    assert RecList.from_json(redis_client.get(ks.popular("office"))).items[0].item_id == "o9"
    assert redis_client.get(ks.current_model()) == b"m1"
    assert writer.current_model() == "m1"
    stored_item = redis_client.hgetall(ks.item("office", "o1"))
    assert float(stored_item.pop(b"updated_at")) == pytest.approx(time.time(), abs=60)
    assert stored_item == {b"title": b"Stapler", b"category": b"Office", b"brand": b""}
    # the list was stored with the title the writer knew (written before the list)
    writer.write_recs("office", "u1", recs)
    assert json.loads(redis_client.get(ks.recs("office", "u1")))["items"][0]["title"] == "Stapler"
    assert sorted(redis_client.keys("*")) == sorted(
        k.encode() for k in (ks.recs("office", "u1"), ks.popular("office"), ks.current_model(), ks.item("office", "o1"))
    )


def test_writer_replaces_lists_and_item_fields(writer: RecWriter, redis_client) -> None:
    ks = writer.schema
    writer.write_recs("office", "u1", make_rec_list(["o1", "o2", "o3"], [3, 2, 1], "m1"))
    writer.write_recs("office", "u1", make_rec_list(["o4"], [1], "m2"))
    stored = RecList.from_json(redis_client.get(ks.recs("office", "u1")))
    assert [i.item_id for i in stored.items] == ["o4"] and stored.model_version == "m2"

    writer.write_items([ItemDisplay("office", "o1", "Old", brand="Acme")])
    writer.write_items([ItemDisplay("office", "o1", "New")])
    assert redis_client.hgetall(ks.item("office", "o1"))[b"brand"] == b""  # a dropped field is cleared

    assert writer.delete_recs("office", "u1") is True
    assert redis_client.get(ks.recs("office", "u1")) is None


def test_writer_batches_many_lists(writer: RecWriter, redis_client) -> None:
    lists = [(f"u{i}", make_rec_list([f"o{i}"], [1.0], "m1")) for i in range(10)]  # batch_size=3
    assert writer.write_many_recs("office", lists) == 10
    assert len(redis_client.keys(writer.schema.recs_pattern("office"))) == 10
    assert RecList.from_json(redis_client.get(writer.schema.recs("office", "u7"))).items[0].item_id == "o7"
    assert writer.write_items(ItemDisplay("art", f"a{i}", f"Art {i}") for i in range(7)) == 7
    assert redis_client.hget(writer.schema.item("art", "a6"), "title") == b"Art 6"


def test_history_is_newest_first_and_capped(writer: RecWriter, redis_client) -> None:
    key = writer.schema.history("u1")
    events = [HistoryEvent("art", f"a{i}", "review", 1000.0 + i) for i in range(4)]
    writer.push_history("u1", events)
    writer.push_history("u1", [HistoryEvent("office", "o1", "purchase", 2000.0), HistoryEvent("office", "o2", "view", 2001.0)])
    stored = [HistoryEvent.from_json(raw) for raw in redis_client.lrange(key, 0, -1)]
    assert len(stored) == 5  # cap
    assert [e.item_id for e in stored] == ["o2", "o1", "a3", "a2", "a1"]  # newest first, oldest dropped

    # Many users at once (batch_size=3 forces several MULTI flushes), empty histories skipped.
    n = writer.push_many_histories([(f"v{i}", events[:2]) for i in range(4)] + [("empty", [])])
    assert n == 4
    assert [HistoryEvent.from_json(r).item_id for r in redis_client.lrange(writer.schema.history("v3"), 0, -1)] == ["a1", "a0"]
    assert redis_client.exists(writer.schema.history("empty")) == 0

    writer.replace_history("u1", [HistoryEvent("art", f"z{i}", "review", float(i)) for i in range(8)])
    assert [HistoryEvent.from_json(r).item_id for r in redis_client.lrange(key, 0, -1)] == ["z7", "z6", "z5", "z4", "z3"]


def test_prefixes_isolate_tenants_of_one_redis(redis_client) -> None:
    a = RecWriter(redis_client, KeySchema("tenant_a"))
    b = RecWriter(redis_client, KeySchema("tenant_b"))
    a.write_recs("office", "u1", make_rec_list(["x"], [1.0], "ma"))
    b.set_current_model("mb")
    assert redis_client.keys("tenant_a:*") == [b"tenant_a:recs:office:{u1}"]
    assert redis_client.keys("tenant_b:*") == [b"tenant_b:model:current"]
    assert a.current_model() is None


@pytest.mark.parametrize(
    "call",
    [
        lambda w: w.write_recs("off:ice", "u1", make_rec_list([], [], "m")),
        lambda w: w.write_recs("", "u1", make_rec_list([], [], "m")),
        lambda w: w.write_recs("office", "", make_rec_list([], [], "m")),
        lambda w: w.write_recs("office", "}u1", make_rec_list([], [], "m")),
        lambda w: w.replace_history("}u1", []),
        lambda w: w.write_items([ItemDisplay("office", "", "t")]),
        lambda w: w.set_current_model(""),
    ],
)
def test_writer_rejects_keys_that_would_alias(writer: RecWriter, redis_client, call) -> None:
    with pytest.raises(ValueError):
        call(writer)
    assert redis_client.dbsize() == 0



def test_writer_display_rows_stay_bounded() -> None:
    from crossrec.publish import _DisplayRows

    rows = _DisplayRows(max_rows=100)
    for i in range(1000):
        rows.put(("office", f"o{i}"), (f"t{i}", None, None))
    assert len(rows.rows) <= 100 and ("office", "o999") in rows.rows
    # what was dropped is read again from Redis, not lost
    fetched = rows.resolve([("office", "o0")], lambda keys: [[b"again", b"", b""] for _ in keys])
    assert fetched == {("office", "o0"): ("again", None, None)}


def test_writer_display_rows_remember_an_absent_row_for_the_ttl_only() -> None:
    """An explanation is probed in every domain: the domains without it must not be re-read per list."""
    from crossrec.publish import _DisplayRows

    fetches: list[list] = []

    def fetch(keys):
        fetches.append(list(keys))
        return [[b"Pens", b"", b""] if key == ("office", "o1") else [None, None, None] for key in keys]

    rows = _DisplayRows(ttl_s=60)
    wanted = [("office", "o1"), ("art", "o1")]
    assert rows.resolve(wanted, fetch) == {("office", "o1"): ("Pens", None, None)}
    assert rows.resolve(wanted, fetch) == {("office", "o1"): ("Pens", None, None)}
    assert fetches == [wanted]  # the absent art row was not asked for again
    rows.put(("art", "o1"), ("Brush", None, None))  # this writer writes it: seen at once
    assert rows.resolve(wanted, fetch)[("art", "o1")] == ("Brush", None, None)
    expired = _DisplayRows(ttl_s=0.0)
    expired.resolve(wanted, fetch)
    expired.resolve(wanted, fetch)
    assert fetches[-2:] == [wanted, wanted]  # past the ttl an absence is checked again


def test_history_event_json_is_its_fields_in_order() -> None:
    import dataclasses
    import json

    from crossrec.keys import HistoryEvent

    for ev in (HistoryEvent("office", "o1", "purchase", 1.6e9), HistoryEvent("art", 'ä"x\\y', "click", 1600000000.125)):
        assert ev.to_json() == json.dumps(dataclasses.asdict(ev), separators=(",", ":"))
        assert [f.name for f in dataclasses.fields(ev)] == list(json.loads(ev.to_json()))
        assert HistoryEvent.from_json(ev.to_json()) == ev
