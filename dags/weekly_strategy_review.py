"""Weekly strategy review: the full comparison the nightly no longer runs, and its winner.

    full_comparison -> record_winner

`full_comparison` runs `crossrec adapt` over every strategy and baseline with the data-fraction
curve on the data the nightly last cleaned and embedded (it registers its best model under the run
key `weekly-{ds}` but promotes nothing: promotion is the nightly's gate). `record_winner` writes
`{work_dir}/nightly/winner.json`, the strategy the nightly retrains from then on
(settings.nightly.strategy = auto). Both DAGs report the same test metrics (crossrec.evaluation's
HEADLINE) per strategy.
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, dag, task

from crossrec.nightly.alert import on_failure
from crossrec.settings import get_settings

CROSSREC = shlex.quote(str(Path(sys.executable).with_name("crossrec")))
STRATEGY_RECORD = Asset("crossrec://nightly/winner", extra={"what": "the strategy the nightly retrains"})


@dag(
    dag_id="crossrec_weekly_strategy_review",
    schedule="0 4 * * 0" if get_settings().nightly.schedule else None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={"owner": "ml-platform", "retries": 0, "on_failure_callback": on_failure},
    tags=["crossrec", "weekly"],
    doc_md=__doc__,
)
def weekly_strategy_review() -> None:
    @task.bash(retries=1, execution_timeout=timedelta(hours=5))
    def full_comparison(ds: str | None = None) -> str:
        """torch: every strategy and baseline, the fraction curve; registers, never promotes."""
        from crossrec.nightly.state import nightly_root, weekly_run_key

        settings = get_settings()
        out = shlex.quote(str(nightly_root(settings) / "weekly" / ds))
        args = " ".join(shlex.quote(a) for a in settings.nightly.adapt_args)
        return (f"{CROSSREC} nightly timed --ds {ds} --task full_comparison -- {CROSSREC} adapt --strategies all --no-promote "
                f"--run-key {weekly_run_key(ds)} --output {out} --threads {settings.nightly.train_threads} {args}")

    @task(outlets=[STRATEGY_RECORD])
    def record_winner(ds: str | None = None) -> dict:
        """Write winner.json: the review's confidence-checked strategy choice (see pick_winner)."""
        from crossrec.nightly.state import nightly_root
        from crossrec.nightly.strategy import record_winner as record

        settings = get_settings()
        result = record(settings, ds, nightly_root(settings) / "weekly" / ds / "results.json")
        print(f"weekly review {ds}: winner {result['winner']}: {result['reason']} (validation NDCG@10 {result['valid_ndcg10']})")
        for name, ms in result["test"].items():
            print(f"test {name}: " + ", ".join(f"{m}={v:.4f}" for m, v in ms.items()))
        # XCom is JSON: the full record (fraction curve, target ratios) can hold inf/NaN, which the
        # API server refuses; it stays whole in winner.json
        return {"ds": result["ds"], "winner": result["winner"], "reason": result["reason"], "valid_ndcg10": result["valid_ndcg10"]}

    full_comparison() >> record_winner()


weekly_strategy_review()
