"""`crossrec stream` (the consumer service), `crossrec stream status` (group lag) and
`crossrec replay` (raw logs -> Kafka)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from crossrec.console import console
from crossrec.settings import get_settings

stream_app = typer.Typer(
    help="Consume events and catalogue updates; write fresh top-K lists to Redis; commit after writing.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@stream_app.callback()
def stream(
    ctx: typer.Context,
    max_seconds: float = typer.Option(None, help="Stop after this many seconds (default: run until SIGTERM)."),
    max_events: int = typer.Option(None, help="Stop after consuming this many messages."),
    idle_exit_s: float = typer.Option(None, help="Stop when no message arrived for this long."),
    heartbeat_file: Path = typer.Option(None, help="Touched while healthy (default: streaming.heartbeat_file)."),
    stats_file: Path = typer.Option(None, help="Also write the final counters here as JSON."),
    metrics_port: int = typer.Option(None, help="Prometheus /metrics port (default: streaming.metrics_port; 0 = off)."),
    freshness_file: Path = typer.Option(None, help="At exit, write each event's (list write unix ms, produce-to-list ms) here (JSON)."),
) -> None:
    """Consume events and catalogue updates; write fresh top-K lists to Redis; commit after writing.

    `crossrec stream status` prints the consumer group's lag per partition instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    from crossrec.streaming.consumer import RecsConsumer
    from crossrec.streaming.scoring import load_scorer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # reconnect noise during an outage
    settings = get_settings()
    if settings.streaming.torch_threads:
        import torch

        # torch would take every core per process; consumers scale by partitions instead.
        torch.set_num_threads(settings.streaming.torch_threads)
    consumer = RecsConsumer(
        settings, lambda: load_scorer(settings), heartbeat_file=heartbeat_file or settings.streaming.heartbeat_file
    )
    consumer.install_signal_handlers()
    consumer.serve_metrics(metrics_port)
    try:
        stats = consumer.run(max_seconds=max_seconds, max_events=max_events, idle_exit_s=idle_exit_s)
    finally:
        consumer.close()
    if stats_file is not None:
        stats_file.write_text(json.dumps(stats.as_dict()))
    if freshness_file is not None:
        freshness_file.write_text(json.dumps(list(stats.freshness)))
    console.print_json(data=stats.as_dict())


@stream_app.command("status")
def status() -> None:
    """The consumer group's committed offset, end offset and lag per partition."""
    from rich.table import Table

    from crossrec.streaming.lag import group_lag

    from kafka.errors import KafkaError

    settings = get_settings()
    try:
        rows = group_lag(settings)
    except (KafkaError, TimeoutError) as exc:
        console.print(f"[red]cannot read the group's offsets from {settings.kafka.bootstrap_servers}: {exc}")
        raise typer.Exit(1) from exc
    table = Table(title=f"consumer group {settings.kafka.consumer_group}")
    for column in ("topic", "partition", "committed", "end", "lag"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for row in rows:
        table.add_row(row.topic, str(row.partition), "-" if row.committed is None else str(row.committed), str(row.end), str(row.lag))
    console.print(table)
    console.print(f"total lag: {sum(r.lag for r in rows)}")


def replay(
    input_file: Path = typer.Option(None, "--input", help="Raw events file (JSON lines, .gz ok); default: data_dir/events.jsonl.gz"),
    limit: int = typer.Option(None, help="Send at most this many events."),
    rate: float = typer.Option(None, help="Events per second (default: as fast as possible)."),
    topic: str = typer.Option(None, help="Topic (default: kafka.events_topic)."),
) -> None:
    """Replay a raw event log onto Kafka in the event contract (adds event_id, schema_version)."""
    from crossrec.streaming.replay import replay as run_replay

    settings = get_settings()
    path = input_file or settings.data_dir / "events.jsonl.gz"
    sent = run_replay(settings, path, topic=topic, limit=limit, rate_per_s=rate)
    console.print(f"replayed {sent} events from {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(stream_app, name="stream")
    app.command("replay")(replay)
