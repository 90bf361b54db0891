"""`crossrec services up|down|status`: the embedded Redis, Kafka-protocol broker and Spark cluster."""

from __future__ import annotations

import typer
from rich.table import Table

from crossrec.console import console, err_console
from crossrec.services import ServiceError, ServiceStatus, services_down, services_status, services_up
from crossrec.settings import get_settings

services_app = typer.Typer(help="Start, stop and inspect the local Redis, Kafka broker and Spark cluster.", no_args_is_help=True)

SPARK_OPTION = typer.Option(
    None, "--spark/--no-spark",
    help="Also the Spark standalone master + worker (default: settings.spark.standalone).",
)


def _table(statuses: list[ServiceStatus]) -> Table:
    table = Table(title="crossrec local services")
    for column in ("service", "state", "address", "pid", "log"):
        table.add_column(column)
    for st in statuses:
        colour = "green" if st.ok else "red"
        table.add_row(st.name, f"[{colour}]{st.state.value}[/]", f"{st.host}:{st.port}", str(st.pid or "-"), str(st.log_file))
    return table


@services_app.command("up")
def up(spark: bool | None = SPARK_OPTION) -> None:
    """Start Redis and the broker (no-op for those already running) and wait until they answer."""
    try:
        statuses = services_up(get_settings(), spark)
    except ServiceError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(_table(statuses))


@services_app.command("down")
def down(spark: bool | None = SPARK_OPTION) -> None:
    """Stop only the service processes that crossrec started."""
    for name, stopped in services_down(get_settings(), spark):
        console.print(f"{name}: {'stopped' if stopped else 'was not running (nothing of ours to stop)'}")


@services_app.command("status")
def status(spark: bool | None = SPARK_OPTION) -> None:
    """Show each service; exits 1 unless all answer."""
    statuses = services_status(get_settings(), spark)
    console.print(_table(statuses))
    if not all(st.ok for st in statuses):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(services_app, name="services")
