"""The shared main of ``crossrec embed`` and ``jobs/embed_items.py``: settings -> job -> summary."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from crossrec.console import console, err_console
from crossrec.embedding.job import EmbedStats, embed_items
from crossrec.settings import Settings, get_settings


def run_embed(
    *,
    input: Path | None = None,
    output: Path | None = None,
    encoder: str | None = None,
    dtype: str = "fp32",
    full: bool = False,
    batch_size: int | None = None,
    rows_per_partition: int = 4096,
    local_max_items: int | None = None,
    stats_file: Path | None = None,
    settings: Settings | None = None,
) -> EmbedStats | None:
    """Run the job with settings defaults; prints a summary table. None (and a message) on bad input.

    ``dtype`` may be ``auto``: a short cached probe picks bf16 only where it is faster at the
    agreed cosine (:mod:`crossrec.encoders.precision`); the effective dtype is in the encoder
    version, the table and ``stats_file`` (JSON, read by the nightly run summary).
    """
    from crossrec.encoders.precision import resolve_dtype
    from crossrec.spark import spark_session

    settings = settings or get_settings()
    work = Path(settings.work_dir)
    input = input or work / "clean" / "items"
    output = output or work / "embeddings"
    encoder = encoder or settings.encoder
    if not Path(input).exists():
        err_console.print(f"[red]error:[/] items input {input} does not exist (run `crossrec clean` first)")
        return None

    cache_dir = work / "cache" / "models"
    try:
        choice = resolve_dtype(dtype, encoder, cache_dir, warn=lambda text: err_console.print(f"[bold red]WARNING:[/] {text}"))
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        return None
    console.print(f"embed: dtype {choice.dtype} ({choice.requested}: {choice.reason})")

    def start_spark():  # called by the job only when the delta is too large for the driver
        return spark_session(settings, app_name=f"crossrec-embed-{encoder}")

    try:
        stats = embed_items(
            start_spark, input, output, encoder, dtype=choice.dtype, cache_dir=cache_dir,
            batch_size=batch_size, rows_per_partition=rows_per_partition, full=full,
            **({} if local_max_items is None else {"local_max_items": local_max_items}),
        )
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        return None
    console.print(summary_table(stats))
    if stats_file is not None:
        Path(stats_file).parent.mkdir(parents=True, exist_ok=True)
        Path(stats_file).write_text(json.dumps({
            "dtype": choice.dtype, "dtype_requested": choice.requested, "dtype_reason": choice.reason,
            "encoder_version": stats.encoder_version, "embedded": stats.embedded, "kept": stats.kept,
            "removed": stats.removed, "embedded_on": stats.embedded_on, "seconds": round(stats.seconds, 2),
        }, indent=2))
    return stats


def summary_table(stats: EmbedStats) -> Table:
    table = Table(title=f"crossrec embed ({stats.encoder})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (
        ("items in", stats.items_in), ("embedded", stats.embedded), ("kept (unchanged)", stats.kept),
        ("removed (gone from catalogue)", stats.removed), ("skipped (no text)", stats.skipped_no_text),
        ("duplicate ids", stats.duplicates), ("embedded on", stats.embedded_on),
        ("embed stage s", f"{stats.embed_seconds:.1f}"),
        ("items/s (embed stage)", f"{stats.items_per_s:.1f}" if stats.embedded else "-"), ("total s", f"{stats.seconds:.1f}"),
        ("encoder version", stats.encoder_version), ("output", stats.output),
    ):
        table.add_row(name, str(value))
    return table
