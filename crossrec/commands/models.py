"""`crossrec models list|promote VERSION|rollback`: inspect and move the one current-model pointer.

Serving follows two copies of "the current model": the registry's CURRENT file (what the
publisher and the consumer load) and the Redis key ``{p}:model:current`` (what the consumer
watches to reload, and what the API's ``/health`` and every response report). ``promote`` and
``rollback`` move both in one command: Redis is checked first (a rollback that cannot reach
serving fails before it changes anything), then the registry is rewritten under its lock and the
Redis pointer is set inside that same lock, so concurrent commands leave both in the same order.
A running consumer sees the Redis pointer change at its next reload check and loads the version
the registry names, which is the same one; lists it writes afterwards carry that version.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from crossrec.console import console, err_console
from crossrec.registry import OnChange, RegistryError, registry_for
from crossrec.settings import Settings, get_settings

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


def redis_pointer_mover(settings: Settings):
    """A checked Redis connection and the ``on_change`` that moves ``{p}:model:current``.

    Raises ``RegistryError`` when Redis is unreachable, before anything changed.
    """
    import redis

    from crossrec.publish import RecWriter
    from crossrec.settings import mask_url_password

    writer = RecWriter.from_settings(settings)
    try:
        writer.client.ping()
    except redis.RedisError as exc:
        writer.close()
        raise RegistryError(
            f"Redis at {mask_url_password(settings.redis.url)} is unreachable ({exc}); nothing was changed"
        ) from exc
    return writer, writer.set_current_model


def _move(action: str, run) -> str:  # type: ignore[no-untyped-def]
    settings = get_settings()
    try:
        writer, on_change = redis_pointer_mover(settings)
        try:
            version: str = run(on_change)
        finally:
            writer.close()
    except RegistryError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"{action}; current model: {version} (registry and Redis {settings.key_prefix}:model:current)")
    return version


@models_app.command("promote")
def promote(version: str, registry: Path | None = RegistryOpt) -> None:
    """Make VERSION current in the registry and in Redis (manual override of the gate)."""
    reg = _registry(registry)

    def run(on_change: OnChange) -> str:
        reg.promote(version, reason="manual (crossrec models promote)", on_change=on_change)
        return version

    _move("promoted", run)


@models_app.command("rollback")
def rollback(registry: Path | None = RegistryOpt) -> None:
    """Return to the version that was current before the present one, in the registry and in Redis."""
    reg = _registry(registry)
    _move("rolled back", lambda on_change: reg.rollback(on_change=on_change))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
