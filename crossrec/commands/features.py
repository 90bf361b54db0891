"""`crossrec features stats|apply|materialize|verify`: the Feast feature repo, driven from Settings."""

from __future__ import annotations

from pathlib import Path

import typer

from crossrec.console import console, err_console
from crossrec.settings import get_settings

features_app = typer.Typer(help="Feast: offline feature tables, apply, materialise into Redis.", no_args_is_help=True)


@features_app.command("stats")
def stats(
    events: Path | None = typer.Option(None, "--events", help="Cleaned events (default {work_dir}/clean/events)."),
    embeddings: Path | None = typer.Option(None, "--embeddings", help="Embeddings dir (default {work_dir}/embeddings/{encoder})."),
    all_splits: bool = typer.Option(False, "--all-splits", help="Use valid/test events too (leaks into evaluation)."),
    n_recent: int = typer.Option(20, "--n-recent", min=1),
) -> None:
    """Compute item statistics and user features into the offline parquet tables."""
    from crossrec.features.store import definitions_module
    from crossrec.features.tables import build_feature_tables

    settings = get_settings()
    work = Path(settings.work_dir)
    paths = definitions_module().feature_paths(work, settings.encoder)
    try:
        counts = build_feature_tables(
            events or work / "clean" / "events", embeddings or paths["item_embeddings"],
            {k: paths[k] for k in ("item_stats", "item_stats_daily", "user_features")},
            splits=None if all_splits else ("train",), n_recent=n_recent,
        )
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(counts)


@features_app.command("apply")
def apply_cmd(encoder: str | None = typer.Option(None, "--encoder")) -> None:
    """Register the feature repo's objects (entities, views, push source, feature service)."""
    from crossrec.features.store import apply

    store = apply(get_settings(), encoder)
    console.print(f"applied: {', '.join(sorted(fv.name for fv in store.list_feature_views()))}")


@features_app.command("materialize")
def materialize_cmd(
    view: list[str] = typer.Option(None, "--view", help="Only these feature views (repeatable)."),
    full: bool = typer.Option(False, "--full", help="Everything, not just rows newer than the last run."),
) -> None:
    """Load the offline tables into the online store (Redis)."""
    from crossrec.features.store import materialize

    materialize(get_settings(), view or None, incremental=not full)


@features_app.command("verify")
def verify_cmd(embeddings: Path | None = typer.Option(None, "--embeddings")) -> None:
    """Check that Redis serves exactly the embeddings the job wrote (exit 1 otherwise)."""
    from crossrec.features.online import verify_item_embeddings
    from crossrec.features.store import definitions_module, feature_store

    settings = get_settings()
    path = embeddings or definitions_module().feature_paths(Path(settings.work_dir), settings.encoder)["item_embeddings"]
    result = verify_item_embeddings(feature_store(settings), path)
    console.print(result)
    if result["missing"] or result["mismatched"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")
