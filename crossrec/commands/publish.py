"""`crossrec publish`: batch top-K for every active user with the current model -> Redis."""

from __future__ import annotations

from pathlib import Path

import typer

from crossrec.console import console
from crossrec.settings import get_settings


def publish(
    input_dir: Path = typer.Option(None, "--input", help="Cleaned data (default: work_dir/clean)."),
) -> None:
    """Write every active user's list, the popular fallbacks, item display data, then the model pointer."""
    from crossrec.batch_publish import publish as run_publish
    from crossrec.registry import RegistryError

    settings = get_settings()
    try:
        summary = run_publish(settings, input_dir or settings.work_dir / "clean")
    except RegistryError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print_json(data=summary.__dict__)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
