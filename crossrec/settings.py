"""One typed settings object for every part of crossrec.

Values are layered so that a deployment can override only what differs from the
embedded defaults: built-in defaults < a YAML file < ``CROSSREC_*`` environment
variables < keyword arguments given in code (tests). Nested fields use ``__`` in
environment names, e.g. ``CROSSREC_REDIS__URL`` or ``CROSSREC_KAFKA__SASL_PASSWORD``.

Secrets are ``SecretStr`` so that ``repr``/logging never shows them; ``masked_dump``
is what ``crossrec config show`` prints.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_ENV_VAR = "CROSSREC_CONFIG"
DEFAULT_CONFIG_FILE = "crossrec.yaml"
MASK = "********"


class RedisSettings(BaseModel):
    """Where recommendations and Feast's online store live."""

    url: str = "redis://127.0.0.1:6379/0"
    password: SecretStr | None = None
    tls: bool = False
    tls_ca_cert: Path | None = None
    max_connections: int = 32
    # A Redis Cluster: ``url`` names any one node, the client discovers the rest. Every per-user
    # key carries the user's hash tag, so the same key schema and scripts work unchanged.
    cluster: bool = False

    def __repr_args__(self):  # type: ignore[override]
        # A URL may carry a password (redis://user:pw@host); never let repr/str/logging show it.
        for name, value in super().__repr_args__():
            yield name, mask_url_password(value) if name == "url" else value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    @property
    def db(self) -> int:
        path = urlsplit(self.url).path.strip("/")
        return int(path) if path else 0


class KafkaSettings(BaseModel):
    """Broker connection, topics and consumer group of the streaming path."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    events_topic: str = "events"
    items_topic: str = "items"
    dead_letter_topic: str = "events-dlq"
    consumer_group: str = "crossrec-recs"
    partitions: int = 2

    @property
    def first_server(self) -> tuple[str, int]:
        host, _, port = self.bootstrap_servers.split(",")[0].strip().rpartition(":")
        return host or "127.0.0.1", int(port)

    def client_kwargs(self) -> dict[str, Any]:
        """Connection arguments shared by every kafka-python client we create."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            kwargs["ssl_cafile"] = str(self.ssl_cafile)
        return kwargs


class SparkSettings(BaseModel):
    """Where batch jobs run. ``master`` is ``local[2]`` (embedded) or ``spark://host:port``.

    ``standalone`` makes ``crossrec services up`` also start a Spark standalone master and one
    worker from the pyspark distribution on ``standalone_host``; ``master`` must then point at it
    (``spark://127.0.0.1:{master_port}``) for jobs to use it. ``driver_host``/``bind_address`` are
    what executors use to reach the driver: loopback on one machine, the container's name and
    ``0.0.0.0`` in docker-compose.
    """

    master: str = "local[2]"
    driver_memory: str = "6g"
    shuffle_partitions: int = 4
    driver_host: str = "127.0.0.1"
    bind_address: str = "127.0.0.1"
    standalone: bool = False
    standalone_host: str = "127.0.0.1"
    master_port: int = 7077
    master_ui_port: int = 8090
    worker_port: int = 7078
    worker_ui_port: int = 8091
    worker_cores: int = Field(default=2, ge=1)
    worker_memory: str = "4g"
    executor_memory: str = "2g"

    @property
    def standalone_url(self) -> str:
        return f"spark://{self.standalone_host}:{self.master_port}"


class NightlySettings(BaseModel):
    """The nightly DAG: data-quality thresholds, the strategy it retrains, alerts, its Airflow.

    The data-quality gate fails a run before any model work when the share of quarantined events
    passes ``max_quarantine_rate``, kept events drop by more than ``max_event_drop`` against the
    last good run, or a domain that had events in the last good run has none.
    """

    schedule: str | None = "0 2 * * *"  # None: triggered only (what `crossrec nightly` sets)
    strategy: str = "auto"  # a strategy name, or auto = the winner recorded by the weekly review
    fallback_strategy: str = "pretrain_finetune_adaptor"  # auto before any review has run
    promote_margin: float = Field(default=0.0, ge=0.0)
    max_quarantine_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    max_event_drop: float = Field(default=0.5, ge=0.0, le=1.0)
    embed_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    adapt_args: list[str] = Field(default_factory=list)  # extra `crossrec adapt` flags (e.g. fewer epochs)
    # torch threads of the nightly's training and re-scoring. 1, measured: on a 2-core machine with
    # other work running, 2 threads made an epoch 5-12x slower than 1 (their OpenMP workers wait on
    # each other whenever one is descheduled); alone, 2 threads were ~1.5x faster (bench_nightly.py).
    train_threads: int = Field(default=1, ge=1)
    diagnose: bool = False  # the training-free transfer diagnosis is the weekly review's job
    # Source-pretraining epochs of the nightly's transfer candidate (`crossrec adapt` default: 8).
    # Art-Office, nightly validation NDCG@10 of pretrain_finetune_adaptor: 8 epochs .0581 and .0475
    # (two runs), 3 epochs .0620 (one run); the zero-shot number pretraining early-stops on is within
    # .004 of its best from epoch 2. Each epoch costs 10-20 s of the nightly. The weekly keeps 8.
    pretrain_epochs: int = Field(default=3, ge=1)
    alert_url: SecretStr | None = None  # POSTed one JSON line when a task fails (may carry a token)
    dagrun_timeout_min: int = Field(default=180, ge=1)
    airflow_host: str = "127.0.0.1"
    airflow_port: int = 8080  # api-server of the Airflow that `crossrec nightly` starts
    scheduler_health_port: int = 8974
    run_timeout_s: float = Field(default=3600.0, gt=0)


