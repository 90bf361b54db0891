"""The Spark embedding job on a small catalogue in the clean contract (real Spark, real MiniLM)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossrec.embedding import embed_items, output_dir_for, text_hash
from crossrec.encoders import get_encoder

N_PER_DOMAIN = 12


def catalogue() -> pd.DataFrame:
    rows = []
    for domain, things in (("art", ["paint set", "brush", "canvas", "yarn"]), ("office", ["stapler", "pen", "folder", "tape"])):
        for k in range(N_PER_DOMAIN):
            title = f"{things[k % 4]} model {k}"
            rows.append({
                "item_id": f"{domain}-{k:05d}", "title": title, "attributes": f"{domain} supplies",
                "category": None, "brand": f"brand{k % 3}", "text": f"{title} | {domain} supplies brand{k % 3}",
                "domain": domain,
            })
    return pd.DataFrame(rows)


def write_items(df: pd.DataFrame, path: Path) -> Path:
    """Clean items contract: parquet partitioned by domain."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    pq.write_to_dataset(pa.Table.from_pandas(df, preserve_index=False), str(path), partition_cols=["domain"])
    return path


def read_out(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out)
    return df.set_index("item_id").sort_index()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def run(spark, items: Path, out_root: Path, cache_dir: Path, **kw):
    """The job with tiny Spark tasks; ``local_max_items=0`` forces every delta through Spark.
    Every run must leave nothing but its output behind (no temporary output, no input shards)."""
    stats = embed_items(spark, items, out_root, "minilm", cache_dir=cache_dir, rows_per_partition=8, **kw)
    assert leftovers(out_root) == []
    return stats


def leftovers(out_root: Path) -> list[str]:
    """Staging directories of a run (temporary output ``.x.tmp-*``, input shards ``*.shards``)."""
    return sorted(p.name for p in Path(out_root).glob(".*") if ".tmp-" in p.name or p.name.endswith(".shards"))


def test_text_hash_is_sha256_of_utf8():
    assert text_hash("café | x") == hashlib.sha256("café | x".encode()).hexdigest()


