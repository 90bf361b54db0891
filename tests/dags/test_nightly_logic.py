"""The nightly's pure decisions: the data-quality gate, the promotion branch, the weekly winner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_settings

from crossrec.nightly import decision as dec
from crossrec.nightly.dq import DataQualityError, counts_from_summary, evaluate, record_good_run, run_gate
from crossrec.nightly.strategy import nightly_candidates, nightly_strategy, pick_winner, record_winner


def counts(kept: int = 1000, rejected: int = 10, per_domain: dict | None = None) -> dict:
    summary = {
        "events": {"rows_in": kept + rejected, "rows_kept": kept, "rejected": rejected,
                   "rejected_by_reason": {"bad_ts": rejected}},
        "per_domain": {d: {"events_kept": n} for d, n in (per_domain or {"art": kept // 2, "office": kept - kept // 2}).items()},
    }
    return counts_from_summary(summary)


def test_gate_passes_healthy_data() -> None:
    result = evaluate(counts(), {**counts(), "ds": "2026-01-01"}, ["art", "office"], 0.2, 0.5)
    assert result.ok and result.reasons == []


def test_gate_fails_on_quarantine_rate_with_the_reason() -> None:
    result = evaluate(counts(kept=700, rejected=300), None, ["art", "office"], 0.2, 0.5)
    assert not result.ok
    assert "quarantine rate 30.0%" in result.reasons[0] and "20.0%" in result.reasons[0] and "bad_ts" in result.reasons[0]
    assert evaluate(counts(kept=700, rejected=300), None, ["art", "office"], 0.31, 0.5).ok  # threshold is honoured


def test_gate_fails_on_a_drop_against_the_last_good_run() -> None:
    baseline = {**counts(kept=1000), "ds": "2026-01-01"}
    result = evaluate(counts(kept=400), baseline, ["art", "office"], 0.2, 0.5)
    assert not result.ok and "fell by 60.0%" in result.reasons[0] and "2026-01-01" in result.reasons[0]
    assert evaluate(counts(kept=600), baseline, ["art", "office"], 0.2, 0.5).ok  # a 40 % drop is allowed


def test_gate_fails_when_a_domain_disappears() -> None:
    baseline = {**counts(per_domain={"art": 500, "office": 400, "books": 100}), "ds": "2026-01-01"}
    result = evaluate(counts(per_domain={"art": 900, "office": 100}), baseline, ["art", "office"], 0.2, 0.5)
    assert not result.ok and result.reasons == ["domain 'books' has no kept events (last good run 2026-01-01: 100)"]
    # a configured domain must have events even without any baseline
    first = evaluate(counts(per_domain={"art": 1000}), None, ["art", "office"], 0.2, 0.5)
    assert first.reasons == ["domain 'office' has no kept events"]


def test_run_gate_reads_the_clean_summary_and_the_baseline(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    clean = settings.work_dir / "clean"
    clean.mkdir(parents=True)
    summary = {"events": {"rows_in": 1000, "rows_kept": 990, "rejected": 10, "rejected_by_reason": {"x": 10}},
               "per_domain": {"art": {"events_kept": 500}, "office": {"events_kept": 490}}}
    (clean / "summary.json").write_text(json.dumps(summary))
    assert run_gate(settings, "2026-01-01")["ok"] is True
    record_good_run(settings, "2026-01-01", counts_from_summary(summary))
    summary["events"] |= {"rows_in": 310, "rows_kept": 300}
    (clean / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DataQualityError, match="fell by 69.7%"):
        run_gate(settings, "2026-01-02")
    written = json.loads((settings.work_dir / "nightly" / "runs" / "2026-01-02" / "dq.json").read_text())
    assert written["ok"] is False and written["baseline"]["ds"] == "2026-01-01"
    # an older date (backfill) does not move the baseline back
    record_good_run(settings, "2025-12-01", counts_from_summary(summary))
    assert json.loads((settings.work_dir / "nightly" / "last_good.json").read_text())["ds"] == "2026-01-01"


def test_missing_clean_summary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataQualityError, match="no clean summary"):
        run_gate(make_settings(tmp_path), "2026-01-01")


CAND_T = {"version": "v0002", "strategy": "pretrain_finetune_adaptor", "metric": 0.060}
CAND_R = {"version": "v0002", "strategy": "target_only", "metric": 0.060}
CUR = {"version": "v0001", "strategy": "target_only", "metric": 0.050}


@pytest.mark.parametrize(
    ("candidate", "current", "margin", "action"),
    [
        (CAND_T, CUR, 0.0, dec.PROMOTE_TRANSFER),
        (CAND_R, CUR, 0.0, dec.PROMOTE_RETRAINED),
        (CAND_T, CUR, 0.02, dec.KEEP_CURRENT),  # does not beat the current model by the margin
        (CAND_T, {**CUR, "metric": 0.07}, 0.0, dec.KEEP_CURRENT),
        (CAND_R, {**CUR, "metric": 0.06}, 0.0, dec.KEEP_CURRENT),  # a tie keeps the serving model
        (CAND_T, None, 0.0, dec.PROMOTE_TRANSFER),  # first model ever
        (None, CUR, 0.0, dec.KEEP_CURRENT),  # nothing registered tonight
        ({**CAND_R, "version": "v0001"}, CUR, 0.0, dec.KEEP_CURRENT),  # a re-run / warm night: already current
    ],
)
def test_branch_decision(candidate, current, margin, action) -> None:
    d = dec.decide(candidate, current, margin, {"target_only": 0.05, "pretrain_finetune_adaptor": 0.06})
    assert d.action == action
    assert d.reason and (current is None or current["version"] in d.reason or candidate is None)


def today(cand: float, cur: float, lo: float, hi: float, versions: tuple[str, str] = ("v0002", "v0001")) -> dict:
    return {"n_users": 500, "candidate": {"version": versions[0], "NDCG@10": cand}, "current": {"version": versions[1], "NDCG@10": cur},
            "ci": {"lo": lo, "hi": hi, "includes_zero": lo <= 0 <= hi}}


@pytest.mark.parametrize(
    ("current", "rescored", "action"),
    [
        # stale stored number (0.09, from its own night) would keep it; today it scores 0.030: promote
        ({**CUR, "metric": 0.09}, today(0.058, 0.030, 0.015, 0.040), dec.PROMOTE_TRANSFER),
        # stored number looks beaten (0.05 < 0.06), but on today's users the current model is better: keep
        (CUR, today(0.058, 0.064, -0.010, -0.002), dec.KEEP_CURRENT),
        # above today's current model, but the paired CI includes zero: not signal, keep
        (CUR, today(0.058, 0.055, -0.004, 0.010), dec.KEEP_CURRENT),
        # a rescore of other versions (an older record) is not used: the stored numbers decide, and say so
        ({**CUR, "metric": 0.09}, today(0.058, 0.030, 0.015, 0.040, ("v0009", "v0001")), dec.KEEP_CURRENT),
    ],
)
def test_the_branch_compares_on_todays_validation_users(current, rescored, action) -> None:
    d = dec.decide(CAND_T, current, 0.0, None, rescored)
    assert d.action == action, d.reason
    paired = rescored["candidate"]["version"] == CAND_T["version"]
    assert d.compared_on == ("today's validation users" if paired else "stored validation numbers")
    assert d.current_stored_metric == current["metric"]
    if paired:
        assert (d.candidate_metric, d.current_metric) == (rescored["candidate"]["NDCG@10"], rescored["current"]["NDCG@10"])
        assert d.ci == rescored["ci"] and "today's 500 validation users" in d.reason
    else:
        assert d.current_metric == current["metric"] and "not re-scored today" in d.reason


def test_decision_says_whether_transfer_paid() -> None:
    assert dec.decide(CAND_T, CUR, 0.0, {"target_only": 0.05, "zero_shot": 0.06}).transfer_pays is True
    d = dec.decide(CAND_R, CUR, 0.0, {"target_only": 0.07, "zero_shot": 0.06})
    assert d.transfer_pays is False and "transfer does not pay" in d.reason


def test_a_baseline_candidate_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot serve"):
        dec.decide({"version": "v3", "strategy": "popularity", "metric": 0.9}, CUR, 0.0)


def test_weekly_winner_is_the_reviews_confidence_checked_choice(tmp_path: Path) -> None:
    """The best validation mean (the early-stopping users) does not win by itself: the review's
    strategy choice kept target_only because its CI included zero, and that is what the nightly gets."""
    metrics = {
        "valid_ndcg10": {"target_only": {"mean": 0.05}, "zero_shot": {"mean": 0.02},
                         "pretrain_finetune_all": {"mean": 0.07}, "popularity": {"mean": 0.5}},
        "strategy_choice": {"best_on_selection": "joint_adversarial", "baseline": "target_only", "chosen": "target_only",
                            "reason": "joint_adversarial vs target_only: +1.4% ... includes zero: keeping target_only"},
        "test": {"target_only": {"NDCG@10": {"mean": 0.04}, "n_users": 5}},
    }
    winner, valid, reason = pick_winner(metrics)
    assert (winner, valid["pretrain_finetune_all"]) == ("target_only", 0.07) and "includes zero" in reason
    settings = make_settings(tmp_path)
    assert nightly_strategy(settings)[0] == settings.nightly.fallback_strategy
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    record = record_winner(settings, "2026-01-04", path)
    assert record["test"] == {"target_only": {"NDCG@10": 0.04}} and "includes zero" in record["reason"]
    assert nightly_strategy(settings) == ("target_only", "weekly review of 2026-01-04")
    assert nightly_candidates(settings) == ["target_only"]

    chose_transfer = {**metrics, "strategy_choice": {"chosen": "joint_adversarial", "reason": "CI excludes zero"}}
    path.write_text(json.dumps(chose_transfer))
    record_winner(settings, "2026-01-11", path)
    assert nightly_candidates(settings) == ["joint_adversarial", "target_only"]
    pinned = make_settings(tmp_path, nightly={"strategy": "target_only"})
    assert nightly_candidates(pinned) == ["target_only"]


def test_weekly_winner_from_results_without_a_strategy_choice_says_so() -> None:
    metrics = {"valid_ndcg10": {"target_only": {"mean": 0.05}, "pretrain_finetune_all": {"mean": 0.07},
                                "popularity": {"mean": 0.5}}}
    winner, _, reason = pick_winner(metrics)
    assert winner == "pretrain_finetune_all" and "no confidence-checked" in reason  # popularity is not servable


def test_alert_line_is_one_clear_line() -> None:
    from crossrec.nightly.alert import alert_line

    line = alert_line("crossrec_nightly_retrain", "r1", "2026-01-01", "data_quality_gate", "gate failed:\n  domain 'office'")
    assert line == ("CROSSREC ALERT: crossrec_nightly_retrain run r1 (logical date 2026-01-01) failed at task "
                    "data_quality_gate: gate failed: domain 'office'")


def test_alert_is_posted_to_the_configured_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real HTTP server on loopback receives the alert as JSON; the URL itself is never logged."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from crossrec.nightly.alert import on_failure
    from crossrec.settings import get_settings

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    monkeypatch.setenv("CROSSREC_NIGHTLY__ALERT_URL", f"http://127.0.0.1:{server.server_port}/hook?token=s3cret")
    get_settings.cache_clear()

    class TI:
        dag_id, task_id = "crossrec_nightly_retrain", "embed_items"

    class Run:
        run_id = "manual__x"

    try:
        on_failure({"ti": TI(), "dag_run": Run(), "ds": "2026-01-03", "exception": RuntimeError("boom")})
    finally:
        get_settings.cache_clear()
        thread.join(timeout=5)
        server.server_close()
    assert received == [{"text": "CROSSREC ALERT: crossrec_nightly_retrain run manual__x (logical date 2026-01-03) failed at task embed_items: boom"}]
    assert "s3cret" not in json.dumps(get_settings().masked_dump())


def test_the_branch_reason_says_how_fine_a_difference_todays_users_resolve() -> None:
    rescored = today(0.058, 0.055, -0.004, 0.010)
    rescored["ci"]["resolution_rel"] = 0.127  # what paired_bootstrap reports for these users
    d = dec.decide(CAND_T, CUR, 0.0, None, rescored)
    assert d.action == dec.KEEP_CURRENT and "(these users resolve about ±12.7%)" in d.reason
    older = dec.decide(CAND_T, CUR, 0.0, None, today(0.058, 0.055, -0.004, 0.010))  # a record written before the field existed
    assert older.action == dec.KEEP_CURRENT and "resolve" not in older.reason
