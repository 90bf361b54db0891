"""`crossrec demo`: the whole platform end to end on the embedded defaults, then a report."""

from __future__ import annotations

import typer

from crossrec.settings import get_settings


def demo(
    live_fraction: float = typer.Option(0.01, min=0.0, max=0.5, help="Newest share of the log replayed live on Kafka."),
    airflow: bool = typer.Option(True, help="Run the nightly pipeline as the Airflow DAG (else its commands one by one)."),
    scheduler: bool = typer.Option(
        True, help="Under a running Airflow scheduler started by crossrec (--no-scheduler: `airflow dags test`)."
    ),
) -> None:
    """Nightly DAG (clean, DQ gate, embed, features, train, promote/keep branch, publish), live stream, report."""
    from crossrec.demo import run_demo
    from crossrec.demo_report import write_report

    settings = get_settings()
    result = run_demo(settings, live_fraction=live_fraction, use_airflow=airflow, scheduler=scheduler)
    write_report(settings, result)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
