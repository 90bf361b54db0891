"""The failure alert of the nightly DAGs: one clear log line, optionally POSTed to a URL.

Used as ``on_failure_callback``. The line names the DAG, the run, the logical date, the task and
the error, so that a log search for ``CROSSREC ALERT`` finds every failed night. The URL (a chat
webhook, say) comes from ``settings.nightly.alert_url``; it may carry a token, so it is a secret
and never logged. A failing POST is logged, never raised: the alert must not hide the failure.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger("crossrec.alert")
PREFIX = "CROSSREC ALERT"


def alert_line(dag_id: str, run_id: str, ds: str, task_id: str, error: object) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{PREFIX}: {dag_id} run {run_id} (logical date {ds}) failed at task {task_id}: {text}"


def on_failure(context: Any) -> None:
    """Airflow callback: log the alert line; POST it when an alert URL is configured."""
    from crossrec.settings import get_settings

    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    line = alert_line(
        getattr(ti, "dag_id", "?"), getattr(dag_run, "run_id", "?"), str(context.get("ds", "?")),
        getattr(ti, "task_id", "?"), context.get("exception") or "unknown error",
    )
    log.error(line)
    url = get_settings().nightly.alert_url
    if url is not None:
        post_alert(url.get_secret_value(), line)


def post_alert(url: str, line: str, timeout_s: float = 5.0) -> bool:
    body = json.dumps({"text": line}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 - operator-configured URL
            return 200 <= resp.status < 300
    except OSError as exc:
        log.error("%s: could not POST the alert (%s)", PREFIX, type(exc).__name__)
        return False