class AdaptSettings(BaseModel):
    """`crossrec adapt` defaults a deployment sets once (its flags override them per run)."""

    # Where training runs (TrainConfig.device): cpu (the path every test and the nightly take),
    # cuda / cuda:N, or auto (cuda when torch sees one). `crossrec adapt --device` overrides it.
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:[0-9]+)?)$")
    # Training users whose last target event is held out as the selection set (every choice of a
    # run is made on it; TrainConfig.selection_users). On Art -> Office 2,000 resolved strategy
    # differences of only about ±6-8 %; 6,000 separate a 5 % difference (README: "selection set").
    selection_users: int = Field(default=6000, ge=0)
    # Tail slots (adaptation/tail_slots.py): the loss of overall NDCG@10 a deployment accepts, as a
    # fraction of the route's own, for giving the last places of each top ten to the tail items
    # nearest by text. Slots are kept per segment only when the selection set's tail events gain
    # (CI above zero) and the overall CI's lower bound stays above minus this; 0 turns them off.
    tail_slot_margin: float = Field(default=0.01, ge=0, lt=1)


class CleanSettings(BaseModel):
    """Cleaning choices that a deployment tunes (the CLI flags override them per run)."""

    near_dup_window_s: float = 60.0  # same user+item+type within this window = near duplicate; < 0 = off
    kcore: int | None = Field(default=None, ge=1)  # per-domain k-core; off: cleaning keeps every good row


class ServingSettings(BaseModel):
    """The HTTP read API: limits on input and how it talks to Redis (see serving/app.py)."""

    mode: Literal["inline", "async", "thread"] = "inline"  # inline measured cheapest per request
    max_k: int = Field(default=100, ge=1)
    max_id_len: int = Field(default=128, ge=1)
    pointer_ttl_s: float = Field(default=1.0, ge=0)  # how stale `current_model` in a response may be
    redis_timeout_s: float = Field(default=0.5, gt=0)  # bounds how long a stuck Redis holds a request
    # The hot read (GET /recommendations) answered from an in-process copy kept exact by Redis's
    # CLIENT TRACKING invalidations (crossrec/read_cache.py); inline mode, non-cluster Redis only.
    read_cache: bool = True
    read_cache_max_entries: int = Field(default=10_000, ge=1)
    read_cache_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Publish and the consumer serve a version through its routing table when its artifact has one
    # (`crossrec adapt` fits it); False serves the plain model (a switch back, and a baseline).
    routing: bool = True


