"""The clean job end to end on a small dirty fixture, with real local Spark.

The fixture holds every fault kind the issue lists, spread over every input format (JSON lines,
gzipped JSON lines, CSV, parquet, a corrupt gzip, an ``events/`` subfolder). Each fixture row is
written next to the reason it must get (None = kept), so the expected counts are read off the
fixture itself, and a few headline numbers are also spelled out.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import make_settings

from crossrec.cleaning import reasons as R
from crossrec.cleaning.normalize import derive_event_id
from crossrec.cleaning.summary import CleanSummary

H = 3_600_000
T0 = 1_577_836_800_000  # 2020-01-01T00:00:00Z


def ev(user: object, domain: object, item: object, etype: object, ts: object, **extra: object) -> str:
    record = {"user_id": user, "domain": domain, "item_id": item, "event_type": etype, "ts": ts, **extra}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


# (raw JSON line, expected reason or None when the row must be kept)
GZ_EVENTS: list[tuple[str, str | None]] = [
    # U1: mixed domains, every timestamp flavour; odd case/whitespace in ids
    (ev(" U1 ", "ART", "Art-1", "View", "2020-01-01T00:00:00Z"), None),
    (ev("U1", "office", "office-1", "purchase", T0 + H), None),  # epoch ms number
    (ev("U1", "Office ", "OFFICE-2", "review", "2020-01-01T04:30:00+02:00"), None),  # = 02:30Z
    (ev("U1", "art", "art-2", "click", "2020-01-01 03:00:00"), None),  # naive -> UTC
    (ev("U1", "office", "office-3", "rating", str(T0 + 4 * H), rating="4.5"), None),  # epoch string
    # U2: no target events; a domain known only from the catalogue (books)
    (ev("U2", "art", "art-1", "review", "2020-02-01T00:00:00.123Z"), None),
    (ev("U2", "books", "books-1", "view", "2020-02-02T00:00:00Z"), None),
    (ev("U2", "art", "art-1", "review", "2020-02-01T00:00:00.123Z"), R.EXACT_DUPLICATE),
    # U3: a single target event
    (ev("U3", "office", "office-1", "view", "2020-03-01T00:00:00Z"), None),
    # U4: near duplicates inside and outside the 60 s window
    (ev("U4", "art", "art-3", "click", "2020-04-01T10:00:00Z"), None),
    (ev("U4", "art", "art-3", "click", "2020-04-01T10:00:30Z"), R.NEAR_DUPLICATE),
    (ev("U4", "art", "art-3", "click", "2020-04-01T10:05:00Z"), None),
    # U7: the same given event_id twice = exact duplicate, the earliest copy wins
    (ev("U7", "office", "office-1", "view", "2020-05-01T00:00:00Z", event_id="evt-1"), None),
    (ev("U7", "office", "office-2", "view", "2020-05-01T01:00:00Z", event_id="evt-1"), R.EXACT_DUPLICATE),
    # faults
    ('{"user_id": "U9", "domain": "art"', R.MALFORMED_JSON),
    ('{"user_id": "U9"} trailing garbage', R.MALFORMED_JSON),
    (ev(..., "art", "art-1", "view", "2020-01-01T00:00:00Z"), R.missing("user_id")),
    (ev("   ", "art", "art-1", "view", "2020-01-01T00:00:00Z"), R.missing("user_id")),
    (ev("U9", "art", "art-1", "", "2020-01-01T00:00:00Z"), R.missing("event_type")),
    (ev("U9", "art", "art-1", "view", ...), R.missing("ts")),
    (ev("}U9", "art", "art-1", "view", "2020-01-01T00:00:00Z"), R.BAD_USER_ID),  # empty hash tag {}
    (ev(" }U9", "art", "art-1", "view", "yesterday"), R.BAD_USER_ID),  # after stripping; before the ts check
    (ev("U9", "art", "art-1", "view", "yesterday"), R.BAD_TIMESTAMP),
    (ev("U9", "art", "art-1", "view", 1_577_836_800), R.BAD_TIMESTAMP),  # epoch seconds
    (ev("U9", "art", "art-1", "view", "2020-02-30T00:00:00Z"), R.BAD_TIMESTAMP),
    (ev("U9", "art", "art-1", "like", "2020-01-01T00:00:00Z"), R.BAD_EVENT_TYPE),
    (ev("U9", "art", "art-1", "rating", "2020-01-01T00:00:00Z", rating="excellent"), R.BAD_RATING),
    (ev("U9", "art", "art-1", "rating", "2020-01-01T00:00:00Z", rating=9), R.BAD_RATING),
    (ev("U9", "garden", "art-1", "view", "2020-01-01T00:00:00Z"), R.UNKNOWN_DOMAIN),
    (ev("U9", "art", "art-999", "view", "2020-01-01T00:00:00Z"), R.UNKNOWN_ITEM),
    (ev("U9", "art", "art-4", "view", "2020-01-01T00:00:00Z"), R.UNKNOWN_ITEM),  # item quarantined
]
# CSV events: header in another order and case; (row, expected reason)
CSV_HEADER = "TS,user_id,Domain,item_id,event_type,rating"
CSV_EVENTS: list[tuple[str, str | None]] = [
    ("2020-03-05T00:00:00Z,U5,office,office-2,cart,", None),
    ("2020-03-05T00:00:00Z,U5,office,,cart,", R.missing("item_id")),
]
# parquet events (typed timestamp column) in an events/ subfolder
PARQUET_EVENTS: list[tuple[dict[str, object], str | None]] = [
    ({"user_id": "U6", "domain": "art", "item_id": "art-2", "event_type": "view", "ts": T0 + 10 * H,
      "event_id": None}, None),
    ({"user_id": "U6", "domain": "art", "item_id": "art-2", "event_type": "view", "ts": None,
      "event_id": "p-2"}, R.missing("ts")),
]
ITEMS_JSONL: list[tuple[str, str | None]] = [
    (json.dumps({"domain": "art", "item_id": "ART-1", "title": "  Red&nbsp;Pen &amp;  Ink\u200b ",
                 "attributes": "arts &lt;crafts&gt;", "brand": "Pilot"}), None),
    (json.dumps({"domain": "art", "item_id": "art-2", "title": "Blue Pencil", "category": "pens"}), None),
    (json.dumps({"domain": "art", "item_id": "art-2", "title": "Blue Pencil"}), R.DUPLICATE_ITEM),
    (json.dumps({"domain": "Art", "item_id": "art-3", "title": "\uff25\uff52\uff41\uff53\uff45\uff52",
                 "category": "Office&amp;amp;School"}), None),
    (json.dumps({"domain": "art", "item_id": "art-4"}), R.missing("title")),
    (json.dumps({"domain": "office", "item_id": "office-1", "title": "Stapler"}), None),
    (json.dumps({"domain": "office", "item_id": "office-2", "title": "Paper"}), None),
    (json.dumps({"domain": "office", "item_id": "office-3", "title": "Ink"}), None),
    ('{"domain": "office", "item_id": ', R.MALFORMED_JSON),
]
ITEMS_CSV_HEADER = "item_id,domain,title,description"
ITEMS_CSV: list[tuple[str, str | None]] = [
    ('books-1,books,"A Book, Hardcover",a &quot;quoted&quot; description', None),
    ("office-9,,Orphan,", R.missing("domain")),
]


def build_fixture(root: Path) -> Counter[tuple[str, str | None]]:
    """Write the dirty input dir; returns the expected (source, reason) counts."""
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "events-main.jsonl.gz", "wt", encoding="utf-8") as fh:
        for i, (line, _) in enumerate(GZ_EVENTS):
            fh.write(line + "\n")
            if i == 3:
                fh.write("\n   \n")  # blank lines are not records
    (root / "events-extra.csv").write_text(
        "\n".join([CSV_HEADER, *(row for row, _ in CSV_EVENTS)]) + "\n", encoding="utf-8"
    )
    sub = root / "events"
    sub.mkdir()
    table = pa.Table.from_pylist(
        [row for row, _ in PARQUET_EVENTS],
        schema=pa.schema([("user_id", pa.string()), ("domain", pa.string()), ("item_id", pa.string()),
                          ("event_type", pa.string()), ("ts", pa.timestamp("ms", tz="UTC")),
                          ("event_id", pa.string())]),
    )
    pq.write_table(table, sub / "part-0.parquet")
    (sub / "part-9.parquet").write_bytes(b"PAR1 this is not a parquet file")  # unreadable
    whole = gzip.compress(("\n".join(line for line, _ in GZ_EVENTS) + "\n").encode())
    (root / "events-broken.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # truncated gzip
    (root / "items.jsonl").write_text("\n".join(line for line, _ in ITEMS_JSONL) + "\n", encoding="utf-8")
    (root / "items-more.csv").write_text(
        "\n".join([ITEMS_CSV_HEADER, *(row for row, _ in ITEMS_CSV)]) + "\n", encoding="utf-8"
    )
    (root / "users_split.json").write_text("{}")  # not an input: must be ignored
    expected: Counter[tuple[str, str | None]] = Counter()
    for rows in (GZ_EVENTS, CSV_EVENTS, PARQUET_EVENTS):
        expected.update(("events", reason) for _, reason in rows)
    expected[("events", R.UNREADABLE_FILE)] += 2  # truncated gzip, garbage parquet
    for rows in (ITEMS_JSONL, ITEMS_CSV):
        expected.update(("items", reason) for _, reason in rows)
    return expected


def read_parquet(path: Path) -> list[dict[str, object]]:
    return ds.dataset(path, format="parquet", partitioning="hive").to_table().to_pylist()


@pytest.fixture(scope="module")
def cleaned(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One default run (near-dup window 60 s, no k-core) shared by the assertions below."""
    from crossrec.cleaning.pipeline import run_clean

    root = tmp_path_factory.mktemp("clean")
    expected = build_fixture(root / "raw")
    settings = make_settings(root)
    summary = run_clean(spark, settings, root / "raw", root / "out")
    return summary, expected, root / "out"


