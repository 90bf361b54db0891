"""The run summary: what the nightly decided and why, the metrics, and where the time went.

Written to the run's ``summary.json``, printed in the task log and returned to XCom by the DAG's
last task. It is also the point where a run counts as good: its cleaned-data counts become the
baseline of the next data-quality gate.
"""

from __future__ import annotations

from typing import Any

from crossrec.nightly.dq import record_good_run
from crossrec.nightly.state import read_json, run_dir, write_json
from crossrec.nightly.strategy import headline_test_metrics, nightly_strategy
from crossrec.settings import Settings


def build_summary(settings: Settings, ds: str, branch: str | None = None) -> dict[str, Any]:
    folder = run_dir(settings, ds)
    dq = read_json(folder / "dq.json") or {}
    decision = read_json(folder / "decision.json") or {}
    metrics = read_json(folder / "adapt" / "results.json") or {}
    embed = read_json(folder / "embed.json") or {}
    times = read_json(folder / "times.json") or {}
    candidates = read_json(folder / "candidates.json") or {}
    strategy, source = nightly_strategy(settings)
    from crossrec.registry import ModelRegistry

    registry = ModelRegistry(settings.work_dir / "registry")
    return {
        "ds": ds,
        "decision": decision.get("action", branch),
        "why": decision.get("reason"),
        "candidate": decision.get("candidate"),
        "candidate_strategy": decision.get("candidate_strategy"),
        "transfer_pays": decision.get("transfer_pays"),
        "candidate_reused_from": candidates.get("reused_from"),
        "data_fingerprint": candidates.get("fingerprint"),
        "current_model": registry.current(),
        "strategy": strategy,
        "strategy_from": source,
        "valid_ndcg10": decision.get("valid_ndcg10", {}),
        "vs_current": {  # the branch's comparison: both models on today's validation users when re-scored
            "compared_on": decision.get("compared_on"),
            "candidate": decision.get("candidate_metric"),
            "current": decision.get("current_metric"),
            "current_stored": decision.get("current_stored_metric"),
            "ci": decision.get("ci"),
        },
        "test": headline_test_metrics(metrics),
        "data_quality": {"ok": dq.get("ok"), "counts": dq.get("counts", {})},
        "embedding": embed,
        "times_s": times,
        "total_s": round(sum(times.values()), 2),
    }


def finish_run(settings: Settings, ds: str, branch: str | None = None) -> dict[str, Any]:
    """Build and write the summary; make this run the DQ baseline."""
    summary = build_summary(settings, ds, branch)
    write_json(run_dir(settings, ds) / "summary.json", summary)
    counts = summary["data_quality"]["counts"]
    if counts:
        record_good_run(settings, ds, counts)
    return summary


def render_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a few log lines (the task log is what an on-call engineer reads first)."""
    lines = [
        f"nightly {summary['ds']}: decision={summary['decision']} current_model={summary['current_model']}",
        f"why: {summary['why']}",
        f"strategy: {summary['strategy']} ({summary['strategy_from']}); transfer pays: {summary['transfer_pays']}",
    ]
    vs = summary.get("vs_current") or {}
    if vs.get("current") is not None:
        lines.append(f"vs current model ({vs['compared_on']}): candidate {vs['candidate']:.4f}, current {vs['current']:.4f}"
                     + (f" (stored {vs['current_stored']:.4f})" if vs.get("current_stored") is not None else ""))
    for name, ms in summary["test"].items():
        lines.append(f"test {name}: " + ", ".join(f"{m}={v:.4f}" for m, v in ms.items()))
    if summary.get("embedding"):
        lines.append(f"embedding: {summary['embedding']}")
    lines.append("times: " + ", ".join(f"{t}={s:.1f}s" for t, s in summary["times_s"].items())
                 + f"; total {summary['total_s']:.1f}s")
    return lines
