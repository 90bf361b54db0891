"""The Astro-style DagBag import test: DAG files import cleanly and have the expected shape."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    import os

    os.environ["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("airflow_home"))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "crossrec_nightly_retrain" in dagbag.dags


def test_nightly_pipeline_order_and_policy(dagbag) -> None:
    dag = dagbag.dags["crossrec_nightly_retrain"]
    assert dag.catchup is False and dag.max_active_runs == 1
    order = ["clean_logs", "embed_items", "materialize_features", "adapt_and_gate", "publish_recs"]
    assert set(dag.task_ids) == set(order)
    for upstream, downstream in zip(order, order[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    for task in dag.tasks:
        assert task.retries >= 1


def test_every_task_runs_an_existing_crossrec_command(dagbag) -> None:
    """Each bash task calls `crossrec <sub-command>`; the sub-command must exist in the CLI."""
    from typer.main import get_command

    from crossrec.cli import app

    cli = get_command(app)
    dag = dagbag.dags["crossrec_nightly_retrain"]
    for task in dag.tasks:
        command = task.python_callable()
        for part in command.split("&&"):
            words = shlex.split(part)
            assert Path(words[0]).name == "crossrec"
            group = cli.commands[words[1]]  # KeyError = a DAG step the CLI does not have
            if len(words) > 2 and not words[2].startswith("-"):
                assert words[2] in group.commands, f"{task.task_id}: no `crossrec {words[1]} {words[2]}`"
