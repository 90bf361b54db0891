"""Settings precedence (defaults < YAML < env < code) and secret masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossrec.settings import MASK, Settings, get_settings, mask_url_password


def _write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "crossrec.yaml"
    path.write_text(text)
    return path


def test_defaults_apply_without_file_or_env() -> None:
    settings = Settings()
    assert settings.top_k == 10
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.kafka.events_topic == "events"
    assert settings.target_domain == "office"


def test_yaml_overrides_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_file = _write_yaml(tmp_path, "top_k: 25\nredis:\n  url: redis://10.1.2.3:7000/2\n")
    monkeypatch.setenv("CROSSREC_CONFIG", str(yaml_file))
    settings = Settings()
    assert settings.top_k == 25
    assert settings.redis.port == 7000 and settings.redis.db == 2
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"  # untouched default


def test_env_overrides_yaml_and_nested_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_file = _write_yaml(tmp_path, "top_k: 25\nkafka:\n  events_topic: from-yaml\n  consumer_group: g-yaml\n")
    monkeypatch.setenv("CROSSREC_CONFIG", str(yaml_file))
    monkeypatch.setenv("CROSSREC_TOP_K", "40")
    monkeypatch.setenv("CROSSREC_KAFKA__EVENTS_TOPIC", "from-env")
    settings = Settings()
    assert settings.top_k == 40
    assert settings.kafka.events_topic == "from-env"
    assert settings.kafka.consumer_group == "g-yaml"  # a sibling field still comes from YAML


def test_code_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSREC_TOP_K", "40")
    assert Settings(top_k=7).top_k == 7


def test_default_yaml_in_working_directory_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROSSREC_CONFIG")
    _write_yaml(tmp_path, "target_domain: books\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().target_domain == "books"


def test_missing_explicit_config_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSREC_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="CROSSREC_CONFIG"):
        Settings()


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSREC_TOP_K", "0")
    with pytest.raises(ValueError, match="top_k"):
        Settings()
    with pytest.raises(ValueError, match="key_prefix"):
        Settings(key_prefix="a:b")
    with pytest.raises(ValueError, match="unknown_field"):
        Settings(unknown_field=1)


def test_secrets_are_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSREC_REDIS__PASSWORD", "redis-pw-123")
    monkeypatch.setenv("CROSSREC_REDIS__URL", "redis://user:url-pw-456@10.0.0.5:6380/0")
    monkeypatch.setenv("CROSSREC_KAFKA__SASL_PASSWORD", "kafka-pw-789")
    settings = Settings()
    assert settings.redis.password is not None
    assert settings.redis.password.get_secret_value() == "redis-pw-123"
    rendered = json.dumps(settings.masked_dump()) + repr(settings) + str(settings)
    for secret in ("redis-pw-123", "url-pw-456", "kafka-pw-789"):
        assert secret not in rendered
    dump = settings.masked_dump()
    assert dump["redis"]["password"] == MASK
    assert dump["kafka"]["sasl_password"] == MASK
    assert dump["redis"]["url"] == f"redis://user:{MASK}@10.0.0.5:6380/0"


def test_config_show_cli_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossrec.cli import app

    monkeypatch.setenv("CROSSREC_REDIS__PASSWORD", "cli-secret-value")
    monkeypatch.setenv("CROSSREC_TOP_K", "33")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["config", "show"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "cli-secret-value" not in result.output
    assert MASK in result.output
    assert json.loads(result.output)["top_k"] == 33


def test_mask_url_password_leaves_plain_urls_alone() -> None:
    assert mask_url_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_kafka_client_kwargs_carry_sasl() -> None:
    settings = Settings(
        kafka={
            "bootstrap_servers": "b1:9093, b2:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "svc",
            "sasl_password": "pw",
        }
    )
    kwargs = settings.kafka.client_kwargs()
    assert kwargs["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert kwargs["sasl_plain_password"] == "pw"
    assert settings.kafka.first_server == ("b1", 9093)
