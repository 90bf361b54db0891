"""docker-compose.yml describes the production stack; no Docker engine here, so parse and check it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {"kafka", "redis", "airflow-apiserver", "airflow-scheduler", "spark-master", "spark-worker", "consumer", "api"}
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
