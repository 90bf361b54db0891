"""The one entry point shared by ``jobs/clean_logs.py`` and ``crossrec clean``.

Both front-ends only parse arguments and call ``clean_main``, so the CLI and the spark-submit
script can never drift apart.
"""

from __future__ import annotations

from pathlib import Path

from crossrec.console import console, err_console
from crossrec.settings import Settings, get_settings


def default_paths(settings: Settings) -> tuple[Path, Path]:
    """(input, output) when not given: the data dir and ``{work_dir}/clean``."""
    return Path(settings.data_dir), Path(settings.work_dir) / "clean"


def clean_main(
    input_dir: Path | None = None,
    output_dir: Path | None = None,
    near_dup_window_s: float | None = None,
    kcore: int | None = None,
    settings: Settings | None = None,
) -> int:
    """Run the clean job, print its summary table; exit code 0, or 1 if rows were unaccounted."""
    from crossrec.cleaning.pipeline import run_clean
    from crossrec.cleaning.summary import render
    from crossrec.spark import spark_session

    settings = settings or get_settings()
    default_in, default_out = default_paths(settings)
    input_dir = Path(input_dir) if input_dir else default_in
    output_dir = Path(output_dir) if output_dir else default_out
    window = settings.clean.near_dup_window_s if near_dup_window_s is None else near_dup_window_s
    kcore = settings.clean.kcore if kcore is None else kcore
    try:
        from crossrec.cleaning.readers import discover_inputs

        discover_inputs(input_dir)  # fail fast, before paying for a Spark session
    except FileNotFoundError as exc:
        err_console.print(f"[red]clean: {exc}[/]")
        return 2
    console.print(f"clean: {input_dir} -> {output_dir} (near-dup window "
                  f"{'off' if window < 0 else f'{window:g} s'}, k-core {kcore or 'off'})")
    spark = spark_session(settings, app_name="crossrec-clean")
    summary = run_clean(
        spark, settings, input_dir, output_dir,
        near_dup_window_s=None if window < 0 else window, kcore=kcore or None,
    )
    render(summary, console)
    console.print(f"clean: wrote {output_dir} (summary.json, quarantine/)")
    if not summary.balanced:
        err_console.print("[red]clean: rows_in != rows_kept + rejected; see summary.json[/]")
        return 1
    return 0
