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


def pick_winner(metrics: dict[str, Any]) -> tuple[str, dict[str, float], str]:
    """(winner, every servable strategy's validation NDCG@10, why).

    The winner is the review's own confidence-checked choice (``strategy_choice``: best on the
    selection set, kept apart from the early-stopping users, and target_only unless the paired
    bootstrap CI of the difference excludes zero), so the weekly never hands the nightly a strategy
    that won by noise or by picking its checkpoint on the same users. Results written before that
    choice existed fall back to the best mean validation NDCG@10, and the reason says so.
    """
    valid = {n: float(v["mean"]) for n, v in metrics.get("valid_ndcg10", {}).items() if n in TEXT_STRATEGIES}
    if not valid:
        raise ValueError("the review's metrics hold no servable strategy (target_only or a transfer strategy)")
    choice = metrics.get("strategy_choice") or {}
    if choice.get("chosen") in TEXT_STRATEGIES:
        return choice["chosen"], valid, str(choice.get("reason", "the review's strategy choice"))
    best = max(valid, key=valid.__getitem__)
    return best, valid, f"no confidence-checked strategy choice in these results: best mean validation NDCG@10 ({best})"


def record_winner(settings: Settings, ds: str, metrics_file: Path) -> dict[str, Any]:
    """Read the review's results.json, write winner.json (the nightly reads it), return the record."""
    metrics = read_json(metrics_file)
    if metrics is None:
        raise FileNotFoundError(f"no review metrics at {metrics_file}")
    winner, valid, reason = pick_winner(metrics)
    record = {
        "ds": ds,
        "winner": winner,
        "reason": reason,
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
