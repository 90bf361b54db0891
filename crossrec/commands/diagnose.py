"""`crossrec diagnose`: training-free transfer signals for the configured domain pair, per segment."""

from __future__ import annotations

from pathlib import Path

import typer

from crossrec.console import console, err_console
from crossrec.settings import get_settings


def diagnose(
    input: Path | None = typer.Option(None, "--input", help="work dir holding clean/ and embeddings/ (default: settings.work_dir)"),
    output: Path | None = typer.Option(None, "--output", help="where diagnose.json and diagnose.html go (default: {work_dir}/diagnose)"),
    encoder: str | None = typer.Option(None, help="embedding encoder (default: settings.encoder)"),
    split: Path | None = typer.Option(None, help="users_split.json (default: {data_dir}/users_split.json if present)"),
    selection_users: int | None = typer.Option(None, min=1, help="training users whose last target event is held out to fit the blends (default: settings.adapt.selection_users)"),
) -> None:
    """Will transfer pay? Source-history signals vs the best target-only signals, with a verdict.

    Domains come from settings (source_domain / target_domain), so any pair in the raw-log
    contract runs with the same command.
    """
    from rich.table import Table

    from crossrec.diagnose import DiagnoseOptions, run_diagnose

    settings = get_settings()
    work = Path(input or settings.work_dir)
    split_path = split or (Path(settings.data_dir) / "users_split.json")
    opts = DiagnoseOptions(
        input_dir=work,
        output_dir=Path(output or work / "diagnose"),
        source_domain=settings.source_domain,
        target_domain=settings.target_domain,
        encoder=encoder or settings.encoder,
        split_path=split_path if split_path.is_file() else None,
        selection_users=settings.adapt.selection_users if selection_users is None else selection_users,
    )
    try:
        diag = run_diagnose(opts, say=console.print)
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    table = Table(title=f"transfer diagnosis {opts.source_domain} -> {opts.target_domain} (test NDCG@10, training-free)")
    for col in ("user segment", "n", "target-only", "+ source", "gain (95% CI)"):
        table.add_column(col)
    for seg, v in diag["segments"].items():
        if not v.get("n_users"):
            table.add_row(seg, "0", "-", "-", "-")
            continue
        g = v["gain"]
        table.add_row(seg, str(v["n_users"]), f"{v['target_only_ndcg10']:.4f}", f"{v['with_source_ndcg10']:.4f}", f"{g['rel']:+.1%} [{g['lo']:+.4f}, {g['hi']:+.4f}]")
    console.print(table)
    console.print(diag["verdict"])
    console.print(f"wrote {opts.output_dir / 'diagnose.json'} and diagnose.html")


def register(app: typer.Typer) -> None:
    app.command("diagnose")(diagnose)
