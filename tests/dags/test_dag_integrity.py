"""The Astro-style DagBag import test: DAG files import cleanly and have the expected shape."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
NIGHTLY = "crossrec_nightly_retrain"
WEEKLY = "crossrec_weekly_strategy_review"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    import os

    os.environ["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("airflow_home"))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {NIGHTLY, WEEKLY} <= set(dagbag.dags)


def test_nightly_graph_has_the_gate_and_the_decision(dagbag) -> None:
    dag = dagbag.dags[NIGHTLY]
    assert dag.catchup is False and dag.max_active_runs == 1 and dag.dagrun_timeout is not None
    chain = ["clean_logs", "data_quality_gate", "embed_items", "materialize_features", "train_candidates", "choose_model"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    branches = {"promote_transfer", "promote_retrained", "keep_current"}
    assert dag.get_task("choose_model").downstream_task_ids == branches
    assert dag.get_task("publish_recs").upstream_task_ids == branches
    # publish runs after whichever branch ran (the two others are skipped), not only after all three
    assert dag.get_task("publish_recs").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("run_summary").upstream_task_ids == {"publish_recs"}
    assert set(dag.task_ids) == set(chain) | branches | {"publish_recs", "run_summary"}


def test_branch_names_match_the_decision_module(dagbag) -> None:
    from crossrec.nightly.decision import BRANCHES

    assert set(dagbag.dags[NIGHTLY].get_task("choose_model").downstream_task_ids) == set(BRANCHES)


def test_retries_only_where_they_help_and_alerts_everywhere(dagbag) -> None:
    from crossrec.nightly.alert import on_failure

    dag = dagbag.dags[NIGHTLY]
    # a failed data-quality check or decision is not fixed by running it again
    for task_id in ("data_quality_gate", "choose_model", "run_summary"):
        assert dag.get_task(task_id).retries == 0, task_id
    for task_id in ("clean_logs", "embed_items", "materialize_features", "publish_recs"):
        assert dag.get_task(task_id).retries >= 1, task_id
    for d in (dag, dagbag.dags[WEEKLY]):
        for task in d.tasks:
            assert on_failure in (task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback])


def test_assets_are_outlets_of_their_producers(dagbag) -> None:
    dag = dagbag.dags[NIGHTLY]

    def uris(task_id: str) -> set[str]:
        return {a.uri for a in dag.get_task(task_id).outlets}

    assert uris("clean_logs") == {"crossrec://clean/events"}
    assert uris("embed_items") == {"crossrec://embeddings/items"}
    assert uris("promote_transfer") == uris("promote_retrained") == {"crossrec://registry/current"}
    assert uris("keep_current") == set()  # keeping the model is not a new model


def test_weekly_review_records_the_winner(dagbag) -> None:
    dag = dagbag.dags[WEEKLY]
    assert dag.get_task("record_winner").upstream_task_ids == {"full_comparison"}
    assert {a.uri for a in dag.get_task("record_winner").outlets} == {"crossrec://nightly/winner"}


def test_every_bash_task_runs_an_existing_crossrec_command(dagbag, tmp_path, monkeypatch) -> None:
    """Each bash task calls `crossrec <sub-command>`; the sub-commands must exist in the CLI and the
    adapt call must carry the run key of the logical date (what makes a retry register nothing)."""
    from typer.main import get_command

    from crossrec.cli import app
    from crossrec.settings import get_settings

    monkeypatch.setenv("CROSSREC_WORK_DIR", str(tmp_path))
    get_settings.cache_clear()
    cli = get_command(app)
    seen, called = {}, set()
    try:
        for dag_id in (NIGHTLY, WEEKLY):
            for task in dagbag.dags[dag_id].tasks:
                if task.task_type != "_BashDecoratedOperator":
                    continue
                command = task.python_callable(ds="2026-01-02") if "ds" in task.python_callable.__code__.co_varnames else task.python_callable()
                seen[task.task_id] = command
                for part in _crossrec_calls(command):
                    called.add(" ".join(part[1:3]))
                    group = cli.commands[part[1]]  # KeyError = a DAG step the CLI does not have
                    if len(part) > 2 and not part[2].startswith("-") and hasattr(group, "commands"):
                        assert part[2] in group.commands, f"{task.task_id}: no `crossrec {part[1]} {part[2]}`"
    finally:
        get_settings.cache_clear()
    assert {"nightly timed", "clean", "embed --dtype", "features stats", "features materialize", "nightly train", "publish"} <= called
    assert "nightly train --ds {{ ds }}" in seen["train_candidates"]  # rendered by Airflow per run
    assert "--run-key weekly-2026-01-02" in seen["full_comparison"] and "--no-promote" in seen["full_comparison"]
    assert "--strategies all" in seen["full_comparison"]


def test_nightly_adapt_call_carries_the_run_key_and_no_promotion(tmp_path) -> None:
    """What `crossrec nightly train` runs: tonight's candidates only, no curve, no promotion, the key."""
    from typer.main import get_command

    from conftest import make_settings

    from crossrec.cli import app
    from crossrec.nightly.train import adapt_argv, training_config

    settings = make_settings(tmp_path, nightly={"strategy": "zero_shot", "adapt_args": ["--max-epochs", "3"]})
    argv = adapt_argv(settings, "2026-01-02")
    assert Path(argv[0]).name == "crossrec" and argv[1] == "adapt"
    assert argv[argv.index("--strategies") + 1] == "zero_shot,target_only"
    assert argv[argv.index("--run-key") + 1] == "nightly-2026-01-02" and "--no-promote" in argv
    assert argv[argv.index("--fractions") + 1] == "" and argv[-2:] == ["--max-epochs", "3"]
    params = {p.name for p in get_command(app).commands["adapt"].params}
    assert {"strategies", "fractions", "fraction_strategies", "promote", "run_key", "output", "max_epochs"} <= params
    # the reuse check compares what decides the model, not the date-specific key or output dir
    assert training_config(argv) == training_config(adapt_argv(settings, "2026-01-03"))
    assert "nightly-2026-01-02" not in training_config(argv)


def _crossrec_calls(command: str) -> list[list[str]]:
    """Every `crossrec ...` invocation in a command line (through `nightly timed --` and `sh -c`)."""
    words = shlex.split(command)
    calls, current = [], None
    for word in words:
        if Path(word).name == "crossrec":
            current = [word]
            calls.append(current)
        elif word == "--" or word in ("&&",):
            current = None
        elif " " in word and "crossrec" in word:  # an `sh -c '...'` script
            for part in word.split("&&"):
                calls += _crossrec_calls(part)
        elif current is not None:
            current.append(word)
    return calls
