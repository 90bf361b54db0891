"""`crossrec demo`: the whole platform end to end on the embedded defaults, then a report."""

from __future__ import annotations

import typer

from crossrec.settings import get_settings


def demo(
    live_fraction: float = typer.Option(0.01, min=0.0, max=0.5, help="Newest share of the log replayed live on Kafka."),
    airflow: bool = typer.Option(True, help="Run the nightly pipeline through Airflow (`airflow dags test`)."),
) -> None:
    """Nightly pipeline (Airflow: clean, embed, features, adapt + gate, publish), live stream, report."""
    from crossrec.demo import run_demo
    from crossrec.demo_report import write_report

    settings = get_settings()
    result = run_demo(settings, live_fraction=live_fraction, use_airflow=airflow)
    write_report(settings, result)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
