"""docker-compose.yml describes the production stack; no Docker engine here, so parse it and check
the points that decide whether it would run: every Airflow 3 component, a Spark image with crossrec
and torch, executors that can reach the driver, shared volumes, crossrec settings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {"kafka", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "spark-master",
            "spark-worker", "consumer", "api", "prometheus"}
AIRFLOW = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
SECRET_WORDS = re.compile(r"(password|secret|token|jwt)", re.I)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_has_every_production_service(compose: dict) -> None:
    assert REQUIRED <= set(compose["services"])


def test_images_are_pinned(compose: dict) -> None:
    for name, svc in compose["services"].items():
        image = svc.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned to a version"
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")  # official image


def test_kafka_runs_in_kraft_mode(compose: dict) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "ZOOKEEPER" not in " ".join(env)


def test_long_running_services_have_health_checks(compose: dict) -> None:
    for name in REQUIRED:
        check = compose["services"][name].get("healthcheck", {})
        assert check.get("test"), f"{name} has no health check"


def test_no_secret_values_inline(compose: dict) -> None:
    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and SECRET_WORDS.search(str(key)):
                    assert value.startswith("${") or "$$" in value, f"{path}.{key} holds a literal secret"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(compose, "compose")
    assert "change-me" not in (ROOT / "docker-compose.yml").read_text()


def test_dependencies_wait_for_health(compose: dict) -> None:
    deps = compose["services"]["consumer"]["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"


def test_airflow3_components_share_one_configuration(compose: dict) -> None:
    """Airflow 3 needs the dag-processor (no DAG reaches the scheduler without it); every component
    must agree on the JWT secret, the metadata DB and where the execution API is."""
    services = compose["services"]
    assert services["airflow-dag-processor"]["command"] == ["airflow", "dag-processor"]
    assert services["airflow-scheduler"]["command"] == ["airflow", "scheduler"]
    assert services["airflow-apiserver"]["command"] == ["airflow", "api-server"]
    envs = [services[name]["environment"] for name in AIRFLOW]
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        assert len({env[key] for env in envs}) == 1, key
    assert envs[0]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    # the DAG files parse with crossrec settings: the dag-processor needs the crossrec environment
    assert "CROSSREC_WORK_DIR" in services["airflow-dag-processor"]["environment"]
    for name in AIRFLOW:
        assert services[name]["image"] == services["airflow-init"]["image"]
        assert services[name]["depends_on"], name


def test_spark_image_carries_crossrec_and_cpu_torch(compose: dict) -> None:
    services = compose["services"]
    spark_image = services["spark-master"]["image"]
    assert services["spark-worker"]["image"] == spark_image and spark_image.startswith("crossrec-spark:")
    dockerfile = (ROOT / services["spark-master"]["build"]["dockerfile"]).read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert base == services["crossrec-app-image"]["image"] == services["consumer"]["image"]
    app = (ROOT / services["crossrec-app-image"]["build"]["dockerfile"]).read_text()
    assert re.search(r"pip install .*torch==[\d.]+ --index-url \"\$\{TORCH_INDEX_URL", app)  # CPU wheel index
    assert "pip install" in app and "COPY . ." in app and "openjdk-17" in app
    assert "TORCH_INDEX_URL" in services["crossrec-app-image"]["build"]["args"]
    # the airflow image (the Spark driver) is built on the same base: same Python on both sides
    airflow = (ROOT / services["airflow-init"]["build"]["dockerfile"]).read_text()
    assert re.search(r"^FROM\s+(\S+)", airflow, re.M).group(1) == base
    for name in ("spark-master", "spark-worker"):
        assert services[name]["command"][0] == "/opt/spark/bin/spark-class"
        assert "/opt/spark" in dockerfile and "PYSPARK_PYTHON" in dockerfile


def test_executors_can_reach_the_driver(compose: dict) -> None:
    """Tasks run in the scheduler container, so it is the driver: it must advertise its service
    name to executors and listen on every interface, not on loopback."""
    services = compose["services"]
    env = services["airflow-scheduler"]["environment"]
    assert env["CROSSREC_SPARK__DRIVER_HOST"] == services["airflow-scheduler"]["hostname"] == "airflow-scheduler"
    assert env["CROSSREC_SPARK__BIND_ADDRESS"] == "0.0.0.0"
    assert env["CROSSREC_SPARK__MASTER"] == "spark://spark-master:7077"
    assert "spark-master" in services["spark-master"]["command"] and "7077" in services["spark-master"]["command"]
    assert "spark://spark-master:7077" in services["spark-worker"]["command"]


def test_shared_volume_for_data_and_models(compose: dict) -> None:
    services = compose["services"]
    for name in ("airflow-scheduler", "spark-worker", "consumer"):
        assert "crossrec-data:/data" in services[name]["volumes"], name
        env = services[name]["environment"]
        assert env["CROSSREC_WORK_DIR"].startswith("/data/") and env["CROSSREC_DATA_DIR"].startswith("/data/")
    assert "crossrec-data" in compose["volumes"]


def test_crossrec_environment_names_real_settings(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CROSSREC_* variable in the file is a setting crossrec knows (a typo would crash it)."""
    from crossrec.settings import Settings

    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        crossrec_env = {k: v for k, v in env.items() if k.startswith("CROSSREC_")}
        if not crossrec_env:
            continue
        for key in [k for k in list(__import__("os").environ) if k.startswith("CROSSREC_")]:
            monkeypatch.delenv(key)
        for key, value in crossrec_env.items():
            monkeypatch.setenv(key, "placeholder" if value.startswith("${") else str(value))
        settings = Settings()
        assert settings.kafka.bootstrap_servers == "kafka:9092", name
        if name == "airflow-scheduler":
            assert settings.spark.driver_host == "airflow-scheduler" and settings.spark.bind_address == "0.0.0.0"


def test_prometheus_scrapes_consumer_and_api(compose: dict) -> None:
    prom = compose["services"]["prometheus"]
    mount = next(v for v in prom["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"consumer:9108", "api:8000"}
    assert all(job["metrics_path"] == "/metrics" for job in config["scrape_configs"])
