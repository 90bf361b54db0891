"""Nightly retraining of crossrec, with the decision in the graph.

    clean_logs -> data_quality_gate -> embed_items -> materialize_features -> train_candidates
      -> choose_model (branch) -> promote_transfer | promote_retrained | keep_current
      -> publish_recs -> run_summary

Orchestration only: the heavy steps run `crossrec` sub-commands (a task run by hand is exactly
what the scheduler runs), the small decisions call `crossrec.nightly`. Configuration (paths,
Redis, Spark master, thresholds) comes from crossrec's settings on the worker.

* The data-quality gate fails the run, with its reasons, before any model work.
* `train_candidates` trains the configured strategy (by default the last weekly review's winner)
  and the target-only retrain, and registers the better one without promoting it (or reuses an
  earlier night's candidate when the training data and configuration are unchanged).
* `choose_model` compares it with the current model from the recorded numbers and picks a branch;
  only the chosen promotion runs. `publish_recs` then refreshes every user's list with whichever
  model is current, so histories stay fresh on nights the model is kept.
* Every task takes the run's logical date (`ds`): its records live under
  `{work_dir}/nightly/runs/{ds}/`, and the model it trains is registered under the run key
  `nightly-{ds}`, so a retry or a re-run of a date registers no second model.
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, dag, task

from crossrec.nightly.alert import on_failure
from crossrec.settings import get_settings

# The crossrec console script of the environment Airflow runs in (one venv; see README).
CROSSREC = shlex.quote(str(Path(sys.executable).with_name("crossrec")))
SETTINGS = get_settings()

CLEANED_LOGS = Asset("crossrec://clean/events", extra={"what": "cleaned events, items and splits (parquet)"})
EMBEDDINGS = Asset("crossrec://embeddings/items", extra={"what": "item text embeddings (Feast offline source)"})
PROMOTED_MODEL = Asset("crossrec://registry/current", extra={"what": "the model the registry serves"})

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 0,  # raised per task where a retry can help (a service blip), not on logic failures
    "retry_delay": timedelta(minutes=2),
    "execution_timeout": timedelta(hours=2),
    "on_failure_callback": on_failure,
}


def timed(task_id: str, command: str) -> str:
    """Run ``command`` through `crossrec nightly timed`, which records its wall time for the summary."""
    return f"{CROSSREC} nightly timed --ds {{{{ ds }}}} --task {task_id} -- {command}"


@dag(
    dag_id="crossrec_nightly_retrain",
    schedule=SETTINGS.nightly.schedule or None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=SETTINGS.nightly.dagrun_timeout_min),
    default_args=DEFAULT_ARGS,
    tags=["crossrec", "nightly"],
    doc_md=__doc__,
)
def nightly_retrain() -> None:
    @task.bash(outlets=[CLEANED_LOGS], retries=1)
    def clean_logs() -> str:
        """Spark: validate, normalise, dedupe, quarantine and split the raw multi-domain logs."""
        return timed("clean_logs", f"{CROSSREC} clean")

    @task
    def data_quality_gate(ds: str | None = None) -> dict:
        """Fail the run before any model work when the cleaned data looks broken (no retry)."""
        import time

        from airflow.sdk.exceptions import AirflowFailException

        from crossrec.nightly.dq import DataQualityError, run_gate
        from crossrec.nightly.state import record_time

        settings, started = get_settings(), time.monotonic()
        try:
            return run_gate(settings, ds)
        except DataQualityError as exc:
            raise AirflowFailException(str(exc)) from exc
        finally:
            record_time(settings, ds, "data_quality_gate", time.monotonic() - started)

    @task.bash(outlets=[EMBEDDINGS], retries=1)
    def embed_items(ds: str | None = None) -> str:
        """Spark + transformers: re-embed only items whose text or encoder changed."""
        from crossrec.nightly.state import run_dir

        stats = shlex.quote(str(run_dir(get_settings(), ds) / "embed.json"))
        return timed("embed_items", f"{CROSSREC} embed --dtype {SETTINGS.nightly.embed_dtype} --stats-file {stats}")

    @task.bash(retries=2)
    def materialize_features() -> str:
        """Feast: compute item/user feature tables, register definitions, materialise to Redis."""
        steps = " && ".join(f"{CROSSREC} features {step}" for step in ("stats", "apply", "materialize"))
        return timed("materialize_features", f"sh -c {shlex.quote(steps)}")

    @task.bash(retries=1)
    def train_candidates() -> str:
        """torch: train the configured strategy and the target-only retrain, evaluate both, register
        the better on validation under the run key (no promotion: the branch decides); an earlier
        night's candidate is reused when the data and the configuration are unchanged."""
        return timed("train_candidates", f"{CROSSREC} nightly train --ds {{{{ ds }}}}")

    @task.branch
    def choose_model(ds: str | None = None) -> str:
        """Promote the transfer model, promote the retrained one, or keep the current model."""
        from crossrec.nightly.decision import decide_for_run

        decision = decide_for_run(get_settings(), ds)
        print(f"decision: {decision.action}: {decision.reason}")
        return decision.action

    @task(outlets=[PROMOTED_MODEL], retries=1)
    def promote_transfer(ds: str | None = None) -> dict:
        """Move the registry's current pointer to tonight's transfer model."""
        from crossrec.nightly.decision import PROMOTE_TRANSFER, apply_decision

        return apply_decision(get_settings(), ds, PROMOTE_TRANSFER)

    @task(outlets=[PROMOTED_MODEL], retries=1)
    def promote_retrained(ds: str | None = None) -> dict:
        """Move the registry's current pointer to tonight's target-only retrain."""
        from crossrec.nightly.decision import PROMOTE_RETRAINED, apply_decision

        return apply_decision(get_settings(), ds, PROMOTE_RETRAINED)

    @task
    def keep_current(ds: str | None = None) -> dict:
        """Keep the serving model (the reason is in decision.json and the summary)."""
        from crossrec.nightly.decision import KEEP_CURRENT, apply_decision

        return apply_decision(get_settings(), ds, KEEP_CURRENT)

    @task.bash(trigger_rule="none_failed_min_one_success", retries=2)
    def publish_recs() -> str:
        """Batch top-K for every active user with the current model -> Redis."""
        return timed("publish_recs", f"{CROSSREC} publish")

    @task
    def run_summary(ds: str | None = None) -> dict:
        """What was decided and why, the metrics and the times: in this log and in XCom."""
        from crossrec.nightly.summary import finish_run, render_lines

        summary = finish_run(get_settings(), ds)
        for line in render_lines(summary):
            print(line)
        return summary

    branch = choose_model()
    (
        clean_logs()
        >> data_quality_gate()
        >> embed_items()
        >> materialize_features()
        >> train_candidates()
        >> branch
    )
    publish = publish_recs()
    branch >> [promote_transfer(), promote_retrained(), keep_current()] >> publish
    publish >> run_summary()


nightly_retrain()
