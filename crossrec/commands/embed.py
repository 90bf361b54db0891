"""`crossrec embed`: embed item texts into ``{work_dir}/embeddings/{encoder}/`` (incremental)."""

from __future__ import annotations

from pathlib import Path

import typer


def embed(
    input: Path | None = typer.Option(None, "--input", help="Cleaned items parquet (default {work_dir}/clean/items)."),
    output: Path | None = typer.Option(None, "--output", help="Embeddings root (default {work_dir}/embeddings)."),
    encoder: str | None = typer.Option(None, "--encoder", help="minilm | smollm2 (default: settings.encoder)."),
    dtype: str = typer.Option(
        "fp32", "--dtype",
        help="fp32 | bf16 | auto (a cached probe picks bf16 only where it is faster at mean cosine >= 0.995; "
             "a dtype change changes the encoder version: re-embeds all).",
    ),
    full: bool = typer.Option(False, "--full", help="Ignore previous output and re-embed every item."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Cap on texts per forward batch (default: the encoder's token budget)."
    ),
    rows_per_partition: int = typer.Option(4096, "--rows-per-partition", min=1, help="Items per Spark task."),
    local_max_items: int | None = typer.Option(
        None, "--local-max-items", min=0, help="Largest delta embedded in the driver (default 2000; 0 = always Spark)."
    ),
    stats_file: Path | None = typer.Option(None, "--stats-file", help="Also write the run's numbers (and effective dtype) as JSON."),
) -> None:
    """Embed each item's text with the chosen encoder; only new or changed items are computed."""
    from crossrec.embedding.cli_run import run_embed

    stats = run_embed(
        input=input, output=output, encoder=encoder, dtype=dtype, full=full,
        batch_size=batch_size, rows_per_partition=rows_per_partition, local_max_items=local_max_items,
        stats_file=stats_file,
    )
    if stats is None:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)



