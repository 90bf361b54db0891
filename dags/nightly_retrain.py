"""Nightly retraining of crossrec: clean -> embed -> features -> adapt (gated) -> publish.

Orchestration only: every task runs a `crossrec` sub-command, so the DAG holds no business logic
and a task run by hand is exactly what the scheduler runs. Configuration (paths, Redis, Spark
master, encoder) comes from crossrec's settings (CROSSREC_* env or crossrec.yaml) on the worker.

The promotion gate lives in `crossrec adapt`: a candidate that does not beat the current model on
validation NDCG@10 is registered but not promoted; `publish` then refreshes every user's list
with whichever model is current, so histories stay fresh even on nights the model is kept.
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task

# The crossrec console script of the environment Airflow runs in (one venv; see README).
CROSSREC = shlex.quote(str(Path(sys.executable).with_name("crossrec")))

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(hours=2),
}


@dag(
    dag_id="crossrec_nightly_retrain",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["crossrec", "nightly"],
    doc_md=__doc__,
)
def nightly_retrain() -> None:
    @task.bash
    def clean_logs() -> str:
        """Spark: validate, normalise, dedupe, quarantine and split the raw multi-domain logs."""
        return f"{CROSSREC} clean"

    @task.bash
    def embed_items() -> str:
        """Spark + transformers: re-embed only items whose text or encoder changed."""
        return f"{CROSSREC} embed"

    @task.bash
    def materialize_features() -> str:
        """Feast: compute item/user feature tables, register definitions, materialise to Redis."""
        return f"{CROSSREC} features stats && {CROSSREC} features apply && {CROSSREC} features materialize"

    @task.bash
    def adapt_and_gate() -> str:
        """torch: compare the strategies, register the best on validation, promote only if it beats
        the current model (re-scored on today's validation users) by the configured margin."""
        return f"{CROSSREC} adapt"

    @task.bash
    def publish_recs() -> str:
        """Batch top-K for every active user with the current model -> Redis."""
        return f"{CROSSREC} publish"

    clean = clean_logs()
    clean >> embed_items() >> materialize_features() >> adapt_and_gate() >> publish_recs()


nightly_retrain()
