"""Run a crossrec DAG under a real, running Airflow 3: api-server, scheduler and dag-processor.

Why not only ``airflow dags test``: that runs every task inside one process with no scheduler, so
it cannot show what production shows (tasks queued by the scheduler and run by the executor in
their own processes, retries, branches skipped by the scheduler, the DAG parsed by the
dag-processor). Here crossrec starts the three components as :class:`crossrec.services.LocalService`
processes (pid and log files in ``services.run_dir``, loopback only, SQLite metadata in
``{work_dir}/airflow``), triggers the DAG for a logical date through Airflow's REST API, waits
for the run and returns every task's state.

The runner's Airflow has the DAG's schedule switched off (``CROSSREC_NIGHTLY__SCHEDULE`` empty):
the DAG runs only when triggered, so unpausing it does not also start a scheduled run.
The API user and its password are written by crossrec into a 0600 file in the run dir, the JWT
secret likewise; neither is logged.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from crossrec.services import LocalService, ServiceError, ServiceStatus
from crossrec.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
API_USER = "crossrec"
FINISHED = {"success", "failed"}


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _secret(run_dir: Path, name: str) -> str:
    """A random secret kept in a 0600 file, so every component (and later calls) share it."""
    path = run_dir / name
    if not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment of the three components and of every task they run."""
    run_dir = settings.services.run_dir.resolve()
    home = Path(settings.work_dir).resolve() / "airflow"
    cfg = settings.nightly
    password_file = run_dir / "airflow-passwords.json"
    if not password_file.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        password_file.touch(mode=0o600)
        password_file.write_text(json.dumps({API_USER: secrets.token_urlsafe(24)}))
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{cfg.airflow_host}:{cfg.airflow_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{API_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(run_dir, "airflow-jwt-secret"),
        "AIRFLOW__API__HOST": cfg.airflow_host,
        "AIRFLOW__API__PORT": str(cfg.airflow_port),
        "AIRFLOW__API__BASE_URL": f"http://{cfg.airflow_host}:{cfg.airflow_port}",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": cfg.airflow_host,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(cfg.scheduler_health_port),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        # tasks run with the caller's settings, with paths made absolute (components run in run_dir)
        "CROSSREC_WORK_DIR": str(Path(settings.work_dir).resolve()),
        "CROSSREC_DATA_DIR": str(Path(settings.data_dir).resolve()),
        "CROSSREC_SERVICES__RUN_DIR": str(run_dir),
        "CROSSREC_NIGHTLY__SCHEDULE": "",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL from settings
            return resp.status == 200
    except (OSError, ValueError):
        return False


def airflow_services(settings: Settings) -> list[LocalService]:
    """api-server, dag-processor, scheduler (start order; stop in reverse: scheduler first)."""
    cfg = settings.nightly
    run_dir = settings.services.run_dir.resolve()
    env = airflow_env(settings)
    exe = os.path.realpath(sys.executable)  # the airflow script runs under the venv's python
    base = f"http://{cfg.airflow_host}:{cfg.airflow_port}"
    api = LocalService(
        "airflow-api-server", cfg.airflow_host, cfg.airflow_port, run_dir,
        [airflow_bin(), "api-server", "--port", str(cfg.airflow_port), "--host", cfg.airflow_host, "--workers", "1"],
        probe=lambda: _http_ok(f"{base}/api/v2/monitor/health"), exe=exe, marker=("airflow api-server", "airflow api_server"), env=env,
    )
    processor = LocalService(
        "airflow-dag-processor", cfg.airflow_host, None, run_dir, [airflow_bin(), "dag-processor"],
        probe=lambda: True, exe=exe, marker=("airflow dag-processor", "airflow dag_processor", "airflow dag-processor"), env=env,
    )
    scheduler = LocalService(
        "airflow-scheduler", cfg.airflow_host, cfg.scheduler_health_port, run_dir, [airflow_bin(), "scheduler"],
        probe=lambda: _http_ok(f"http://{cfg.airflow_host}:{cfg.scheduler_health_port}/health"),
        exe=exe, marker="airflow scheduler", env=env,
    )
    return [api, processor, scheduler]


def migrate_db(settings: Settings) -> None:
    import subprocess

    env = {**os.environ, **airflow_env(settings)}
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    done = subprocess.run([airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServiceError("airflow db migrate failed:\n" + (done.stdout + done.stderr)[-3000:])


def _task_env_fingerprint(settings: Settings) -> str:
    """A digest of what the tasks will see: Airflow's env plus every CROSSREC_* variable of the
    caller (a digest, since those may hold secrets)."""
    import hashlib

    env = {k: v for k, v in os.environ.items() if k.startswith("CROSSREC_")}
    env.update(airflow_env(settings))
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()


def airflow_up(settings: Settings, timeout_s: float = 180.0) -> list[ServiceStatus]:
    """Start the components (no-op for those of ours that run); refuse to reuse running ones
    that were started with other settings, since their tasks would run with those."""
    services = airflow_services(settings)
    record = settings.services.run_dir.resolve() / "airflow-env.sha256"
    wanted = _task_env_fingerprint(settings)
    running = [svc.name for svc in services if svc.owned_pid() is not None]
    if running and record.is_file() and record.read_text().strip() != wanted:
        raise ServiceError(
            f"{', '.join(running)} already run with other crossrec settings (tasks would use those); "
            "stop them first: crossrec nightly airflow down"
        )
    migrate_db(settings)
    statuses = [svc.start(timeout_s) for svc in services]
    record.write_text(wanted)
    return statuses


def airflow_down(settings: Settings) -> list[tuple[str, bool]]:
    return [(svc.name, svc.stop(timeout_s=30.0)) for svc in reversed(airflow_services(settings))]


def airflow_status(settings: Settings) -> list[ServiceStatus]:
    return [svc.status() for svc in airflow_services(settings)]


class AirflowAPI:
    """The few REST calls the runner needs, with a token from the simple auth manager."""

    def __init__(self, settings: Settings) -> None:
        cfg = settings.nightly
        self.base = f"http://{cfg.airflow_host}:{cfg.airflow_port}"
        passwords = json.loads((settings.services.run_dir.resolve() / "airflow-passwords.json").read_text())
        token = self._call("POST", "/auth/token", {"username": API_USER, "password": passwords[API_USER]}, auth=False)
        self._token = token["access_token"]

    def _call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback URL from settings
            return json.loads(resp.read() or b"null")

    def dag(self, dag_id: str) -> dict | None:
        try:
            return self._call("GET", f"/api/v2/dags/{dag_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, run_id: str, logical_date: str) -> None:
        """Create the run, or clear it if this date already has one (a re-run of the date)."""
        try:
            self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": logical_date})
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise RuntimeError(f"trigger failed ({exc.code}): {exc.read()[:500]!r}") from exc
            self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/clear", {"dry_run": False})

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        body = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        body = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value?deserialize=true")
        return body.get("value")


@dataclass
class RunResult:
    dag_id: str
    run_id: str
    ds: str
    state: str
    tasks: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0
    log_dir: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "success"


def run_dag(
    settings: Settings,
    dag_id: str,
    ds: str,
    timeout_s: float | None = None,
    on_change: Callable[[dict[str, str | None]], None] | None = None,
) -> RunResult:
    """Trigger ``dag_id`` for logical date ``ds`` on the running Airflow, wait, return the states."""
    api = AirflowAPI(settings)
    deadline = time.monotonic() + (timeout_s or settings.nightly.run_timeout_s)
    while api.dag(dag_id) is None:  # the dag-processor has not parsed the file yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"Airflow never listed {dag_id}; see the dag-processor log in {settings.services.run_dir}")
        time.sleep(1.0)
    api.unpause(dag_id)
    run_id = f"crossrec__{ds}"
    started = time.monotonic()
    api.trigger(dag_id, run_id, f"{ds}T00:00:00Z")
    state = "queued"
    seen: dict[str, str | None] = {}
    while True:
        state = api.run_state(dag_id, run_id)
        tasks = api.task_states(dag_id, run_id)
        if tasks != seen and on_change is not None:
            on_change(tasks)
        seen = tasks
        if state in FINISHED:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dag_id} {run_id} still {state} after {timeout_s}s: {tasks}")
        time.sleep(2.0)
    log_dir = Path(airflow_env(settings)["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]) / f"dag_id={dag_id}" / f"run_id={run_id}"
    return RunResult(dag_id, run_id, ds, state, seen, time.monotonic() - started, str(log_dir))
