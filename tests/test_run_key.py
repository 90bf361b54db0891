"""`crossrec adapt --run-key`: a retry or re-run of one logical date registers no second model."""

from __future__ import annotations

import json
from pathlib import Path

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