@pytest.mark.parametrize("delta_on", ["spark", "driver"])
def test_full_then_incremental(spark, tmp_path, cache_dir, delta_on):
    cat = catalogue()
    items = write_items(cat, tmp_path / "items")
    out_root = tmp_path / "embeddings"
    # the full run always on Spark; the small deltas on Spark or in the driver
    delta_kw = {"local_max_items": 0 if delta_on == "spark" else 1000}

    s1 = run(spark, items, out_root, cache_dir, local_max_items=0)
    assert (s1.items_in, s1.embedded, s1.kept, s1.removed, s1.embedded_on) == (len(cat), len(cat), 0, 0, "spark")
    first = read_out(output_dir_for(out_root, "minilm"))
    assert list(first.columns) == ["domain", "embedding", "text_hash", "encoder", "event_timestamp", "encoder_version"]
    assert len(first) == len(cat) and (first["encoder"] == "minilm").all()
    assert str(first["event_timestamp"].dt.tz) == "UTC"
    # the Spark path gives exactly the vectors of the plain encoder, and the hash of the text
    enc = get_encoder("minilm", cache_dir=cache_dir)
    texts = cat.set_index("item_id").sort_index()["text"]
    np.testing.assert_allclose(np.stack(first["embedding"].to_numpy()), enc.encode(texts.tolist()), atol=1e-5)
    assert (first["text_hash"] == texts.map(text_hash)).all()

    # change one text, add one item, remove one item
    time.sleep(1.1)  # timestamps have second resolution
    changed = cat.copy()
    changed.loc[changed["item_id"] == "art-00003", "text"] = "a completely new description | art"
    changed = changed[changed["item_id"] != "office-00004"]
    new_row = changed.iloc[[0]].assign(item_id="art-99999", text="brand new item | art")
    changed = pd.concat([changed, new_row], ignore_index=True)
    write_items(changed, items)

    s2 = run(spark, items, out_root, cache_dir, **delta_kw)
    assert (s2.embedded, s2.kept, s2.removed, s2.embedded_on) == (2, len(cat) - 2, 1, delta_on)
    second = read_out(output_dir_for(out_root, "minilm"))
    assert set(second.index) == set(changed["item_id"])
    untouched = first.index.difference(["art-00003", "office-00004"])
    np.testing.assert_array_equal(
        np.stack(second.loc[untouched, "embedding"].to_numpy()), np.stack(first.loc[untouched, "embedding"].to_numpy())
    )
    assert (second.loc[untouched, "event_timestamp"] == first.loc[untouched, "event_timestamp"]).all()
    assert second.loc["art-00003", "event_timestamp"] > first.loc["art-00003", "event_timestamp"]
    np.testing.assert_allclose(second.loc["art-00003", "embedding"], enc.encode(["a completely new description | art"])[0], atol=1e-5)
    assert second.loc["art-00003", "text_hash"] == text_hash("a completely new description | art")
    assert second.loc["art-99999", "event_timestamp"] == second.loc["art-00003", "event_timestamp"]
    assert str(second["event_timestamp"].dt.tz) == "UTC" and second["embedding"].map(len).eq(384).all()
    # Spark reads the mixed output (Spark-written, driver-written and carried-over files) as one table
    assert spark.read.parquet(str(output_dir_for(out_root, "minilm"))).count() == len(changed)

    # nothing changed: nothing embedded, output untouched (not even rewritten)
    files = sorted(p.name for p in output_dir_for(out_root, "minilm").glob("*.parquet"))
    s3 = run(spark, items, out_root, cache_dir, **delta_kw)
    assert (s3.embedded, s3.kept, s3.removed, s3.embedded_on) == (0, len(changed), 0, "none")
    assert sorted(p.name for p in output_dir_for(out_root, "minilm").glob("*.parquet")) == files

    # only a removal: nothing embedded, the removed row is gone, the rest carried over bit for bit
    fewer = changed[changed["item_id"] != "art-00005"]
    write_items(fewer, items)
    s_rm = run(spark, items, out_root, cache_dir, **delta_kw)
    assert (s_rm.embedded, s_rm.kept, s_rm.removed, s_rm.embedded_on) == (0, len(fewer), 1, "none")
    after_rm = read_out(output_dir_for(out_root, "minilm"))
    assert set(after_rm.index) == set(fewer["item_id"])
    pd.testing.assert_frame_equal(after_rm, second.drop(index="art-00005"))

    # a different encoder version (bf16 weights) re-embeds everything
    s4 = run(spark, items, out_root, cache_dir, dtype="bf16", **delta_kw)
    assert (s4.embedded, s4.kept) == (len(fewer), 0)
    fourth = read_out(output_dir_for(out_root, "minilm"))
    assert fourth["encoder_version"].str.endswith("/bf16").all()


def test_shards_deal_every_row_once_at_equal_cost(tmp_path):
    """The Spark tasks' input: every delta row in exactly one shard, lengths dealt round-robin."""
    from crossrec.embedding.job import write_shards

    texts = [f"item text {'x' * k}" for k in range(10)]
    todo = pa.table({"domain": ["art"] * 10, "item_id": [f"i{k}" for k in range(10)], "text": texts,
                     "text_hash": [text_hash(t) for t in texts]})
    paths = write_shards(todo, 3, tmp_path / "s")
    shards = [pq.read_table(p) for p in paths]
    assert [t.num_rows for t in shards] == [4, 3, 3]
    assert sorted(sum((t["item_id"].to_pylist() for t in shards), [])) == sorted(todo["item_id"].to_pylist())
    # longest first, dealt in turn: shard 0 holds the 1st, 4th, 7th and 10th longest texts
    assert shards[0]["item_id"].to_pylist() == ["i9", "i6", "i3", "i0"]
    assert shards[0].column_names == ["domain", "item_id", "text", "text_hash"]
    # more tasks than rows: no empty shard files
    assert len(write_shards(todo.slice(0, 2), 4, tmp_path / "t")) == 2


