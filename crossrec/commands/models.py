"""`crossrec models list|promote VERSION|rollback`: inspect and move the registry's current pointer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from crossrec.console import console, err_console
from crossrec.registry import RegistryError, registry_for
from crossrec.settings import get_settings

models_app = typer.Typer(help="List, promote and roll back trained model versions.", no_args_is_help=True)
RegistryOpt = typer.Option(None, "--registry", help="registry dir (default: {work_dir}/registry)")


def _registry(path: Path | None):
    from crossrec.registry import ModelRegistry

    return ModelRegistry(path) if path else registry_for(get_settings().work_dir)


@models_app.command("list")
def list_models(registry: Path | None = RegistryOpt) -> None:
    """Every version with its strategy, encoder and validation/test NDCG@10; * marks the current one."""
    table = Table(title="crossrec models")
    for col in ("", "version", "created", "strategy", "encoder", "valid NDCG@10", "test NDCG@10", "data"):
        table.add_column(col)
    for v in _registry(registry).list():
        f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        table.add_row("*" if v.current else "", v.version, v.created, v.strategy or "-", v.encoder or "-", f(v.valid_metric), f(v.test_metric), v.fingerprint or "-")
    console.print(table)


@models_app.command("promote")
def promote(version: str, registry: Path | None = RegistryOpt) -> None:
    """Make VERSION current (manual override of the gate)."""
    try:
        _registry(registry).promote(version, reason="manual (crossrec models promote)")
    except RegistryError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"current model: {version}")


@models_app.command("rollback")
def rollback(registry: Path | None = RegistryOpt) -> None:
    """Return to the version that was current before the present one."""
    try:
        prev = _registry(registry).rollback()
    except RegistryError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"rolled back; current model: {prev}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
