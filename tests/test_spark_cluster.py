"""A real Spark standalone cluster (master + worker from the pyspark wheel) started by crossrec:
the clean and embed jobs submitted to it with spark-submit give the same output as local mode."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, free_port, make_settings

from crossrec.services import State, services_down, services_status, services_up
from crossrec.settings import Settings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cluster")
    master_port = free_port()
    settings = make_settings(
        tmp,
        spark={
            "master": f"spark://127.0.0.1:{master_port}", "master_port": master_port,
            "master_ui_port": free_port(), "worker_port": free_port(), "worker_ui_port": free_port(),
            "worker_cores": 2, "worker_memory": "2g", "executor_memory": "1g", "driver_memory": "1g",
            "shuffle_partitions": 2,
        },
        services={"run_dir": tmp / "run", "startup_timeout_s": 90},
    )
    try:
        yield settings, services_up(settings, spark=True)
    finally:
        services_down(settings, spark=True)


def _submit(settings: Settings, job: str, *args: str) -> subprocess.CompletedProcess:
    from crossrec.spark_cluster import spark_submit_argv

    env = {**os.environ, "CROSSREC_WORK_DIR": str(settings.work_dir), "CROSSREC_SPARK__MASTER": settings.spark.master,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(spark_submit_argv(settings, REPO / "jobs" / job, *args), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _frame(path: Path) -> pd.DataFrame:
    """A parquet table in a canonical row and column order (Spark's file order is not stable)."""
    df = pd.read_parquet(path)
    df = df.astype({c: str for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)})
    cols = sorted(df.columns)
    keys = [c for c in cols if df[c].map(lambda v: isinstance(v, (str, int, float)) or v is None).all()]
    return df[cols].sort_values(keys).reset_index(drop=True)


def test_cluster_runs_clean_and_embed_like_local_mode(cluster, spark, tmp_path: Path) -> None:
    settings, statuses = cluster
    assert [s.name for s in statuses] == ["redis", "kafka", "spark-master", "spark-worker"]
    assert all(s.state is State.UP for s in statuses)
    from crossrec.spark_cluster import alive_workers

    assert alive_workers(settings) == 1  # the worker registered with the master

    from crossrec.nightly.sample import write_sample

    raw = tmp_path / "raw"
    write_sample(SHARED_DATA, raw, 25)
    cluster_out = tmp_path / "cluster"
    done = _submit(settings, "clean_logs.py", "--input", str(raw), "--output", str(cluster_out / "clean"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the job really ran on the cluster: the master handed executors on the worker to the app
    assert "Granted executor ID" in done.stderr

    from crossrec.cleaning.pipeline import run_clean

    local_settings = make_settings(tmp_path / "local")
    run_clean(spark, local_settings, raw, tmp_path / "local" / "clean", near_dup_window_s=60.0, kcore=None)
    for table in ("events", "items"):
        on_cluster, local = _frame(cluster_out / "clean" / table), _frame(tmp_path / "local" / "clean" / table)
        assert len(on_cluster) > 0
        pd.testing.assert_frame_equal(on_cluster, local)

    # embed every item on the cluster's executors (no driver shortcut), compare with the encoder
    done = _submit(settings, "embed_items.py", "--input", str(cluster_out / "clean" / "items"),
                   "--output", str(cluster_out / "emb"), "--local-max-items", "0", "--rows-per-partition", "256")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "embedded on" in done.stdout and "spark" in done.stdout
    from crossrec.encoders import get_encoder

    emb = pd.read_parquet(cluster_out / "emb" / "minilm").set_index("item_id").sort_index()
    items = pd.read_parquet(cluster_out / "clean" / "items").drop_duplicates("item_id").set_index("item_id").sort_index()
    assert set(emb.index) == set(items.index)
    enc = get_encoder("minilm", cache_dir=settings.work_dir / "cache" / "models")
    np.testing.assert_allclose(np.stack(emb["embedding"].to_numpy()), enc.encode(items.loc[emb.index, "text"].tolist()), atol=1e-5)


def test_plain_down_also_stops_a_cluster_started_with_the_flag(tmp_path: Path) -> None:
    """`up --spark` then a plain `down` (setting off) must not leave the JVMs running."""
    port = free_port()
    settings = make_settings(tmp_path, spark={"master_port": port, "master_ui_port": free_port(),
                                              "worker_port": free_port(), "worker_ui_port": free_port(),
                                              "worker_memory": "1g"},
                             services={"run_dir": tmp_path / "run", "startup_timeout_s": 90})
    try:
        services_up(settings, spark=True)
        assert [s.state for s in services_status(settings, spark=True)] == [State.UP] * 4
        stopped = dict(services_down(settings))
        assert stopped == {"spark-worker": True, "spark-master": True, "kafka": True, "redis": True}
        assert [s.state for s in services_status(settings, spark=True)] == [State.DOWN] * 4
    finally:
        services_down(settings, spark=True)