def test_every_row_is_accounted_for_with_exact_reasons(cleaned) -> None:  # type: ignore[no-untyped-def]
    summary, expected, out = cleaned
    exp_events = {r: n for (s, r), n in expected.items() if s == "events" and r is not None}
    exp_items = {r: n for (s, r), n in expected.items() if s == "items" and r is not None}
    assert summary.events.rejected_by_reason == dict(sorted(exp_events.items()))
    assert summary.items.rejected_by_reason == dict(sorted(exp_items.items()))
    assert summary.events.rows_in == sum(n for (s, _), n in expected.items() if s == "events") == 37
    assert summary.events.rows_kept == expected[("events", None)] == 13
    assert summary.items.rows_in == 11 and summary.items.rows_kept == 7
    assert summary.rows_in == summary.rows_kept + sum(summary.rejected_by_reason.values())
    assert summary.balanced
    assert set(summary.rejected_by_reason) <= R.ALL_REASONS
    # summary.json says the same, and the quarantine file has one line per rejected row
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["rows_in"] == summary.rows_in and on_disk["rows_kept"] == summary.rows_kept
    assert on_disk["rejected_by_reason"] == summary.rejected_by_reason
    assert CleanSummary.from_dict(on_disk).balanced
    lines = [json.loads(x) for f in sorted((out / "quarantine").glob("part-*.json"))
             for x in f.read_text().splitlines()]
    assert len(lines) == summary.rejected
    assert all(set(rec) == {"source", "reason", "domain", "raw"} for rec in lines)
    assert Counter((rec["source"], rec["reason"]) for rec in lines) == Counter(
        {k: v for k, v in expected.items() if k[1] is not None}
    )
    malformed_raws = {rec["raw"] for rec in lines if rec["reason"] == R.MALFORMED_JSON}
    assert '{"user_id": "U9", "domain": "art"' in malformed_raws
    unknown = [rec for rec in lines if rec["reason"] == R.UNKNOWN_DOMAIN]
    assert unknown[0]["domain"] == "garden"
    assert summary.per_domain["garden"].rejected_by_reason == {R.UNKNOWN_DOMAIN: 1}
    assert summary.per_domain["office"].events_kept == 6


