"""`crossrec publish`: batch top-K for every active user with the current model, merged into Redis."""

from __future__ import annotations

from pathlib import Path

import typer

from crossrec.console import console
from crossrec.settings import get_settings


def publish(
    input_dir: Path = typer.Option(None, "--input", help="Cleaned data (default: work_dir/clean)."),
    cut_ts: float = typer.Option(None, "--cut-ts", help="The batch's cut, unix s (default: the newest event in the data)."),
) -> None:
    """Merge every active user's list, the popular fallbacks and item display data into Redis, then
    move the model pointer. Users whose Redis history is newer than the cut keep the stream's list
    and are re-scored from that history; item hashes the stream updated after the snapshot stay."""
    from crossrec.batch_publish import publish as run_publish
    from crossrec.registry import RegistryError

    settings = get_settings()
    try:
        summary = run_publish(settings, input_dir or settings.work_dir / "clean", cut_ts=cut_ts)
    except RegistryError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print_json(data=summary.__dict__)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
