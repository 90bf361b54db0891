"""A Spark standalone cluster on this machine: one master and one worker from the pyspark wheel.

Why from the wheel: pyspark ships Spark's jars and ``bin/spark-class``, which is all a standalone
master and worker need, so a laptop or CI gets a real cluster (separate JVMs, executors that talk
to the driver over the network, Python workers started by the executor) without a download.
Both are :class:`crossrec.services.LocalService` processes: pid and log files in
``services.run_dir``, loopback only, stopped only if still ours. ``spark-class`` is a launcher
script that execs ``java``; ownership is therefore checked on the java executable plus the
daemon's class name in the command line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from crossrec.services import LocalService, ServiceError
from crossrec.settings import Settings

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    """The pyspark package directory: it holds ``bin/``, ``jars/`` like a Spark distribution."""
    import pyspark

    return Path(pyspark.__file__).parent


def java_binary() -> str:
    """The java that spark-class will exec (``$JAVA_HOME/bin/java``, else the one on PATH)."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    found = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if not found:
        raise ServiceError("java is not installed (Spark needs a JRE 17): run scripts/setup.sh")
    return os.path.realpath(found)


def _daemon_env(settings: Settings) -> dict[str, str]:
    run_dir = settings.services.run_dir.resolve()
    return {
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": settings.spark.standalone_host,
        "SPARK_LOG_DIR": str(run_dir),
        "SPARK_NO_DAEMONIZE": "1",
        # executors start Python workers with this interpreter: the venv that has crossrec + torch
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_DAEMON_MEMORY": "512m",
    }


def master_state(settings: Settings, timeout_s: float = 1.0) -> dict | None:
    """The master's JSON status page (workers, cores, apps), or None if it does not answer."""
    url = f"http://{settings.spark.standalone_host}:{settings.spark.master_ui_port}/json/"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback URL from settings
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def alive_workers(settings: Settings) -> int:
    state = master_state(settings)
    if not state:
        return 0
    return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")


def spark_master_service(settings: Settings) -> LocalService:
    cfg = settings.spark
    argv = [
        str(spark_home() / "bin" / "spark-class"), MASTER_CLASS,
        "--host", cfg.standalone_host, "--port", str(cfg.master_port), "--webui-port", str(cfg.master_ui_port),
    ]
    return LocalService(
        "spark-master", cfg.standalone_host, cfg.master_port, settings.services.run_dir.resolve(), argv,
        probe=lambda: master_state(settings) is not None, exe=java_binary(), marker=MASTER_CLASS,
        env=_daemon_env(settings),
    )


def spark_worker_service(settings: Settings) -> LocalService:
    cfg = settings.spark
    run_dir = settings.services.run_dir.resolve()
    argv = [
        str(spark_home() / "bin" / "spark-class"), WORKER_CLASS, cfg.standalone_url,
        "--host", cfg.standalone_host, "--port", str(cfg.worker_port), "--webui-port", str(cfg.worker_ui_port),
        "--cores", str(cfg.worker_cores), "--memory", cfg.worker_memory,
        "--work-dir", str(run_dir / "spark-worker"),
    ]
    # "up" means registered with the master, not only listening: a job submitted before that
    # would wait for resources.
    return LocalService(
        "spark-worker", cfg.standalone_host, cfg.worker_port, run_dir, argv,
        probe=lambda: alive_workers(settings) >= 1, exe=java_binary(), marker=WORKER_CLASS,
        env=_daemon_env(settings),
    )


def spark_submit_argv(settings: Settings, job: str | Path, *args: str) -> list[str]:
    """``spark-submit`` of a ``jobs/*.py`` script to ``spark.master`` with crossrec's driver settings."""
    cfg = settings.spark
    return [
        str(spark_home() / "bin" / "spark-submit"),
        "--master", cfg.master,
        "--conf", f"spark.driver.host={cfg.driver_host}",
        "--conf", f"spark.driver.bindAddress={cfg.bind_address}",
        "--conf", f"spark.executor.memory={cfg.executor_memory}",
        "--conf", f"spark.pyspark.python={sys.executable}",
        "--driver-memory", cfg.driver_memory,
        str(job), *args,
    ]
