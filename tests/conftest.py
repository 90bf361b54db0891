"""Shared fixtures: real local services on free ports, a real Spark session, isolated settings.

Integration tests get a real Redis server and a real Kafka-protocol broker through the same code
path as `crossrec services up` (never mocks), on ports nobody else uses, torn down at the end.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossrec.services import services_down, services_up
from crossrec.settings import Settings

# py4j logs at INFO from __del__ during interpreter shutdown, after pytest closed the streams a
# test's logging handler writes to; that noise would otherwise follow the pytest summary.
logging.getLogger("py4j").setLevel(logging.WARNING)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT / "data" / "amazon-art-office"  # the sample shipped with the repo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(tmp: Path, **overrides: object) -> Settings:
    """Settings isolated under ``tmp``; services on fresh free ports unless overridden."""
    base: dict[str, object] = {
        "work_dir": tmp / "work",
        "data_dir": tmp / "data",
        "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"},
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        "services": {"run_dir": tmp / "run"},
        "spark": {"master": "local[2]", "driver_memory": "2g", "shuffle_partitions": 2},
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up a developer's crossrec.yaml or CROSSREC_* variables."""
    for name in list(os.environ):
        if name.startswith("CROSSREC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CROSSREC_CONFIG", str(REPO_ROOT / "tests" / "data" / "empty.yaml"))


@pytest.fixture(scope="session")
def services_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One real Redis + broker for the whole test session (started via crossrec.services)."""
    settings = make_settings(tmp_path_factory.mktemp("services"))
    services_up(settings)
    try:
        yield settings
    finally:
        services_down(settings)


@pytest.fixture()
def redis_client(services_settings: Settings):
    """A client on the session Redis, flushed before each test so tests don't see each other."""
    from crossrec.redis_conn import redis_client as make_client

    client = make_client(services_settings)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """One real local-mode Spark session for all tests (starting one costs seconds)."""
    from crossrec.spark import spark_session

    settings = make_settings(tmp_path_factory.mktemp("spark"))
    session = spark_session(settings, app_name="crossrec-tests")
    yield session
    session.stop()
