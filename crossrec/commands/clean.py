"""`crossrec clean`: validate, normalise, de-duplicate and split raw logs with Spark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def clean(
    input: Annotated[Optional[Path], typer.Option("--input", help="raw-log dir (default: settings.data_dir)")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="output dir (default: work_dir/clean)")] = None,
    near_dup_window_s: Annotated[Optional[float], typer.Option(
        "--near-dup-window-s", help="near-duplicate window in seconds (default: settings clean.near_dup_window_s = 60; negative = off)")] = None,
    kcore: Annotated[Optional[int], typer.Option("--kcore", help="per-domain k-core (default: settings clean.kcore, off)")] = None,
) -> None:
    """Clean raw events/items into parquet (items, events, sequences, splits) + quarantine + summary."""
    from crossrec.cleaning.job import clean_main

    code = clean_main(input, output, near_dup_window_s, kcore)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("clean")(clean)
