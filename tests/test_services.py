"""The embedded services: start, answer, idempotent start, stop only ours, clear failures."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_settings
from kafka import KafkaConsumer, KafkaProducer

from crossrec.services import (
    ServiceError,
    State,
    broker_service,
    redis_service,
    services_down,
    services_status,
    services_up,
)
from crossrec.settings import Settings

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@pytest.fixture()
def settings(tmp_path: Path):
    settings = make_settings(tmp_path)
    yield settings
    services_down(settings)


def test_up_status_down_cycle(settings: Settings) -> None:
    assert [s.state for s in services_status(settings)] == [State.DOWN, State.DOWN]

    statuses = services_up(settings)
    assert [s.state for s in statuses] == [State.UP, State.UP]
    pids = [s.pid for s in statuses]
    assert all(pid is not None and _alive(pid) for pid in pids)

    # Both answer real protocol requests, not only TCP connects.
    from crossrec.redis_conn import redis_client

    client = redis_client(settings)
    assert client.ping() is True
    client.close()
    topic = settings.kafka.events_topic
    producer = KafkaProducer(**settings.kafka.client_kwargs())
    producer.send(topic, key=b"u1", value=b'{"x": 1}').get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(
        topic, **settings.kafka.client_kwargs(), auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    values = [msg.value for msg in consumer]
    consumer.close()
    assert b'{"x": 1}' in values

    stopped = dict(services_down(settings))
    assert stopped == {"redis": True, "kafka": True}
    assert not any(_alive(pid) for pid in pids if pid is not None)
    assert [s.state for s in services_status(settings)] == [State.DOWN, State.DOWN]
    assert not list((settings.services.run_dir).glob("*.pid"))


def test_up_twice_is_a_no_op(settings: Settings) -> None:
    first = services_up(settings)
    second = services_up(settings)
    assert [s.pid for s in first] == [s.pid for s in second]
    pid_files = sorted(p.name for p in settings.services.run_dir.glob("*.pid"))
    assert pid_files == ["kafka.pid", "redis.pid"]


def test_down_without_up_touches_nothing(settings: Settings) -> None:
    assert dict(services_down(settings)) == {"redis": False, "kafka": False}


def test_port_taken_by_a_stranger_fails_clearly(settings: Settings) -> None:
    with socket.socket() as squatter:
        squatter.bind((settings.redis.host, settings.redis.port))
        squatter.listen()
        with pytest.raises(ServiceError) as err:
            services_up(settings)
    message = str(err.value)
    assert "already in use" in message and str(settings.redis.port) in message
    assert redis_service(settings).owned_pid() is None  # nothing of ours was left running


def test_down_never_kills_a_foreign_process_with_a_stale_pid_file(settings: Settings) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        svc = redis_service(settings)
        svc.run_dir.mkdir(parents=True, exist_ok=True)
        svc.pid_file.write_text(str(stranger.pid))  # a pid file pointing at someone else
        assert svc.owned_pid() is None
        assert svc.stop() is False
        assert stranger.poll() is None  # still running
    finally:
        stranger.kill()
        stranger.wait()


def test_a_service_that_dies_at_start_reports_its_log_tail(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, services={"run_dir": tmp_path / "run", "startup_timeout_s": 5})
    svc = broker_service(settings)
    # An invalid storage engine makes the real broker exit at once.
    bad = svc.__class__(svc.name, svc.host, svc.port, svc.run_dir, [*svc.argv[:-1], "nonsense://x"], svc.probe)
    with pytest.raises(ServiceError) as err:
        bad.start(timeout_s=5)
    assert "kafka" in str(err.value) and "Last lines of" in str(err.value)
    assert bad.owned_pid() is None


def test_password_protected_redis_refuses_clients_without_it(tmp_path: Path) -> None:
    import redis

    from conftest import free_port

    settings = make_settings(
        tmp_path, redis={"url": f"redis://127.0.0.1:{free_port()}/0", "password": "pw-for-test"}
    )
    svc = redis_service(settings)
    try:
        assert svc.start(timeout_s=10).state is State.UP
        from crossrec.redis_conn import redis_client

        assert redis_client(settings).ping() is True
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=settings.redis.host, port=settings.redis.port).ping()
        assert "pw-for-test" not in " ".join(svc.argv)  # not visible in the process list
    finally:
        svc.stop()


def test_services_cli_status_exit_codes(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from crossrec.cli import app
    from crossrec.settings import get_settings

    monkeypatch.setenv("CROSSREC_REDIS__URL", settings.redis.url)
    monkeypatch.setenv("CROSSREC_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("CROSSREC_SERVICES__RUN_DIR", str(settings.services.run_dir))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        assert runner.invoke(app, ["services", "status"]).exit_code == 1
        up = runner.invoke(app, ["services", "up"])
        assert up.exit_code == 0, up.output
        status = runner.invoke(app, ["services", "status"])
        assert status.exit_code == 0 and status.output.count(" up ") == 2
        down = runner.invoke(app, ["services", "down"])
        assert "redis: stopped" in down.output and "kafka: stopped" in down.output
    finally:
        get_settings.cache_clear()
