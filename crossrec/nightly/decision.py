"""The nightly's model decision, made from recorded numbers, as the DAG's branch.

Tonight's candidates (the configured strategy and the target-only retrain) were trained and
evaluated by ``crossrec adapt --no-promote --run-key nightly-{ds}``, which registered the better
of them on validation NDCG@10 ("does transfer pay tonight?"), or an earlier night's candidate was
reused because nothing changed (:mod:`crossrec.nightly.train`). This module compares that model
with the current one and names the branch to take:

* ``promote_transfer``: the candidate is a transfer model and beats the current one,
* ``promote_retrained``: the candidate is the target-only retrain and beats the current one,
* ``keep_current``: no candidate, the candidate already is the current model (a re-run of the
  date, a warm night), or it does not beat the current model by the margin.

Both models are compared on today's data: ``crossrec nightly train`` re-scores the candidate and
the current model on today's validation users (:mod:`crossrec.nightly.rescore`, ``rescore.json``),
and the candidate is promoted only when it is above the current model by the margin AND the paired
bootstrap CI of the difference excludes zero (otherwise the difference is not signal and the
serving model stays). The current model's stored validation number (measured on the data of its
own night) is recorded next to today's for the summary, and is what the decision falls back to,
saying so, when no re-scoring exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from crossrec.nightly.state import read_json, run_dir, write_json
from crossrec.nightly.strategy import TARGET_ONLY, TRANSFER
from crossrec.settings import Settings

PROMOTE_TRANSFER = "promote_transfer"
PROMOTE_RETRAINED = "promote_retrained"
KEEP_CURRENT = "keep_current"
BRANCHES = (PROMOTE_TRANSFER, PROMOTE_RETRAINED, KEEP_CURRENT)
METRIC = "NDCG@10"


@dataclass
class Decision:
    action: str
    reason: str
    candidate: str | None = None  # registry version
    candidate_strategy: str | None = None
    candidate_metric: float | None = None
    current: str | None = None
    current_metric: float | None = None
    margin: float = 0.0
    transfer_pays: bool | None = None  # the transfer candidate beat target-only on validation
    compared_on: str = "stored validation numbers"  # or "today's validation users"
    current_stored_metric: float | None = None  # the current model's number from its own night
    ci: dict[str, Any] | None = None  # paired bootstrap CI of candidate - current (today's users)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate: dict[str, Any] | None,
    current: dict[str, Any] | None,
    margin: float,
    valid_by_strategy: dict[str, float] | None = None,
    today: dict[str, Any] | None = None,
) -> Decision:
    """Pure decision. ``candidate``/``current``: {"version", "strategy", "metric"} or None (metric:
    the stored validation number); ``today``: the rescore record of these two versions, if any."""
    pays = _transfer_pays(valid_by_strategy or {})
    if candidate is None or candidate.get("metric") is None:
        return Decision(KEEP_CURRENT, "no candidate was registered tonight; keeping the current model",
                        current=(current or {}).get("version"), current_metric=(current or {}).get("metric"),
                        margin=margin, transfer_pays=pays)
    strategy = candidate.get("strategy")
    if strategy not in (TARGET_ONLY, *TRANSFER):
        raise ValueError(f"candidate {candidate.get('version')} has strategy {strategy!r}, which the nightly cannot serve")
    promote = PROMOTE_RETRAINED if strategy == TARGET_ONLY else PROMOTE_TRANSFER
    cand_metric = float(candidate["metric"])
    base = Decision(promote, "", candidate["version"], strategy, cand_metric,
                    (current or {}).get("version"), (current or {}).get("metric"), margin, pays)
    kind = "target-only retrain" if strategy == TARGET_ONLY else f"transfer model ({strategy})"
    pays_text = "" if pays is None else (" (transfer pays tonight)" if pays else " (transfer does not pay tonight)")
    if current is None or current.get("version") is None:
        base.reason = f"no current model: promoting the {kind} {candidate['version']}{pays_text}"
        return base
    if current["version"] == candidate["version"]:
        # a re-run of this date, or a warm night reusing the serving model: nothing new to promote
        # (and no "promoted model" asset event for DAGs that schedule on it)
        base.action = KEEP_CURRENT
        base.reason = f"{candidate['version']} ({kind}) is already the current model; nothing new to promote"
        return base
    base.current_stored_metric = cur_metric = current.get("metric")
    if _is_pair(today, candidate["version"], current["version"]):
        return _decide_today(base, today, kind, pays_text)  # type: ignore[arg-type]
    if cur_metric is None or cand_metric > float(cur_metric) + margin:
        shown = "unknown" if cur_metric is None else f"{float(cur_metric):.4f}"
        base.reason = (f"promoting the {kind} {candidate['version']}{pays_text}: validation {METRIC} "
                       f"{cand_metric:.4f} > current {current['version']} {shown} (stored, not re-scored today) + margin {margin:g}")
        return base
    base.action = KEEP_CURRENT
    base.reason = (f"keeping {current['version']}: the {kind} {candidate['version']}{pays_text} has validation "
                   f"{METRIC} {cand_metric:.4f}, not above {float(cur_metric):.4f} (stored, not re-scored today) + margin {margin:g}")
    return base


def _is_pair(today: dict[str, Any] | None, candidate: str, current: str) -> bool:
    return bool(today) and today["candidate"]["version"] == candidate and today["current"]["version"] == current  # type: ignore[index]


def _decide_today(base: Decision, today: dict[str, Any], kind: str, pays_text: str) -> Decision:
    """Promote only when today's candidate beats today's current model by the margin and the paired
    CI of the difference excludes zero."""
    cand, cur, ci = float(today["candidate"][METRIC]), float(today["current"][METRIC]), today["ci"]
    base.candidate_metric, base.current_metric, base.ci = cand, cur, ci
    base.compared_on = "today's validation users"
    stored = "unknown" if base.current_stored_metric is None else f"{float(base.current_stored_metric):.4f}"
    numbers = (f"on today's {today['n_users']} validation users {METRIC} {cand:.4f} vs current {base.current} {cur:.4f} "
               f"(its stored number: {stored}), paired 95% CI of the difference [{ci['lo']:+.4f}, {ci['hi']:+.4f}]"
               + (f" (these users resolve about ±{ci['resolution_rel']:.1%})" if "resolution_rel" in ci else ""))
    if cand > cur + base.margin and not ci["includes_zero"]:
        base.reason = f"promoting the {kind} {base.candidate}{pays_text}: {numbers}"
        return base
    base.action = KEEP_CURRENT
    why = "the CI includes zero" if cand > cur + base.margin else f"not above the current model + margin {base.margin:g}"
    base.reason = f"keeping {base.current}: the {kind} {base.candidate}{pays_text} {numbers}; {why}"
    return base


def _transfer_pays(valid: dict[str, float]) -> bool | None:
    transfer = [v for n, v in valid.items() if n in TRANSFER]
    if not transfer or TARGET_ONLY not in valid:
        return None
    return max(transfer) > valid[TARGET_ONLY]


def _model_info(registry, version: str | None) -> dict[str, Any] | None:
    if version is None:
        return None
    manifest = registry.manifest(version)
    return {"version": version, "strategy": manifest.get("strategy"),
            "metric": manifest.get("valid_metrics", {}).get(METRIC)}


def decide_for_run(settings: Settings, ds: str) -> Decision:
    """The decision for logical date ``ds`` from the registry and the run's metrics; writes decision.json."""
    from crossrec.nightly.state import nightly_run_key
    from crossrec.registry import ModelRegistry

    registry = ModelRegistry(settings.work_dir / "registry")
    # tonight's model, or the earlier one reused because data and configuration were unchanged
    trained = (read_json(run_dir(settings, ds) / "candidates.json") or {}).get("version")
    candidate = _model_info(registry, registry.find_run(nightly_run_key(ds)) or trained)
    current = _model_info(registry, registry.current())
    metrics = read_json(run_dir(settings, ds) / "adapt" / "results.json") or {}
    valid = {n: float(v["mean"]) for n, v in metrics.get("valid_ndcg10", {}).items()}
    today = read_json(run_dir(settings, ds) / "rescore.json")
    decision = decide(candidate, current, settings.nightly.promote_margin, valid, today)
    write_json(run_dir(settings, ds) / "decision.json", decision.to_dict() | {"ds": ds, "valid_ndcg10": valid})
    return decision


def apply_decision(settings: Settings, ds: str, action: str) -> dict[str, Any]:
    """Carry out the branch taken for ``ds`` (promotion is a no-op if the model is already current)."""
    from crossrec.registry import ModelRegistry

    record = read_json(run_dir(settings, ds) / "decision.json")
    if record is None or record["action"] != action:
        raise RuntimeError(f"branch {action!r} ran but the recorded decision for {ds} is {record and record['action']!r}")
    registry = ModelRegistry(settings.work_dir / "registry")
    if action != KEEP_CURRENT and registry.current() != record["candidate"]:
        registry.promote(record["candidate"], reason=f"nightly {ds}: {record['reason']}")
    return {"action": action, "current": registry.current(), "reason": record["reason"]}
