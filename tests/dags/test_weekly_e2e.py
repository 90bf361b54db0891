"""The weekly strategy review DAG, run by `crossrec nightly run --weekly --dags-test` (real Airflow
`dags test`, real torch) on the tiny synthetic fixture: it compares every strategy, registers its
best model without promoting it, and records the winner the nightly then retrains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossrec.adaptation.synthetic import write_synthetic
from crossrec.registry import ModelRegistry

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_weekly_review_records_the_winner_and_promotes_nothing(tmp_path: Path) -> None:
    from conftest import make_settings

    from crossrec.nightly.strategy import nightly_candidates

    work = write_synthetic(tmp_path / "work", n_users=40, n_items=30, dim=16)
    env = {
        **os.environ, "CROSSREC_WORK_DIR": str(work), "CROSSREC_DATA_DIR": str(work),
        "CROSSREC_SERVICES__RUN_DIR": str(tmp_path / "run"), "PYTHONPATH": str(REPO),
        "CROSSREC_NIGHTLY__ADAPT_ARGS": json.dumps(["--max-epochs", "1", "--pretrain-epochs", "1", "--dim", "16"]),
    }
    crossrec = str(Path(sys.executable).with_name("crossrec"))
    done = subprocess.run([crossrec, "nightly", "run", "--weekly", "--dags-test", "--date", "2026-01-04"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    record = json.loads((work / "nightly" / "winner.json").read_text())
    assert record["ds"] == "2026-01-04"
    # the winner is the review's confidence-checked strategy choice (selection set + paired CI)
    results = json.loads((work / "nightly" / "weekly" / "2026-01-04" / "results.json").read_text())
    assert record["winner"] == results["strategy_choice"]["chosen"]
    assert record["reason"] == results["strategy_choice"]["reason"]
    assert set(record["valid_ndcg10"]) == {"target_only", "pretrain_finetune_all", "pretrain_finetune_adaptor",
                                           "joint_adversarial", "zero_shot"}
    assert {"popularity", "item_knn", "sasrec"} <= set(record["test"])  # baselines reported, never chosen
    assert record["fractions"]  # the fraction curve ran
    registry = ModelRegistry(work / "registry")
    assert registry.find_run("weekly-2026-01-04") is not None and registry.current() is None
    # the nightly now retrains the winner (and the target-only retrain)
    settings = make_settings(tmp_path, work_dir=work)
    assert nightly_candidates(settings)[0] == record["winner"]
