"""Which strategy the nightly retrains: the configured one, or the last weekly review's winner.

The weekly review (``crossrec_weekly_strategy_review``) runs the full comparison and the fraction
curve; it writes ``{work_dir}/nightly/winner.json``. The nightly then trains only that strategy
and the target-only retrain, which is what its decision needs ("does transfer pay tonight?").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossrec.nightly.state import nightly_root, read_json, write_json
from crossrec.settings import Settings

TARGET_ONLY = "target_only"
TRANSFER = ("pretrain_finetune_all", "pretrain_finetune_adaptor", "joint_adversarial", "zero_shot")
TEXT_STRATEGIES = (TARGET_ONLY, *TRANSFER)  # the strategies the registry can serve


def winner_path(settings: Settings) -> Path:
    return nightly_root(settings) / "winner.json"


def nightly_strategy(settings: Settings) -> tuple[str, str]:
    """(strategy, where it came from) for tonight's run."""
    cfg = settings.nightly
    if cfg.strategy != "auto":
        return cfg.strategy, "settings.nightly.strategy"
    record = read_json(winner_path(settings))
    if record and record.get("winner"):
        return record["winner"], f"weekly review of {record.get('ds', '?')}"
    return cfg.fallback_strategy, "settings.nightly.fallback_strategy (no weekly review yet)"


def nightly_candidates(settings: Settings) -> list[str]:
    """The configured strategy plus the target-only retrain (once if they are the same)."""
    strategy, _ = nightly_strategy(settings)
    return list(dict.fromkeys([strategy, TARGET_ONLY]))


def pick_winner(metrics: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The servable strategy with the best mean validation NDCG@10 (validation only: test stays
    untouched by the choice); returns it and every servable strategy's validation number."""
    valid = {n: float(v["mean"]) for n, v in metrics.get("valid_ndcg10", {}).items() if n in TEXT_STRATEGIES}
    if not valid:
        raise ValueError("the review's metrics hold no servable strategy (target_only or a transfer strategy)")
    return max(valid, key=valid.__getitem__), valid


def record_winner(settings: Settings, ds: str, metrics_file: Path) -> dict[str, Any]:
    """Read the review's results.json, write winner.json (the nightly reads it), return the record."""
    metrics = read_json(metrics_file)
    if metrics is None:
        raise FileNotFoundError(f"no review metrics at {metrics_file}")
    winner, valid = pick_winner(metrics)
    record = {
        "ds": ds,
        "winner": winner,
        "valid_ndcg10": valid,
        "test": headline_test_metrics(metrics),
        "fractions": metrics.get("fractions", {}),
        "targets": metrics.get("targets", {}),
        "metrics_file": str(metrics_file),
    }
    write_json(winner_path(settings), record)
    return record


def headline_test_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """strategy -> {metric: mean over seeds} on the test users: what both DAGs report."""
    from crossrec.evaluation import HEADLINE

    return {
        name: {m: float(ms[m]["mean"]) for m in HEADLINE if m in ms}
        for name, ms in metrics.get("test", {}).items()
    }
