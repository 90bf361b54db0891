"""Model registry: versioning, the promotion gate both ways, rollback, atomic pointer, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import os
import subprocess
import sys
import time
from collections.abc import Iterator

from conftest import free_port

from crossrec.cli import app
from crossrec.keys import KeySchema
from crossrec.registry import ModelRegistry, RegistryError
from crossrec.settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent


def _add(reg: ModelRegistry, ndcg: float) -> str:
    def write(tmp: Path) -> None:
        (tmp / "weights.pt").write_bytes(b"w")

    return reg.register(write, {"strategy": "s", "encoder": "minilm", "valid_metrics": {"NDCG@10": ndcg}, "data_fingerprint": "abc"})


def test_versions_are_sequential_and_complete(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    assert [_add(reg, 0.1), _add(reg, 0.2)] == ["v0001", "v0002"]
    assert (reg.path("v0002") / "weights.pt").is_file()
    assert reg.manifest("v0002")["version"] == "v0002"
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".staging")]


def test_failed_write_leaves_no_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)

    def boom(tmp: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        reg.register(boom, {})
    assert reg.versions() == [] and not list(tmp_path.glob(".staging*"))


def test_gate_promotes_first_then_only_on_improvement_beyond_margin(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = _add(reg, 0.050)
    d1 = reg.gate(v1, margin=0.002)
    assert d1.promoted and reg.current() == v1
    v2 = _add(reg, 0.051)  # better, but not by the margin
    d2 = reg.gate(v2, margin=0.002)
    assert not d2.promoted and reg.current() == v1
    assert "keeping v0001" in d2.reason and "does not beat" in d2.reason
    v3 = _add(reg, 0.040)  # worse
    assert not reg.gate(v3, margin=0.0).promoted and reg.current() == v1
    v4 = _add(reg, 0.060)
    d4 = reg.gate(v4, margin=0.002)
    assert d4.promoted and reg.current() == v4 and d4.current == v1


def test_gate_uses_rescored_current_metric(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = _add(reg, 0.05)
    reg.gate(v1)
    v2 = _add(reg, 0.04)
    # stored 0.05 would keep v1, but today's re-score of v1 is 0.03 -> v2 wins
    assert reg.gate(v2, margin=0.0, current_metric=0.03).promoted


def test_rollback_returns_to_previously_served_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = _add(reg, 0.05)
    reg.gate(v1)
    rejected = _add(reg, 0.01)
    reg.gate(rejected)
    v3 = _add(reg, 0.09)
    reg.gate(v3)
    assert reg.current() == v3
    assert reg.rollback() == v1  # not the rejected v0002
    assert reg.current() == v1
    with pytest.raises(RegistryError):
        reg.rollback()
    ptr = json.loads((tmp_path / "CURRENT").read_text())
    assert ptr == {"version": v1, "stack": [v1]}
    actions = [json.loads(x)["action"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert actions.count("rollback") == 1 and "keep" in actions


def test_promote_unknown_version_is_an_error(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError):
        reg.promote("v0042")
    assert reg.current() is None


@pytest.fixture()
def cli_settings(services_settings: Settings, redis_client, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The `crossrec` CLI in-process, pointed at the session Redis."""
    monkeypatch.setenv("CROSSREC_REDIS__URL", services_settings.redis.url)
    get_settings.cache_clear()
    try:
        yield services_settings
    finally:
        get_settings.cache_clear()


def test_models_cli_list_promote_rollback_move_registry_and_redis(tmp_path: Path, cli_settings: Settings, redis_client) -> None:
    reg = ModelRegistry(tmp_path / "r")
    v1, v2 = _add(reg, 0.1), _add(reg, 0.2)
    pointer = KeySchema(cli_settings.key_prefix).current_model()
    runner = CliRunner()
    args = ["--registry", str(reg.root)]
    assert runner.invoke(app, ["models", "promote", v1, *args]).exit_code == 0
    assert redis_client.get(pointer) == v1.encode()
    assert runner.invoke(app, ["models", "promote", v2, *args]).exit_code == 0
    assert reg.current() == v2 and redis_client.get(pointer) == v2.encode()
    out = runner.invoke(app, ["models", "list", *args])
    assert out.exit_code == 0 and v1 in out.output and "0.2000" in out.output
    res = runner.invoke(app, ["models", "rollback", *args])
    assert res.exit_code == 0 and reg.current() == v1
    assert redis_client.get(pointer) == v1.encode()  # serving follows the rollback
    assert runner.invoke(app, ["models", "promote", "v9999", *args]).exit_code == 1
    assert redis_client.get(pointer) == v1.encode()


def test_models_cli_changes_nothing_when_redis_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(tmp_path / "r")
    v1, v2 = _add(reg, 0.1), _add(reg, 0.2)
    reg.promote(v1)
    reg.promote(v2)
    monkeypatch.setenv("CROSSREC_REDIS__URL", f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(app, ["models", "rollback", "--registry", str(reg.root)])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 1 and "unreachable" in res.output and "nothing was changed" in res.output
    assert reg.current() == v2


def test_concurrent_promotions_lose_no_stack_entry(tmp_path: Path) -> None:
    """Eight processes promote ten versions each at the same moment; the lock keeps every
    read-modify-write of CURRENT whole, so all 80 versions end up on the promotion stack."""
    reg = ModelRegistry(tmp_path)
    versions = [_add(reg, 0.1) for _ in range(80)]
    script = (
        "import sys, time; from crossrec.registry import ModelRegistry; "
        "reg = ModelRegistry(sys.argv[1]); time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "for v in sys.argv[3:]: reg.promote(v)"
    )
    start = time.time() + 1.5
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(start), *versions[k::8]],
                         env={**os.environ, "PYTHONPATH": str(REPO)})
        for k in range(8)
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0
    stack = json.loads((tmp_path / "CURRENT").read_text())["stack"]
    assert sorted(stack) == versions  # without the lock, concurrent writers drop each other's entries