def test_an_encoder_of_another_version_is_refused(cache_dir):
    """Driver and Spark workers load the encoder through one check: a version other than the one
    the plan hashed with (other weights, dtype or pooling) stops the run instead of writing it."""
    from crossrec.embedding.worker import WorkerSpec, load_encoder

    spec = WorkerSpec(encoder="minilm", dtype="fp32", cache_dir=str(cache_dir), batch_size=None, version="minilm/other")
    with pytest.raises(RuntimeError, match="planned by the driver"):
        load_encoder(spec, threads=1)
    real = get_encoder("minilm", cache_dir=cache_dir).version
    assert load_encoder(WorkerSpec("minilm", "fp32", str(cache_dir), None, real), threads=1).version == real


def test_failed_spark_run_keeps_the_previous_output(spark, tmp_path, cache_dir, monkeypatch):
    """A task that dies mid-job fails the run loudly; the previous output stays as it was and no
    staging (temporary output, input shards) is left behind."""
    import crossrec.embedding.job as job

    cat = catalogue()
    items = write_items(cat, tmp_path / "items")
    run(spark, items, tmp_path / "emb", cache_dir, local_max_items=0)
    out_dir = output_dir_for(tmp_path / "emb", "minilm")
    before = read_out(out_dir)

    def broken_fn(spec):
        def fail(batches):
            for _ in batches:
                raise RuntimeError("worker died")
            yield from ()
        return fail

    monkeypatch.setattr(job, "make_embed_fn", broken_fn)
    write_items(cat.assign(text=cat["text"] + " v2"), items)
    with pytest.raises(Exception, match="worker died"):
        embed_items(spark, items, tmp_path / "emb", "minilm", cache_dir=cache_dir, rows_per_partition=8, local_max_items=0)
    assert leftovers(tmp_path / "emb") == []
    pd.testing.assert_frame_equal(read_out(out_dir), before)


def test_carry_over_links_untouched_files(spark, tmp_path, cache_dir):
    """Previous files without a stale row are hard-linked, not rewritten; the others are filtered."""
    cat = catalogue()
    items = write_items(cat, tmp_path / "items")
    out_dir = output_dir_for(tmp_path / "emb", "minilm")
    run(spark, items, tmp_path / "emb", cache_dir, local_max_items=0)
    before = {p.stat().st_ino: pq.read_table(p, columns=["item_id"])["item_id"].to_pylist() for p in out_dir.glob("*.parquet")}
    assert len(before) > 2  # rows_per_partition=8: several part files
    victim_inode, victim_ids = next(iter(before.items()))
    changed = cat.copy()
    changed.loc[changed["item_id"] == victim_ids[0], "text"] = "changed text | art"
    write_items(changed, items)
    s = run(spark, items, tmp_path / "emb", cache_dir)
    assert (s.embedded, s.kept, s.embedded_on) == (1, len(cat) - 1, "driver")
    after = {p.stat().st_ino for p in out_dir.glob("*.parquet")}
    assert set(before) - {victim_inode} <= after  # the untouched files are the very same files
    assert victim_inode not in after  # the file with the changed item was rewritten without it
    out = read_out(out_dir)
    assert len(out) == len(cat) and out.loc[victim_ids[0], "text_hash"] == text_hash("changed text | art")


def test_spark_is_started_only_for_a_large_delta(spark, tmp_path, cache_dir):
    """With a session factory, a driver-sized delta or an unchanged catalogue never starts Spark."""
    cat = catalogue()
    items = write_items(cat, tmp_path / "items")
    calls: list[int] = []

    def factory():
        calls.append(1)
        return spark

    first = run(factory, items, tmp_path / "emb", cache_dir, local_max_items=len(cat) - 1)
    assert (first.embedded_on, len(calls)) == ("spark", 1)
    changed = cat.copy()
    changed.loc[0, "text"] = "another text | art"
    write_items(changed, items)
    second = run(factory, items, tmp_path / "emb", cache_dir, local_max_items=len(cat) - 1)
    third = run(factory, items, tmp_path / "emb", cache_dir, local_max_items=len(cat) - 1)
    assert (second.embedded, second.embedded_on, third.embedded_on, len(calls)) == (1, "driver", "none", 1)