class StreamingSettings(BaseModel):
    """The consumer service (`crossrec stream`): batch bounds, retries, dedupe window, metrics.

    ``poll_timeout_ms``/``fetch_max_wait_ms`` bound how long an event can wait in the client
    before its batch starts (freshness); ``max_poll_records`` bounds a batch's memory.
    """

    max_poll_records: int = Field(default=500, ge=1)
    poll_timeout_ms: int = Field(default=200, ge=1)
    fetch_max_wait_ms: int = Field(default=10, ge=0)  # the broker answers a fetch at least this often
    max_message_bytes: int = Field(default=1_000_000, ge=1)  # larger values are dead-lettered
    require_known_items: bool = True  # an event on an item with no catalogue hash is dead-lettered
    dedupe_window: int = Field(default=200, ge=1)  # recent event ids remembered per user
    dlq_timeout_s: float = Field(default=10.0, gt=0)  # how long a dead-letter send may take to confirm
    commit_timeout_s: float = Field(default=10.0, gt=0)
    retry_initial_s: float = Field(default=0.2, gt=0)  # first backoff after a dependency error
    retry_max_s: float = Field(default=5.0, gt=0)  # backoff ceiling; retries go on until stopped
    probe_interval_s: float = Field(default=5.0, gt=0)  # dependency probe + lag refresh period
    reload_check_s: float = Field(default=10.0, ge=0)  # how often the model pointer is checked
    session_timeout_ms: int = 6000  # measured: default timeouts make group joins take ~23 s
    heartbeat_interval_ms: int = 2000
    metadata_max_age_ms: int = 5000  # re-read topic metadata often: finds re-created topics
    heartbeat_file: Path = Path("/tmp/crossrec-consumer.alive")  # touched only while healthy
    metrics_port: int = Field(default=9108, ge=0, le=65535)  # Prometheus /metrics; 0 = off
    # Scoring threads per consumer process. One: a batch's matmuls are small, and measured on the
    # shared 2-core host one thread scored a batch 2x faster than two; scale with more consumers
    # (partitions) instead. None = torch's default (every core).
    torch_threads: int | None = Field(default=1, ge=1)
    # Push each touched user's fresh features to Feast (user_features_push) in the batch that
    # writes their lists; skipped (counted) while no Feast registry exists.
    push_features: bool = True
    # The Feast push runs on a worker thread, at most once per push_interval_s (batches in
    # between are merged into one push); a batch is committed once a push carrying its users
    # returned. Past max_pending_events uncommitted events the loop waits for the push; a crash
    # re-delivers the uncommitted events (at most this many plus one poll).
    push_interval_s: float = Field(default=0.25, ge=0)
    # Run the pushes in a child process (its own Feast store; it reads the users' histories from
    # Redis itself) instead of on a thread of the consumer, so Feast's Python does not hold the
    # consumer's interpreter lock. A dead child is replaced and its push redone before any commit.
    # Off by default: measured on the shared 2-core host (bench_stream --quick, same lock hold) it
    # made one consumer 1.49x faster but two consumers no faster (1.21x one instead of 1.87x), and
    # it did not move the freshness p99 at 500 events/s; worth it where a consumer has spare cores.
    push_process: bool = False
    # Write the pushed rows straight to the online store's online_write_batch (protos built from
    # the views' declared types) instead of store.push's pandas -> Arrow -> proto conversion:
    # measured 42 -> 27 ms for a 420-user push (crossrec/features/online_write.py). Off: store.push.
    push_direct: bool = True
    max_pending_events: int = Field(default=2_000, ge=1)


class ServicesSettings(BaseModel):
    """Local (embedded) services: where their pid and log files go.

    Ports are not repeated here: the local Redis listens on the port of
    ``redis.url`` and the broker on the first of ``kafka.bootstrap_servers``, so
    the clients and the servers can never disagree.
    """

    run_dir: Path = Path("var/run")
    startup_timeout_s: float = 30.0
    redis_server_bin: str = "redis-server"
    tansu_bin: str | None = None


class Settings(BaseSettings):
    """Everything configurable in crossrec, in one place."""

    model_config = SettingsConfigDict(
        env_prefix="CROSSREC_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path("data/amazon-art-office")  # shipped in the repo (see data/amazon-art-office/README.md)
    work_dir: Path = Path("var")
    source_domain: str = "art"
    target_domain: str = "office"
    domains: list[str] = Field(default_factory=lambda: ["art", "office"])
    encoder: Literal["minilm", "smollm2"] = "minilm"
    top_k: int = Field(default=10, ge=1, le=1000)
    key_prefix: str = "crossrec"
    seed: int = 42

    redis: RedisSettings = Field(default_factory=RedisSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    clean: CleanSettings = Field(default_factory=CleanSettings)
    nightly: NightlySettings = Field(default_factory=NightlySettings)
    adapt: AdaptSettings = Field(default_factory=AdaptSettings)

    @field_validator("key_prefix")
    @classmethod
    def _prefix_has_no_separator(cls, value: str) -> str:
        if not value or ":" in value:
            raise ValueError("key_prefix must be non-empty and must not contain ':'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First source wins: code > environment > YAML file > defaults.
        yaml_path = config_file_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    def masked_dump(self) -> dict[str, Any]:
        """A JSON-ready view with every secret (and any password in a URL) masked."""
        data = self.model_dump(mode="json")
        data["redis"]["url"] = mask_url_password(self.redis.url)
        for section, key in (("redis", "password"), ("kafka", "sasl_password"), ("nightly", "alert_url")):
            if data[section][key] is not None:
                data[section][key] = MASK
        return data


def mask_url_password(url: str) -> str:
    """Hide the password part of a URL such as ``redis://user:pw@host:6379/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def config_file_path() -> Path | None:
    """The YAML file to read: ``$CROSSREC_CONFIG`` if set (must exist), else ./crossrec.yaml if present."""
    explicit = os.environ.get(CONFIG_ENV_VAR)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_ENV_VAR}={explicit} does not name a file")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once; tests build their own ``Settings(...)`` instead."""
    return Settings()
