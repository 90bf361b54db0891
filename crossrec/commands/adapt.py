"""`crossrec adapt`: train + compare every transfer strategy, report, and gate a new model."""

from __future__ import annotations

from pathlib import Path

import typer

from crossrec.console import console, err_console
from crossrec.settings import get_settings


def _floats(text: str) -> list[float]:
    vals = [float(x) for x in text.split(",") if x.strip()]
    return [v / 100.0 if v > 1.0 else v for v in vals]  # accept 5,10,25 (percent) or 0.05,0.1


def adapt(
    input: Path | None = typer.Option(None, "--input", help="work dir holding clean/ and embeddings/ (default: settings.work_dir)"),
    output: Path | None = typer.Option(None, "--output", help="where metrics.json and report.html go (default: {work_dir}/adapt)"),
    strategies: str = typer.Option("all", help="'all' or a comma list of strategy names"),
    seeds: int = typer.Option(1, help="number of seeds (settings.seed, +1, ...)"),
    fractions: str = typer.Option("5,10,25,50,100", help="target training-user fractions (percent or 0-1)"),
    fraction_strategies: str = typer.Option("target_only,best", help="strategies for the fraction curve ('best' = best transfer on validation)"),
    encoder: str | None = typer.Option(None, help="embedding encoder (default: settings.encoder)"),
    compare_encoders: str = typer.Option("", help="extra encoders to compare, e.g. 'smollm2' (skipped if no embeddings)"),
    split: Path | None = typer.Option(None, help="users_split.json (default: {data_dir}/users_split.json if present)"),
    registry: Path | None = typer.Option(None, help="model registry dir (default: {input}/registry, i.e. {work_dir}/registry)"),
    promote_margin: float = typer.Option(0.0, help="candidate must beat the current validation NDCG@10 by more than this"),
    promote: bool = typer.Option(True, help="run the promotion gate (--no-promote only registers)"),
    max_epochs: int = typer.Option(15, help="max epochs per phase (early stopping on validation)"),
    patience: int = typer.Option(3, help="early-stopping patience (epochs without a better validation NDCG@10)"),
    pretrain_epochs: int = typer.Option(8, help="max source-pretraining epochs"),
    lr: float = typer.Option(5e-3, min=0.0, help="learning rate of every training phase (pretraining and fine-tuning included)"),
    negatives: int = typer.Option(1024, help="shared sampled negatives per batch (0 = full softmax)"),
    dim: int = typer.Option(64, help="model dimension"),
    seq_encoder: str = typer.Option("gru", help="user sequence encoder: gru | transformer"),
    item_tower: str = typer.Option("text+id", help="item side: text (adaptor only) | text+id (adds learned ID offsets; new items still text-only)"),
    transfer_view: str = typer.Option("target", help="history the transfer strategies read: target (transfer through shared weights) | mixed (also the user's source history)"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    device: str | None = typer.Option(None, "--device", help="where training runs: cpu | cuda | cuda:N | auto (cuda when torch sees one); default: settings.adapt.device"),
    run_key: str | None = typer.Option(None, "--run-key", help="idempotence key (e.g. nightly-2026-01-01): if a model was already registered under it, nothing is trained again"),
    selection_users: int | None = typer.Option(None, min=0, help="training users whose last target event is held out as the selection set (choices, routes, SASRec's grid); 0 = choose on the validation users (default: settings.adapt.selection_users)"),
    tail_slot_margin: float | None = typer.Option(None, min=0.0, max=0.99, help="overall NDCG@10 loss (fraction) accepted for tail slots in the routed lists; 0 = none (default: settings.adapt.tail_slot_margin)"),
    sasrec_grid: str = typer.Option("", help='SASRec hyper-parameter candidates as JSON, e.g. \'[{"lr": 0.001, "dropout": 0.5}, {"lr": 0.003, "max_epochs": 10}]\' (default: TrainConfig.sasrec_grid)'),
    routing: bool = typer.Option(True, help="fit and store the routed model (per-segment routes) with the registered artifact"),
    refit: bool = typer.Option(True, help="train the chosen model again on every training event, selection events included, before registering it (--no-refit: register the model the choices were made on)"),
    diagnose: bool = typer.Option(True, help="add the training-free transfer diagnosis (crossrec diagnose) to the report"),
) -> None:
    """Compare target-only, fine-tuning, adversarial joint training, zero-shot and baselines."""
    from crossrec.adaptation.model import ModelConfig
    from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
    from crossrec.adaptation.strategies import resolve
    from crossrec.adaptation.trainer import TrainConfig, resolve_device

    import json

    settings = get_settings()
    work = Path(input or settings.work_dir)
    extra_train: dict = {}
    if sasrec_grid.strip():
        try:
            grid = json.loads(sasrec_grid)
        except json.JSONDecodeError as exc:
            err_console.print(f"[red]error:[/] --sasrec-grid is not JSON: {exc}")
            raise typer.Exit(1) from exc
        if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
            err_console.print("[red]error:[/] --sasrec-grid must be a JSON list of objects")
            raise typer.Exit(1)
        extra_train["sasrec_grid"] = grid
    split_path = split or (Path(settings.data_dir) / "users_split.json")
    if run_key is not None:
        from crossrec.registry import ModelRegistry

        done = ModelRegistry(registry or work / "registry").find_run(run_key)
        if done is not None:
            console.print(f"run key {run_key!r} already registered {done}: nothing trained again")
            return
    try:
        names = resolve(strategies)
        opts = AdaptOptions(
            input_dir=work,
            output_dir=Path(output or work / "adapt"),
            strategies=names,
            seeds=[settings.seed + i for i in range(seeds)],
            fractions=_floats(fractions),
            fraction_strategies=[s.strip() for s in fraction_strategies.split(",") if s.strip()],
            encoder=encoder or settings.encoder,
            extra_encoders=[e.strip() for e in compare_encoders.split(",") if e.strip()],
            source_domain=settings.source_domain,
            target_domain=settings.target_domain,
            split_path=split_path if split_path.is_file() else None,
            registry_dir=registry or work / "registry",
            promote_margin=promote_margin,
            promote=promote,
            routing=routing,
            refit=refit,
            diagnose=diagnose,
            model=ModelConfig(dim=dim, encoder=seq_encoder, item_tower=item_tower),
            train=TrainConfig(lr=lr, max_epochs=max_epochs, patience=patience, pretrain_epochs=pretrain_epochs, n_negatives=negatives, transfer_view=transfer_view, selection_users=settings.adapt.selection_users if selection_users is None else selection_users, tail_slot_margin=settings.adapt.tail_slot_margin if tail_slot_margin is None else tail_slot_margin, device=device or settings.adapt.device, **extra_train),
            threads=threads,
            run_key=run_key,
        )
        resolve_device(opts.train.device)  # before any data is read: a GPU that is not there is a clear error
        results = run_adapt(opts, say=console.print)
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    _print_summary(results)


def _print_summary(results: dict) -> None:
    from rich.table import Table

    from crossrec.evaluation import HEADLINE

    table = Table(title="test users (mean ± sd over seeds)")
    table.add_column("strategy")
    for m in HEADLINE:
        table.add_column(m)
    for name, ms in results["test"].items():
        table.add_row(name, *[f"{ms[m]['mean']:.4f}±{ms[m]['sd']:.4f}" for m in HEADLINE])
    console.print(table)
    console.print(results.get("targets"))
    console.print(results.get("gate"))


def register(app: typer.Typer) -> None:
    app.command("adapt")(adapt)
