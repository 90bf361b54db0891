"""Tonight's candidates: train them with `crossrec adapt`, or reuse last night's when nothing changed.

Why the reuse: a warm night (no new events, no changed item text) would otherwise retrain the same
strategies on the same data with the same seed and get the same model, the most expensive step
of the pipeline done twice. The check is exact: the content fingerprint of the training data
(events, splits and embeddings, as `crossrec adapt` computes it) and the training command must
both equal those of an earlier nightly run whose model is in the registry. The reused version is
recorded in the run's ``candidates.json``; the branch then treats it as tonight's candidate.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from crossrec.nightly.state import nightly_root, nightly_run_key, read_json, run_dir, write_json
from crossrec.nightly.strategy import nightly_candidates
from crossrec.settings import Settings


def adapt_argv(settings: Settings, ds: str) -> list[str]:
    """The `crossrec adapt` call of tonight: the candidates, no curve, no promotion, the run key."""
    crossrec = str(Path(sys.executable).with_name("crossrec"))
    return [
        crossrec, "adapt", "--strategies", ",".join(nightly_candidates(settings)),
        "--fractions", "", "--fraction-strategies", "", "--no-promote",
        "--run-key", nightly_run_key(ds), "--output", str(run_dir(settings, ds) / "adapt"),
        *settings.nightly.adapt_args,
    ]


def training_config(argv: list[str]) -> list[str]:
    """The parts of the adapt call that decide the model (not the date-specific key and output)."""
    out, skip = [], False
    for word in argv[1:]:
        if skip:
            skip = False
            continue
        if word in ("--run-key", "--output"):
            skip = True
            continue
        out.append(word)
    return out


def data_fingerprint(settings: Settings) -> str:
    """The fingerprint `crossrec adapt` will record for tonight's data (same function)."""
    from crossrec.adaptation.data import load_adapt_data

    split = Path(settings.data_dir) / "users_split.json"
    data = load_adapt_data(Path(settings.work_dir), settings.encoder, settings.source_domain,
                           settings.target_domain, split if split.is_file() else None)
    return data.fingerprint


def reusable_run(settings: Settings, ds: str, fingerprint: str, config: list[str]) -> dict[str, Any] | None:
    """The newest earlier nightly run trained with ``config`` on data of ``fingerprint``, if any."""
    from crossrec.registry import ModelRegistry

    registry = ModelRegistry(Path(settings.work_dir) / "registry")
    runs = nightly_root(settings) / "runs"
    for folder in sorted((p for p in runs.iterdir() if p.is_dir() and p.name != ds), reverse=True) if runs.is_dir() else []:
        record = read_json(folder / "candidates.json")
        if not record or record.get("config") != config or not record.get("version"):
            continue
        try:
            manifest = registry.manifest(record["version"])
        except Exception:  # noqa: BLE001 - a version removed from the registry cannot be reused
            continue
        if manifest.get("data_fingerprint") == fingerprint:
            return {"ds": folder.name, "version": record["version"], "results": str(folder / "adapt" / "results.json")}
    return None


def train_candidates(settings: Settings, ds: str, say=print) -> int:
    """Train (or reuse) tonight's candidates; write ``candidates.json``; return the exit code."""
    from crossrec.registry import ModelRegistry

    argv = adapt_argv(settings, ds)
    config = training_config(argv)
    folder = run_dir(settings, ds)
    fingerprint = data_fingerprint(settings)
    registry = ModelRegistry(Path(settings.work_dir) / "registry")
    done = registry.find_run(nightly_run_key(ds))
    reuse = None if done else reusable_run(settings, ds, fingerprint, config)
    if reuse is not None:
        say(f"training data ({fingerprint}) and configuration unchanged since {reuse['ds']}: "
            f"reusing its candidate {reuse['version']}, nothing trained")
        (folder / "adapt").mkdir(parents=True, exist_ok=True)
        previous = read_json(Path(reuse["results"]))
        if previous is not None:
            write_json(folder / "adapt" / "results.json", previous)
        write_json(folder / "candidates.json", {"config": config, "fingerprint": fingerprint,
                                                "version": reuse["version"], "reused_from": reuse["ds"]})
        return 0
    say("running: " + " ".join(shlex.quote(a) for a in argv))
    code = subprocess.run(argv).returncode
    if code == 0:
        write_json(folder / "candidates.json", {"config": config, "fingerprint": fingerprint,
                                                "version": registry.find_run(nightly_run_key(ds)), "reused_from": None})
    return code
