"""`crossrec adapt --run-key`: a retry or re-run of one logical date registers no second model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossrec.adaptation.synthetic import write_synthetic
from crossrec.cli import app
from crossrec.registry import ModelRegistry


def test_the_same_run_key_trains_and_registers_once(tmp_path: Path) -> None:
    work = write_synthetic(tmp_path / "work", n_users=40, n_items=30, dim=16)
    registry = tmp_path / "reg"

    def adapt(key: str) -> str:
        result = CliRunner().invoke(app, [
            "adapt", "--input", str(work), "--output", str(tmp_path / key), "--strategies", "target_only",
            "--fractions", "", "--split", str(work / "users_split.json"), "--registry", str(registry),
            "--no-promote", "--max-epochs", "1", "--pretrain-epochs", "1", "--dim", "16", "--run-key", key,
        ])
        assert result.exit_code == 0, result.output
        return result.output

    adapt("nightly-2026-01-01")
    reg = ModelRegistry(registry)
    assert reg.versions() == ["v0001"] and reg.find_run("nightly-2026-01-01") == "v0001"
    assert reg.manifest("v0001")["run_key"] == "nightly-2026-01-01"
    first_metrics = json.loads((tmp_path / "nightly-2026-01-01" / "results.json").read_text())

    again = adapt("nightly-2026-01-01")  # the retry: nothing trained, nothing registered
    assert "already registered v0001" in again
    assert reg.versions() == ["v0001"]
    assert json.loads((tmp_path / "nightly-2026-01-01" / "results.json").read_text()) == first_metrics

    adapt("nightly-2026-01-02")  # another date is another model
    assert reg.versions() == ["v0001", "v0002"] and reg.find_run("nightly-2026-01-02") == "v0002"
    assert reg.find_run("nightly-2025-12-31") is None


def test_a_warm_night_reuses_the_candidate_and_a_changed_config_retrains(tmp_path: Path, monkeypatch) -> None:
    """`crossrec nightly train`: same data + same training call as an earlier night = nothing trained,
    that night's model is tonight's candidate; another configuration trains again."""
    from conftest import make_settings

    from crossrec.nightly.decision import decide_for_run
    from crossrec.nightly.train import train_candidates

    work = write_synthetic(tmp_path / "work", n_users=40, n_items=30, dim=16)
    fast = ["--max-epochs", "1", "--pretrain-epochs", "1", "--dim", "16"]
    monkeypatch.setenv("CROSSREC_WORK_DIR", str(work))
    monkeypatch.setenv("CROSSREC_DATA_DIR", str(work))  # holds users_split.json
    settings = make_settings(tmp_path, work_dir=work, data_dir=work, nightly={"strategy": "target_only", "adapt_args": fast})
    reg = ModelRegistry(work / "registry")

    assert train_candidates(settings, "2026-01-01", say=lambda s: None) == 0
    assert reg.versions() == ["v0001"]
    said: list[str] = []
    assert train_candidates(settings, "2026-01-02", say=said.append) == 0
    assert reg.versions() == ["v0001"] and "reusing its candidate v0001" in said[0]
    record = json.loads((work / "nightly" / "runs" / "2026-01-02" / "candidates.json").read_text())
    assert record["reused_from"] == "2026-01-01" and record["version"] == "v0001"
    assert decide_for_run(settings, "2026-01-02").candidate == "v0001"

    other = make_settings(tmp_path, work_dir=work, data_dir=work, nightly={"strategy": "target_only", "adapt_args": [*fast, "--lr", "0.01"]})
    assert train_candidates(other, "2026-01-03", say=lambda s: None) == 0
    assert reg.versions() == ["v0001", "v0002"]  # another training call is another model


def test_the_current_model_is_re_scored_on_todays_validation_users(tmp_path: Path, monkeypatch) -> None:
    """A current model whose stored validation number is stale is judged on today's numbers: the
    train step scores candidate and current model on the same validation users (paired CI), and the
    branch uses those numbers, with the stale one kept for the record."""
    from conftest import make_settings

    from crossrec.nightly.decision import decide_for_run
    from crossrec.nightly.summary import build_summary
    from crossrec.nightly.train import train_candidates

    work = write_synthetic(tmp_path / "work", n_users=40, n_items=30, dim=16)
    monkeypatch.setenv("CROSSREC_WORK_DIR", str(work))
    monkeypatch.setenv("CROSSREC_DATA_DIR", str(work))
    fast = ["--max-epochs", "1", "--pretrain-epochs", "1", "--dim", "16"]
    settings = make_settings(tmp_path, work_dir=work, data_dir=work, nightly={"strategy": "target_only", "adapt_args": fast})
    reg = ModelRegistry(work / "registry")
    assert train_candidates(settings, "2026-01-01", say=lambda s: None) == 0
    assert not (work / "nightly" / "runs" / "2026-01-01" / "rescore.json").exists()  # nothing served yet
    reg.promote("v0001")
    manifest_file = reg.path("v0001") / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["valid_metrics"]["NDCG@10"] = 0.99  # measured on another night's data: stale
    manifest_file.write_text(json.dumps(manifest))

    other = make_settings(tmp_path, work_dir=work, data_dir=work, nightly={"strategy": "target_only", "adapt_args": [*fast, "--lr", "0.02"]})
    said: list[str] = []
    assert train_candidates(other, "2026-01-02", say=said.append) == 0
    record = json.loads((work / "nightly" / "runs" / "2026-01-02" / "rescore.json").read_text())
    assert record["candidate"]["version"] == "v0002" and record["current"]["version"] == "v0001"
    # the same validation users adapt evaluated the candidate on: its number today is its recorded one
    assert record["candidate"]["NDCG@10"] == pytest.approx(reg.manifest("v0002")["valid_metrics"]["NDCG@10"], abs=1e-9)
    assert record["ci"]["n_users"] == record["n_users"] > 0
    assert record["current"]["NDCG@10"] < 0.99 and any("today's" in s for s in said)

    decision = decide_for_run(other, "2026-01-02")
    assert decision.compared_on == "today's validation users"
    assert decision.current_metric == record["current"]["NDCG@10"] and decision.current_stored_metric == 0.99
    cand, cur = record["candidate"]["NDCG@10"], record["current"]["NDCG@10"]
    expect_promote = cand > cur and not record["ci"]["includes_zero"]
    assert (decision.action != "keep_current") == expect_promote
    vs = build_summary(other, "2026-01-02")["vs_current"]
    assert (vs["candidate"], vs["current"], vs["current_stored"]) == (cand, cur, 0.99)