def test_bad_rows_are_counted_not_lost(spark, tmp_path, cache_dir):
    cat = catalogue().head(6)
    bad = pd.DataFrame([
        {**cat.iloc[0].to_dict(), "item_id": "art-bad", "text": None, "title": None},  # nothing to embed
        {**cat.iloc[1].to_dict()},  # duplicate id
    ])
    items = write_items(pd.concat([cat, bad], ignore_index=True), tmp_path / "items")
    stats = run(spark, items, tmp_path / "emb", cache_dir)
    assert (stats.items_in, stats.embedded, stats.skipped_no_text, stats.duplicates) == (8, 6, 1, 1)
    assert len(pd.read_parquet(output_dir_for(tmp_path / "emb", "minilm"))) == 6


def test_missing_column_is_a_clear_error(spark, tmp_path, cache_dir):
    items = write_items(catalogue().drop(columns=["text"]).head(3), tmp_path / "items")
    with pytest.raises(ValueError, match="text"):
        run(spark, items, tmp_path / "emb", cache_dir)


def test_cli_reports_missing_input(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from crossrec.cli import app

    monkeypatch.setenv("CROSSREC_WORK_DIR", str(tmp_path))
    from crossrec.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["embed", "--input", str(tmp_path / "nope")])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "does not exist" in " ".join(result.output.split())


def test_cli_embeds_a_small_catalogue_without_starting_spark(tmp_path, monkeypatch):
    """`crossrec embed` on a catalogue below the driver threshold: embedded in the process, then
    an unchanged re-run does nothing; no Spark session is ever asked for."""
    from typer.testing import CliRunner

    import crossrec.spark
    from crossrec.cli import app
    from crossrec.settings import get_settings

    def no_spark(*args, **kwargs):
        raise AssertionError("Spark was started for a driver-sized delta")

    monkeypatch.setattr(crossrec.spark, "spark_session", no_spark)
    monkeypatch.setenv("CROSSREC_WORK_DIR", str(tmp_path))
    items = write_items(catalogue(), tmp_path / "items")
    get_settings.cache_clear()
    try:
        first = CliRunner().invoke(app, ["embed", "--input", str(items), "--output", str(tmp_path / "emb")])
        again = CliRunner().invoke(app, ["embed", "--input", str(items), "--output", str(tmp_path / "emb")])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    assert "│ embedded on" in first.output and "driver" in first.output
    assert len(read_out(output_dir_for(tmp_path / "emb", "minilm"))) == len(catalogue())
    assert again.exit_code == 0 and "none" in again.output


def test_cli_dtype_auto_records_the_effective_dtype(tmp_path, monkeypatch):
    """`crossrec embed --dtype auto`: the probe's choice is the dtype in the encoder version of every
    row and in the stats file the nightly summary reads; a second run reuses the cached probe."""
    import json

    from typer.testing import CliRunner

    from crossrec.cli import app
    from crossrec.settings import get_settings

    monkeypatch.setenv("CROSSREC_WORK_DIR", str(tmp_path))
    items = write_items(catalogue(), tmp_path / "items")
    get_settings.cache_clear()
    try:
        args = ["embed", "--input", str(items), "--output", str(tmp_path / "emb"), "--dtype", "auto"]
        first = CliRunner().invoke(app, [*args, "--stats-file", str(tmp_path / "s1.json")])
        again = CliRunner().invoke(app, [*args, "--stats-file", str(tmp_path / "s2.json")])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    stats = json.loads((tmp_path / "s1.json").read_text())
    assert stats["dtype"] in ("fp32", "bf16") and stats["dtype_requested"] == "auto"
    out = read_out(output_dir_for(tmp_path / "emb", "minilm"))
    assert (out["encoder_version"].str.endswith("/" + stats["dtype"])).all()
    assert stats["encoder_version"].endswith("/" + stats["dtype"]) and stats["embedded"] == len(catalogue())
    second = json.loads((tmp_path / "s2.json").read_text())
    assert "cached probe" in second["dtype_reason"] and second["dtype"] == stats["dtype"] and second["embedded"] == 0
