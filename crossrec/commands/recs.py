"""`crossrec recs USER`: a user's current recommendations, read through the Python client."""

from __future__ import annotations

import datetime as dt

import typer
from rich.table import Table

from crossrec.console import console, err_console


def recs(
    user_id: str = typer.Argument(..., help="user id"),
    domain: str = typer.Option(None, "--domain", "-d", help="domain (default: the target domain)"),
    k: int = typer.Option(10, "-k", "--k", help="how many items"),
) -> None:
    """Print a user's top-k with scores, titles and explanations (popular items if they have none)."""
    from crossrec.client import ClientError, RecClient
    from crossrec.settings import get_settings

    settings = get_settings()
    domain = domain or settings.target_domain
    try:
        with RecClient(settings) as client:
            result = client.get(user_id, domain, k)
    except ClientError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc

    updated = (
        dt.datetime.fromtimestamp(result.updated_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if result.updated_at is not None
        else "never"
    )
    kind = "[yellow]popular fallback[/]" if result.fallback else result.source
    table = Table(
        title=f"{domain} recommendations for {user_id}",
        caption=f"{kind} · model {result.model_version or '-'} (current {result.current_model or '-'}) · updated {updated}",
    )
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("title")
    table.add_column("score", justify="right")
    table.add_column("because")
    for r in result.items:
        table.add_row(str(r.rank), r.item_id, r.title or "-", f"{r.score:.4f}", r.because.text if r.because else "-")
    console.print(table)
    if not result.items:
        err_console.print("[yellow]no list for this user and no popular list for this domain[/]")


def register(app: typer.Typer) -> None:
    app.command("recs")(recs)