def test_items_are_normalised(cleaned) -> None:  # type: ignore[no-untyped-def]
    _, _, out = cleaned
    items = {(r["domain"], r["item_id"]): r for r in read_parquet(out / "items")}
    assert set(items) == {("art", "art-1"), ("art", "art-2"), ("art", "art-3"), ("office", "office-1"),
                          ("office", "office-2"), ("office", "office-3"), ("books", "books-1")}
    art1 = items[("art", "art-1")]
    assert art1["title"] == "Red Pen & Ink"
    assert art1["text"] == "Red Pen & Ink | arts <crafts> | Pilot"
    assert items[("art", "art-2")]["category"] == "pens"  # the fuller duplicate won
    assert items[("art", "art-3")]["title"] == "Eraser"
    assert items[("art", "art-3")]["category"] == "Office&School"
    assert items[("books", "books-1")]["text"] == 'A Book, Hardcover | a "quoted" description'


def test_events_are_normalised_ordered_and_split(cleaned) -> None:  # type: ignore[no-untyped-def]
    _, _, out = cleaned
    events = read_parquet(out / "events")
    by_user: dict[str, list[dict[str, object]]] = {}
    for e in events:
        by_user.setdefault(str(e["user_id"]), []).append(e)
    for rows in by_user.values():
        rows.sort(key=lambda e: e["position"])  # type: ignore[arg-type,return-value]
    assert set(by_user) == {"U1", "U2", "U3", "U4", "U5", "U6", "U7"}
    u1 = by_user["U1"]
    assert [e["item_id"] for e in u1] == ["art-1", "office-1", "office-2", "art-2", "office-3"]
    assert [e["position"] for e in u1] == [0, 1, 2, 3, 4]
    assert [e["ts_ms"] for e in u1] == [T0, T0 + H, T0 + 2.5 * H, T0 + 3 * H, T0 + 4 * H]
    assert [e["split"] for e in u1] == ["train", "train", "valid", "train", "test"]
    assert [e["event_type"] for e in u1] == ["view", "purchase", "review", "click", "rating"]
    assert u1[0]["domain"] == "art" and u1[4]["rating"] == 4.5 and u1[0]["rating"] is None
    assert u1[0]["event_id"] == derive_event_id("U1", "art", "art-1", "view", T0)
    assert u1[0]["ts"].isoformat() == "2020-01-01T00:00:00+00:00"  # type: ignore[union-attr]
    assert [e["split"] for e in by_user["U2"]] == ["train", "train"]  # no target events
    assert by_user["U2"][0]["ts_ms"] == T0 + 31 * 24 * H + 123
    assert [e["split"] for e in by_user["U3"]] == ["test"]  # one target event
    assert [e["ts_ms"] for e in by_user["U4"]] == [T0 + (91 * 24 + 10) * H, T0 + (91 * 24 + 10) * H + 300_000]
    assert [(e["event_id"], e["item_id"]) for e in by_user["U7"]] == [("evt-1", "office-1")]
    assert by_user["U5"][0]["split"] == "test" and by_user["U6"][0]["ts_ms"] == T0 + 10 * H
    seqs = {r["user_id"]: r for r in read_parquet(out / "sequences")}
    assert seqs["U1"]["n_events"] == 5
    assert [h["item_id"] for h in seqs["U1"]["history"]] == [e["item_id"] for e in u1]
    assert seqs["U1"]["history"][1] == {"domain": "office", "item_id": "office-1",
                                        "event_type": "purchase", "ts_ms": T0 + H}
    splits = read_parquet(out / "splits")
    assert sorted((r["user_id"], r["split"]) for r in splits) == [
        ("U1", "test"), ("U1", "valid"), ("U3", "test"), ("U5", "test"), ("U7", "test")]


