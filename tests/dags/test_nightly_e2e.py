"""The nightly DAG end to end under a running Airflow (api-server, dag-processor, scheduler started
by crossrec), on a small sample of the shipped data, with real Redis, broker, Spark, Feast, torch:

1. a good night: every task succeeds, the branch promotes a model, the others are skipped, and
   the run summary (decision, metrics, times) is in XCom;
2. a broken upstream (the target domain vanished from the logs) the next night: the run fails at
   the data-quality gate with the reason and an alert line; nothing is trained or published and
   the current model stays.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from conftest import SHARED_DATA, free_port, make_settings

from crossrec.services import services_down, services_up

pytestmark = pytest.mark.integration
DAG = "crossrec_nightly_retrain"
FAST_ADAPT = ["--max-epochs", "2", "--pretrain-epochs", "1", "--dim", "32", "--negatives", "128", "--threads", "1"]


@pytest.fixture(scope="module")
def airflow_settings(tmp_path_factory: pytest.TempPathFactory):
    from crossrec.nightly.airflow_runner import airflow_down, airflow_up
    from crossrec.nightly.sample import write_sample

    tmp = tmp_path_factory.mktemp("nightly")
    write_sample(SHARED_DATA, tmp / "raw", 40)
    settings = make_settings(
        tmp, data_dir=tmp / "raw",
        nightly={"airflow_port": free_port(), "scheduler_health_port": free_port(), "adapt_args": FAST_ADAPT,
                 "schedule": None},
        spark={"master": "local[2]", "driver_memory": "1g", "shuffle_partitions": 2},
        services={"run_dir": tmp / "run", "startup_timeout_s": 60},
    )
    # the tasks read their settings from the environment the scheduler was started with
    env = {
        "CROSSREC_WORK_DIR": str(settings.work_dir), "CROSSREC_DATA_DIR": str(settings.data_dir),
        "CROSSREC_REDIS__URL": settings.redis.url, "CROSSREC_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CROSSREC_SERVICES__RUN_DIR": str(settings.services.run_dir), "CROSSREC_SPARK__DRIVER_MEMORY": "1g",
        "CROSSREC_SPARK__SHUFFLE_PARTITIONS": "2", "CROSSREC_NIGHTLY__ADAPT_ARGS": json.dumps(FAST_ADAPT),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    services_up(settings)
    try:
        airflow_up(settings)
        yield settings
    finally:
        airflow_down(settings)
        services_down(settings)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_good_night_then_broken_upstream_stops_at_the_gate(airflow_settings) -> None:
    from crossrec.nightly.airflow_runner import AirflowAPI, airflow_status, run_dag
    from crossrec.registry import ModelRegistry

    settings = airflow_settings
    assert all(s.ok for s in airflow_status(settings))

    good = run_dag(settings, DAG, "2026-01-05", timeout_s=600)
    assert good.state == "success", good.tasks
    assert good.tasks["choose_model"] == "success" and good.tasks["publish_recs"] == "success"
    # no current model before: tonight's better candidate is promoted, the other branches skip
    promoted = [t for t in ("promote_transfer", "promote_retrained") if good.tasks[t] == "success"]
    assert len(promoted) == 1 and good.tasks["keep_current"] == "skipped"
    registry = ModelRegistry(settings.work_dir / "registry")
    assert registry.versions() == ["v0001"] and registry.current() == "v0001"
    assert registry.manifest("v0001")["run_key"] == "nightly-2026-01-05"
    summary = AirflowAPI(settings).xcom(DAG, good.run_id, "run_summary")
    assert summary["decision"] == promoted[0] and summary["current_model"] == "v0001" and summary["why"]
    assert {"clean_logs", "embed_items", "train_candidates", "publish_recs"} <= set(summary["times_s"])
    assert summary["embedding"]["dtype"] in ("fp32", "bf16")
    assert set(summary["test"]) == {settings.nightly.fallback_strategy, "target_only", "routed"}  # routed: fitted over the candidates

    # the next night the target domain is gone from the logs
    raw = settings.data_dir / "events.jsonl.gz"
    with gzip.open(raw, "rt") as handle:
        lines = [line for line in handle if json.loads(line)["domain"] != settings.target_domain]
    with gzip.open(raw, "wt") as handle:
        handle.writelines(lines)
    bad = run_dag(settings, DAG, "2026-01-06", timeout_s=600)
    assert bad.state == "failed"
    assert bad.tasks["clean_logs"] == "success" and bad.tasks["data_quality_gate"] == "failed"
    for task in ("embed_items", "materialize_features", "train_candidates", "choose_model", "publish_recs", "run_summary"):
        assert bad.tasks[task] == "upstream_failed", (task, bad.tasks)
    assert registry.versions() == ["v0001"] and registry.current() == "v0001"  # nothing trained, model stays
    dq = json.loads((settings.work_dir / "nightly" / "runs" / "2026-01-06" / "dq.json").read_text())
    assert dq["ok"] is False and any("domain 'office' has no kept events" in r for r in dq["reasons"])
    gate_log = "".join(p.read_text() for p in (Path(bad.log_dir) / "task_id=data_quality_gate").rglob("*.log"))
    assert "CROSSREC ALERT" in gate_log and "domain 'office' has no kept events" in gate_log
