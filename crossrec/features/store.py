"""The Feast store, configured from crossrec Settings at run time.

Why not a checked-in feature_store.yaml: the Redis address and password are per deployment and
secret. We build Feast's ``RepoConfig`` in memory (file offline store; the project's Redis as
online store; registry under ``{work_dir}/feast/``), so the password never lands on disk, and load
the object definitions from ``feature_repo/definitions.py``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from crossrec.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

PROJECT = "crossrec"
FEATURE_REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"


def redis_connection_string(settings: Settings) -> str:
    """Feast's redis-py style string ``host:port,db=N,password="..",ssl=true``.

    Feast splits it on ',' and JSON-decodes each value, so the password is written as a JSON
    string (quotes and backslashes survive); a ',' cannot be expressed at all, hence the error.
    """
    cfg = settings.redis
    parts = [f"{cfg.host}:{cfg.port}", f"db={cfg.db}"]
    if cfg.password is not None:
        secret = cfg.password.get_secret_value()
        if "," in secret:
            raise ValueError("the Redis password contains ',', which Feast's connection string cannot carry")
        parts.append(f"password={json.dumps(secret)}")
    if cfg.tls:
        parts.append("ssl=true")
        if cfg.tls_ca_cert:
            parts.append(f"ssl_ca_certs={json.dumps(str(cfg.tls_ca_cert))}")
    return ",".join(parts)


def feast_dir(settings: Settings) -> Path:
    return Path(settings.work_dir).resolve() / "feast"


def repo_config(settings: Settings) -> RepoConfig:
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.repo_config import RepoConfig

    path = feast_dir(settings)
    path.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(path / "registry.db"),
        online_store=RedisOnlineStoreConfig(
            connection_string=redis_connection_string(settings),
            redis_type="redis_cluster" if settings.redis.cluster else "redis",  # the seed node finds the rest
        ),
        offline_store=DaskOfflineStoreConfig(type="file"),  # "file" = the dask-backed file store
        entity_key_serialization_version=3,
        repo_path=path,
    )


def feature_store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def definitions_module(repo_dir: Path = FEATURE_REPO_DIR) -> ModuleType:
    """``feature_repo/definitions.py`` as a module (the repo dir is not a Python package)."""
    name = "crossrec_feature_repo_definitions"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, repo_dir / "definitions.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load Feast definitions from {repo_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def definitions(settings: Settings, encoder: str | None = None) -> dict[str, Any]:
    return definitions_module().build_definitions(Path(settings.work_dir), encoder or settings.encoder)


def apply(settings: Settings, encoder: str | None = None, store: FeatureStore | None = None) -> FeatureStore:
    """Register entities, sources, views and the service (idempotent, like ``feast apply``)."""
    store = store or feature_store(settings)
    defs = definitions(settings, encoder)
    missing = [
        str(p) for name, p in definitions_module().feature_paths(Path(settings.work_dir), encoder or settings.encoder).items()
        if not Path(p).exists()
    ]
    if missing:
        from crossrec.console import console

        console.print(f"[yellow]feast:[/] offline table(s) not written yet: {', '.join(missing)}")
    store.apply(list(defs.values()))
    return store


def materialize(
    settings: Settings,
    views: list[str] | None = None,
    *,
    store: FeatureStore | None = None,
    incremental: bool = True,
    end: datetime | None = None,
) -> FeatureStore:
    """Copy the latest offline rows into Redis.

    Incremental (default) ships only rows newer than the last materialisation of each view, which
    with the incremental embedding job means only the re-embedded items. Views whose offline
    table does not exist yet are skipped (named in the output) instead of failing the run.
    """
    from crossrec.console import console

    store = store or feature_store(settings)
    end = end or datetime.now(timezone.utc)
    paths = definitions_module().feature_paths(Path(settings.work_dir), settings.encoder)
    offline_only = {definitions_module().ITEM_STATS_DAILY}  # training reads it offline; nothing to serve
    wanted = views or [v for v in paths if v not in offline_only]
    ready = [v for v in wanted if Path(paths.get(v, "")).exists()]
    for v in sorted(set(wanted) - set(ready)):
        console.print(f"[yellow]feast:[/] skipping {v}: offline table {paths.get(v)} not found")
    if not ready:
        return store
    if incremental:
        store.materialize_incremental(end_date=end, feature_views=ready)
    else:
        store.materialize(start_date=datetime(1970, 1, 2, tzinfo=timezone.utc), end_date=end, feature_views=ready)
    return store
