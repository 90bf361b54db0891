"""`crossrec clean` and `jobs/clean_logs.py` argument handling that needs no Spark."""

from __future__ import annotations

from pathlib import Path

from conftest import make_settings
from typer.testing import CliRunner

from crossrec.cleaning.job import default_paths
from crossrec.cli import app


def test_missing_input_dir_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["clean", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.output.split())


def test_input_without_events_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text('{"domain": "art", "item_id": "a", "title": "t"}\n')
    (tmp_path / "notes.jsonl").write_text("{}\n")
    result = CliRunner().invoke(app, ["clean", "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no events files" in " ".join(result.output.split())


def test_defaults_come_from_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert default_paths(settings) == (tmp_path / "data", tmp_path / "work" / "clean")
