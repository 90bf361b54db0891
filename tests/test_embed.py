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
    return embed_items(spark, items, out_root, "minilm", cache_dir=cache_dir, rows_per_partition=8, **kw)


def test_text_hash_is_sha256_of_utf8():
    assert text_hash("café | x") == hashlib.sha256("café | x".encode()).hexdigest()


def test_full_then_incremental(spark, tmp_path, cache_dir):
    cat = catalogue()
    items = write_items(cat, tmp_path / "items")
    out_root = tmp_path / "embeddings"

    s1 = run(spark, items, out_root, cache_dir)
    assert (s1.items_in, s1.embedded, s1.kept, s1.removed) == (len(cat), len(cat), 0, 0)
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

    s2 = run(spark, items, out_root, cache_dir)
    assert (s2.embedded, s2.kept, s2.removed) == (2, len(cat) - 2, 1)
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

    # nothing changed: nothing embedded, output untouched
    s3 = run(spark, items, out_root, cache_dir)
    assert (s3.embedded, s3.kept, s3.removed) == (0, len(changed), 0)

    # a different encoder version (bf16 weights) re-embeds everything
    s4 = run(spark, items, out_root, cache_dir, dtype="bf16")
    assert (s4.embedded, s4.kept) == (len(changed), 0)
    fourth = read_out(output_dir_for(out_root, "minilm"))
    assert fourth["encoder_version"].str.endswith("/bf16").all()


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
