"""`crossrec config show`: the effective settings, secrets masked."""

from __future__ import annotations

import json

import typer

from crossrec.console import console
from crossrec.settings import get_settings

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@config_app.command("show")
def show() -> None:
    """Print the merged settings (defaults < YAML < CROSSREC_* env) as JSON, with secrets masked."""
    console.print_json(json.dumps(get_settings().masked_dump()))


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
