"""`crossrec nightly`: run the nightly (or weekly review) DAG under a real Airflow, or quickly.

    crossrec nightly run [--date 2026-01-01] [--weekly]   # api-server + scheduler + dag-processor
    crossrec nightly run --dags-test                       # `airflow dags test`: one process, quick
    crossrec nightly airflow up|down|status                # the Airflow components by hand
    crossrec nightly train --ds D                          # the DAG's train_candidates step
    crossrec nightly timed --ds D --task T -- CMD ...      # what DAG tasks use to record their time
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone

import typer
from rich.table import Table

from crossrec.console import console, err_console
from crossrec.settings import get_settings

NIGHTLY_DAG = "crossrec_nightly_retrain"
WEEKLY_DAG = "crossrec_weekly_strategy_review"

nightly_app = typer.Typer(help="The nightly pipeline under Airflow: run, Airflow components, task timing.",
                          no_args_is_help=True)
airflow_app = typer.Typer(help="The local Airflow (api-server, dag-processor, scheduler).", no_args_is_help=True)
nightly_app.add_typer(airflow_app, name="airflow")


def _today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def _states_table(dag_id: str, tasks: dict[str, str | None]) -> Table:
    table = Table(title=dag_id)
    table.add_column("task")
    table.add_column("state")
    colours = {"success": "green", "failed": "red", "upstream_failed": "red", "skipped": "yellow"}
    for task_id, state in tasks.items():
        table.add_row(task_id, f"[{colours.get(state or '', 'white')}]{state}[/]")
    return table


@nightly_app.command("run")
def run(
    date: str = typer.Option(None, "--date", help="Logical date YYYY-MM-DD (default: today, UTC)."),
    weekly: bool = typer.Option(False, "--weekly", help="Run the weekly strategy review instead of the nightly."),
    dags_test: bool = typer.Option(False, "--dags-test", help="Quick run with `airflow dags test` (no scheduler)."),
    keep_airflow: bool = typer.Option(False, "--keep-airflow", help="Leave the Airflow components running afterwards."),
) -> None:
    """Trigger the DAG for a logical date, wait for it, print every task's state; exit 1 unless it succeeded."""
    from crossrec.nightly.airflow_runner import airflow_down, airflow_up, run_dag

    settings = get_settings()
    ds = date or _today()
    dag_id = WEEKLY_DAG if weekly else NIGHTLY_DAG
    if dags_test:
        raise typer.Exit(_dags_test(settings, dag_id, ds))
    started = time.monotonic()
    try:
        with console.status("starting Airflow (db migrate, api-server, dag-processor, scheduler)"):
            airflow_up(settings)
        console.print(f"Airflow up in {time.monotonic() - started:.0f}s; triggering {dag_id} for {ds}")
        last: dict[str, str | None] = {}

        def show(tasks: dict[str, str | None]) -> None:
            for task_id, state in tasks.items():
                if last.get(task_id) != state and state is not None:
                    console.print(f"  {task_id}: {state}")
            last.update(tasks)

        result = run_dag(settings, dag_id, ds, on_change=show)
    except Exception as exc:  # noqa: BLE001 - report any start/run failure as one clear line
        err_console.print(f"[red]error:[/] {exc}")
        if not keep_airflow:
            airflow_down(settings)
        raise typer.Exit(1) from exc
    if not keep_airflow:
        airflow_down(settings)
    console.print(_states_table(dag_id, result.tasks))
    console.print(f"{dag_id} {result.run_id}: {result.state} in {result.seconds:.0f}s (task logs: {result.log_dir})")
    if not result.ok:
        raise typer.Exit(1)


def _dags_test(settings, dag_id: str, ds: str) -> int:
    import os

    from crossrec.nightly.airflow_runner import airflow_bin, airflow_env, migrate_db

    migrate_db(settings)
    env = {**os.environ, **airflow_env(settings)}
    done = subprocess.run([airflow_bin(), "dags", "test", dag_id, ds], env=env)
    return done.returncode


@nightly_app.command("timed", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def timed(
    ctx: typer.Context,
    ds: str = typer.Option(..., "--ds", help="The run's logical date."),
    task: str = typer.Option(..., "--task", help="Task id to record the time under."),
) -> None:
    """Run the command after `--`, record its wall time in the run's times.json, exit with its code."""
    from crossrec.nightly.state import record_time

    argv = list(ctx.args)
    if not argv:
        err_console.print("[red]error:[/] nothing to run (give the command after --)")
        raise typer.Exit(2)
    started = time.monotonic()
    code = subprocess.run(argv).returncode
    seconds = time.monotonic() - started
    record_time(get_settings(), ds, task, seconds)
    console.print(f"{task} ({ds}): exit {code} in {seconds:.1f}s")
    raise typer.Exit(code)


@nightly_app.command("train")
def train(ds: str = typer.Option(..., "--ds", help="The run's logical date.")) -> None:
    """Train tonight's candidates with `crossrec adapt` (or reuse an earlier night's if the data and
    configuration are unchanged); registers under the run key nightly-{ds}, promotes nothing."""
    from crossrec.nightly.train import train_candidates

    try:
        code = train_candidates(get_settings(), ds, say=console.print)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    raise typer.Exit(code)


@airflow_app.command("up")
def up() -> None:
    """Migrate the metadata DB and start api-server, dag-processor and scheduler (no-op if ours run)."""
    from crossrec.nightly.airflow_runner import airflow_up
    from crossrec.services import ServiceError

    try:
        statuses = airflow_up(get_settings())
    except ServiceError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    for st in statuses:
        console.print(f"{st.name}: {st.state.value} pid {st.pid} (log {st.log_file})")


@airflow_app.command("down")
def down() -> None:
    """Stop the Airflow components crossrec started (scheduler first)."""
    from crossrec.nightly.airflow_runner import airflow_down

    for name, stopped in airflow_down(get_settings()):
        console.print(f"{name}: {'stopped' if stopped else 'was not running'}")


@airflow_app.command("status")
def status() -> None:
    """Show each Airflow component; exit 1 unless all are up."""
    from crossrec.nightly.airflow_runner import airflow_status

    statuses = airflow_status(get_settings())
    for st in statuses:
        console.print(f"{st.name}: {st.state.value} pid {st.pid or '-'}")
    if not all(st.ok for st in statuses):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(nightly_app, name="nightly")
