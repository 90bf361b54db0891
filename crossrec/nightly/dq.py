"""The data-quality gate: stop a broken upstream before it reaches the model.

Reads the clean job's ``summary.json`` (every input row is either kept or quarantined with a
reason, so the counts are complete) and compares it with the thresholds in ``settings.nightly``
and with the last run that finished. It fails, with every reason spelled out, when

* the share of quarantined events passes ``max_quarantine_rate``,
* kept events dropped by more than ``max_event_drop`` against the last good run,
* a configured domain, or one that had events in the last good run, has no kept events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crossrec.nightly.state import nightly_root, read_json, run_dir, write_json
from crossrec.settings import Settings

NO_DOMAIN = "(none)"  # the clean summary's bucket for rows without a readable domain


class DataQualityError(RuntimeError):
    """The cleaned data failed the gate; the message lists every reason."""


@dataclass
class DQResult:
    ok: bool
    reasons: list[str]
    counts: dict[str, Any]
    baseline: dict[str, Any] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)


def counts_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers the gate looks at, from a clean ``summary.json``."""
    events = summary["events"]
    rows_in = int(events["rows_in"])
    rejected = int(events.get("rejected", rows_in - int(events["rows_kept"])))
    per_domain = {d: int(c.get("events_kept", 0)) for d, c in summary.get("per_domain", {}).items() if d != NO_DOMAIN}
    top = sorted(events.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])[:3]
    return {
        "events_in": rows_in,
        "events_kept": int(events["rows_kept"]),
        "events_rejected": rejected,
        "quarantine_rate": rejected / rows_in if rows_in else 1.0,
        "top_reject_reasons": dict(top),
        "events_kept_per_domain": per_domain,
    }


def evaluate(
    counts: dict[str, Any],
    baseline: dict[str, Any] | None,
    domains: list[str],
    max_quarantine_rate: float,
    max_event_drop: float,
) -> DQResult:
    """Pure decision: which thresholds ``counts`` break, against the last good run's ``baseline``."""
    reasons: list[str] = []
    if counts["events_in"] == 0:
        reasons.append("no events at all in the input")
    elif counts["quarantine_rate"] > max_quarantine_rate:
        why = ", ".join(f"{r}: {n:,}" for r, n in counts["top_reject_reasons"].items())
        reasons.append(
            f"quarantine rate {counts['quarantine_rate']:.1%} of {counts['events_in']:,} events is above "
            f"the {max_quarantine_rate:.1%} threshold (top reasons: {why or 'none recorded'})"
        )
    if baseline:
        before = int(baseline["events_kept"])
        if before > 0:
            drop = 1.0 - counts["events_kept"] / before
            if drop > max_event_drop:
                reasons.append(
                    f"kept events fell by {drop:.1%} ({before:,} -> {counts['events_kept']:,}) against the last "
                    f"good run ({baseline.get('ds', '?')}); the limit is {max_event_drop:.1%}"
                )
    expected = set(domains) | {d for d, n in (baseline or {}).get("events_kept_per_domain", {}).items() if n > 0}
    for domain in sorted(expected):
        if counts["events_kept_per_domain"].get(domain, 0) == 0:
            had = (baseline or {}).get("events_kept_per_domain", {}).get(domain)
            since = f" (last good run {baseline.get('ds', '?')}: {had:,})" if baseline and had else ""
            reasons.append(f"domain {domain!r} has no kept events{since}")
    return DQResult(
        ok=not reasons, reasons=reasons, counts=counts, baseline=baseline,
        thresholds={"max_quarantine_rate": max_quarantine_rate, "max_event_drop": max_event_drop},
    )


def last_good_path(settings: Settings) -> Path:
    return nightly_root(settings) / "last_good.json"


def run_gate(settings: Settings, ds: str, clean_dir: Path | None = None) -> dict[str, Any]:
    """Check ``{work_dir}/clean/summary.json`` for run ``ds``; raise :class:`DataQualityError` if bad.

    The result is written to the run's ``dq.json`` either way, so a failed night can be read back.
    """
    summary_file = Path(clean_dir or Path(settings.work_dir) / "clean") / "summary.json"
    summary = read_json(summary_file)
    if summary is None:
        raise DataQualityError(f"no clean summary at {summary_file}: did the clean task run?")
    baseline = read_json(last_good_path(settings))
    if baseline and baseline.get("ds") == ds:
        baseline = baseline.get("previous")  # a re-run of the baseline's own date compares with the one before
    cfg = settings.nightly
    domains = sorted({settings.source_domain, settings.target_domain})
    result = evaluate(counts_from_summary(summary), baseline, domains, cfg.max_quarantine_rate, cfg.max_event_drop)
    record = asdict(result) | {"ds": ds}
    write_json(run_dir(settings, ds) / "dq.json", record)
    if not result.ok:
        raise DataQualityError("data-quality gate failed: " + "; ".join(result.reasons))
    return record


def record_good_run(settings: Settings, ds: str, counts: dict[str, Any]) -> None:
    """Make this run's counts the baseline of the next gate (newer dates only: a backfill of an old
    date does not move the baseline back)."""
    path = last_good_path(settings)
    current = read_json(path)
    if current and current.get("ds", "") > ds:
        return
    previous = current.get("previous") if current and current.get("ds") == ds else current
    write_json(path, {**counts, "ds": ds, "previous": previous})