def test_kcore_and_window_off_through_the_job_main(spark, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``jobs/clean_logs.py`` end to end, k-core on (2), near-dup removal off.

    Per domain and iterated: art keeps only U4's three art-3 clicks (U2/U6 have one art event,
    which then leaves art-1/art-2 with one user); office collapses in the second round (U1 keeps
    office-1/-2 after round one, each then has a single user); books has one event.
    """
    import importlib.util

    from conftest import REPO_ROOT

    build_fixture(tmp_path / "raw")
    spec = importlib.util.spec_from_file_location("clean_logs", REPO_ROOT / "jobs" / "clean_logs.py")
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    monkeypatch.setenv("CROSSREC_WORK_DIR", str(tmp_path / "work"))  # the job reads global settings
    from crossrec.settings import get_settings

    get_settings.cache_clear()
    try:
        code = job.main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"),
                         "--kcore", "2", "--near-dup-window-s", "-1"])
    finally:
        get_settings.cache_clear()
    assert code == 0
    summary = CleanSummary.from_dict(json.loads((tmp_path / "out" / "summary.json").read_text()))
    assert summary.kcore == 2 and summary.near_dup_window_s is None
    assert R.NEAR_DUPLICATE not in summary.events.rejected_by_reason
    assert summary.events.rejected_by_reason[R.KCORE] == 11
    assert summary.events.rows_kept == 3 and summary.balanced
    events = read_parquet(tmp_path / "out" / "events")
    assert sorted((e["user_id"], e["item_id"], e["position"]) for e in events) == [
        ("U4", "art-3", 0), ("U4", "art-3", 1), ("U4", "art-3", 2)]
