"""Tonight's candidates: train them with `crossrec adapt`, or reuse last night's when nothing changed.

Why the reuse: a warm night (no new events, no changed item text) would otherwise retrain the same
strategies on the same data with the same seed and get the same model, the most expensive step
of the pipeline done twice. The check is exact: the content fingerprint of the training data
(events, splits and embeddings, as `crossrec adapt` computes it) and the training command must
both equal those of an earlier nightly run whose model is in the registry. The reused version is
recorded in the run's ``candidates.json``; the branch then treats it as tonight's candidate.

When a model is being served, the candidate and that current model are then both scored on
today's validation users (``rescore.json``, :mod:`crossrec.nightly.rescore`): the branch compares
them on today's data, not against the number the current model got on its own night.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossrec.nightly.state import nightly_root, nightly_run_key, read_json, run_dir, write_json
from crossrec.nightly.strategy import nightly_candidates
from crossrec.settings import Settings

if TYPE_CHECKING:
    from crossrec.registry import ModelRegistry


def adapt_argv(settings: Settings, ds: str) -> list[str]:
    """The `crossrec adapt` call of tonight: the candidates, no curve, no promotion, the run key."""
    crossrec = str(Path(sys.executable).with_name("crossrec"))
    return [
        crossrec, "adapt", "--strategies", ",".join(nightly_candidates(settings)),
        "--fractions", "", "--fraction-strategies", "", "--no-promote",
        "--run-key", nightly_run_key(ds), "--output", str(run_dir(settings, ds) / "adapt"),
        "--threads", str(settings.nightly.train_threads), "--pretrain-epochs", str(settings.nightly.pretrain_epochs),
        *(() if settings.nightly.diagnose else ("--no-diagnose",)),
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


def todays_data(settings: Settings):  # type: ignore[no-untyped-def]
    """Tonight's training data as `crossrec adapt` loads it (same function, so the same fingerprint)."""
    from crossrec.adaptation.data import load_adapt_data

    split = Path(settings.data_dir) / "users_split.json"
    return load_adapt_data(Path(settings.work_dir), settings.encoder, settings.source_domain,
                           settings.target_domain, split if split.is_file() else None)


def earlier_runs(settings: Settings, ds: str, config: list[str]) -> list[tuple[Path, dict[str, Any]]]:
    """Earlier nightly runs (newest first) whose candidate was trained with ``config``: each run's
    folder and its ``candidates.json`` record."""
    runs = nightly_root(settings) / "runs"
    folders = sorted((p for p in runs.iterdir() if p.is_dir() and p.name != ds), reverse=True) if runs.is_dir() else []
    return [(f, r) for f in folders if (r := read_json(f / "candidates.json")) and r.get("config") == config and r.get("version")]


def reusable_run(registry: ModelRegistry, runs: list[tuple[Path, dict[str, Any]]], fingerprint: str | None) -> dict[str, Any] | None:
    """The newest of ``runs`` (see ``earlier_runs``) whose candidate was trained on data of ``fingerprint``, if any."""
    for folder, record in runs:
        try:
            manifest = registry.manifest(record["version"])
        except Exception:  # noqa: BLE001 - a version removed from the registry cannot be reused
            continue
        if manifest.get("data_fingerprint") == fingerprint:
            return {"ds": folder.name, "version": record["version"], "results": str(folder / "adapt" / "results.json")}
    return None


def train_candidates(settings: Settings, ds: str, say=print) -> int:
    """Train (or reuse) tonight's candidates; write ``candidates.json`` and, when a model is being
    served, ``rescore.json`` (candidate and current model on today's validation users); return the
    exit code.

    Today's data is loaded here only when something needs it: the reuse check (an earlier night
    trained with the same configuration) or the re-scoring (a current model exists). A first night
    needs neither, and `crossrec adapt` loads the data itself.
    """
    from crossrec.registry import ModelRegistry

    argv = adapt_argv(settings, ds)
    config = training_config(argv)
    folder = run_dir(settings, ds)
    registry = ModelRegistry(Path(settings.work_dir) / "registry")
    done = registry.find_run(nightly_run_key(ds))
    runs = earlier_runs(settings, ds, config) if done is None else []
    data = todays_data(settings) if (runs or registry.current() is not None) else None
    fingerprint = data.fingerprint if data is not None else None
    reuse = reusable_run(registry, runs, fingerprint) if runs else None
    if reuse is not None:
        say(f"training data ({fingerprint}) and configuration unchanged since {reuse['ds']}: "
            f"reusing its candidate {reuse['version']}, nothing trained")
        (folder / "adapt").mkdir(parents=True, exist_ok=True)
        previous = read_json(Path(reuse["results"]))
        if previous is not None:
            write_json(folder / "adapt" / "results.json", previous)
        write_json(folder / "candidates.json", {"config": config, "fingerprint": fingerprint,
                                                "version": reuse["version"], "reused_from": reuse["ds"]})
        return _rescore_against_current(settings, registry, ds, data, reuse["version"], say)
    say("running: " + " ".join(shlex.quote(a) for a in argv))
    code = subprocess.run(argv).returncode
    if code != 0:
        return code
    version = registry.find_run(nightly_run_key(ds))
    if fingerprint is None and version is not None:
        fingerprint = registry.manifest(version).get("data_fingerprint")
    write_json(folder / "candidates.json", {"config": config, "fingerprint": fingerprint,
                                            "version": version, "reused_from": None})
    return _rescore_against_current(settings, registry, ds, data, version, say)


def _rescore_against_current(settings: Settings, registry: ModelRegistry, ds: str, data, candidate: str | None, say) -> int:  # type: ignore[no-untyped-def]
    """Write ``rescore.json``: tonight's candidate and the current model on today's validation users
    (nothing when no model is served or the candidate already is the current one)."""
    from crossrec.nightly.rescore import rescore, summarise

    path = run_dir(settings, ds) / "rescore.json"
    current = registry.current()
    if data is None or candidate is None or current is None or current == candidate:
        path.unlink(missing_ok=True)
        return 0
    import torch

    torch.set_num_threads(settings.nightly.train_threads)
    record = rescore(data, registry, candidate, current)
    write_json(path, record)
    say(summarise(record))
    return 0
