"""Model registry: versioned artifact directories plus an atomically replaced current pointer.

Layout under ``{work_dir}/registry/``::

    v0001/            one trained model (weights.pt, config.json, items.parquet, item_vectors.npy,
    v0002/            metrics.json, manifest.json with encoder + data fingerprint)
    CURRENT           JSON {"version": "v0002", "stack": ["v0001", "v0002"]} (the promotion stack)
    events.jsonl      append-only log of register / promote / keep / rollback decisions

Why a stack in the pointer: rollback must return to the version that was serving before, not
simply "the previous number" (a candidate that the gate rejected was never served). The pointer
is written to a temp file in the same directory and ``os.replace``d, so a reader (the streaming
consumer, the publisher) sees either the old or the new pointer, never a half-written one.

Writers (promote, rollback, the gate) hold an exclusive ``fcntl`` lock on ``.lock`` across the
whole read-modify-write of CURRENT: two promotions at once would otherwise both read the same
stack and one of them would be lost. ``on_change`` callbacks run inside that lock, so the Redis
pointer that serving follows (``crossrec models promote|rollback`` moves it) ends in the same
order as the registry's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

OnChange = Callable[[str], None]  # called with the new current version, inside the pointer lock

VERSION_RE = re.compile(r"^v(\d{4,})$")
GATE_METRIC = "NDCG@10"


class RegistryError(RuntimeError):
    pass


@dataclass
class VersionInfo:
    version: str
    path: Path
    created: str
    strategy: str | None
    encoder: str | None
    valid_metric: float | None
    test_metric: float | None
    fingerprint: str | None
    current: bool


@dataclass
class GateDecision:
    promoted: bool
    candidate: str
    current: str | None
    candidate_metric: float
    current_metric: float | None
    margin: float
    reason: str


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # lock depth per thread: gate() -> promote() re-enters

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock on the pointer across processes (flock) and threads; re-entrant."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------------ versions
    def versions(self) -> list[str]:
        names = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(names, key=lambda n: int(VERSION_RE.match(n).group(1)))  # type: ignore[union-attr]

    def path(self, version: str) -> Path:
        p = self.root / version
        if not VERSION_RE.match(version) or not p.is_dir():
            raise RegistryError(f"unknown model version {version!r}; known: {self.versions()}")
        return p

    def register(self, write: Callable[[Path], None], manifest: dict) -> str:
        """Create the next version: ``write(tmpdir)`` fills it, then one rename publishes it."""
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            write(tmp)
            for _ in range(100):
                existing = self.versions()
                nxt = int(existing[-1][1:]) + 1 if existing else 1
                version = f"v{nxt:04d}"
                manifest = {**manifest, "version": version, "created": manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
                try:
                    os.rename(tmp, self.root / version)  # fails if a concurrent writer took the name
                except OSError:
                    continue
                self._log("register", version)
                return version
            raise RegistryError("could not allocate a version name")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def manifest(self, version: str) -> dict:
        f = self.path(version) / "manifest.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    # ------------------------------------------------------------------ pointer
    def _pointer(self) -> dict:
        f = self.root / "CURRENT"
        if not f.is_file():
            return {"version": None, "stack": []}
        return json.loads(f.read_text())

    def current(self) -> str | None:
        return self._pointer().get("version")

    def _log(self, action: str, version: str | None, **extra: object) -> None:
        rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action, "version": version, **extra}
        with open(self.root / "events.jsonl", "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    def promote(self, version: str, reason: str = "manual", on_change: OnChange | None = None) -> None:
        """Make ``version`` current; ``on_change(version)`` runs before the lock is released."""
        self.path(version)
        with self.locked():
            ptr = self._pointer()
            stack = [v for v in ptr.get("stack", []) if v != version] + [version]
            _atomic_write(self.root / "CURRENT", json.dumps({"version": version, "stack": stack}))
            self._log("promote", version, reason=reason)
            if on_change is not None:
                on_change(version)

    def rollback(self, on_change: OnChange | None = None) -> str:
        """Return to the version served before the current one; error if there is none."""
        with self.locked():
            ptr = self._pointer()
            stack = list(ptr.get("stack", []))
            if len(stack) < 2:
                raise RegistryError("nothing to roll back to (fewer than two promoted versions)")
            gone = stack.pop()
            prev = stack[-1]
            _atomic_write(self.root / "CURRENT", json.dumps({"version": prev, "stack": stack}))
            self._log("rollback", prev, from_version=gone)
            if on_change is not None:
                on_change(prev)
            return prev

    # ------------------------------------------------------------------ gate
    def gate(self, candidate: str, margin: float = 0.0, current_metric: float | None = None) -> GateDecision:
        """Promote ``candidate`` only if its validation NDCG@10 beats the current one by > ``margin``.

        ``current_metric`` lets the caller pass the current model re-scored on today's validation
        data (fairer than its stored number when the data moved); otherwise the stored one is used.
        """
        with self.locked():  # the decision and the promotion see the same current version
            cand_metric = self.manifest(candidate).get("valid_metrics", {}).get(GATE_METRIC)
            if cand_metric is None:
                raise RegistryError(f"{candidate} has no validation {GATE_METRIC}")
            cur = self.current()
            if cur is None:
                self.promote(candidate, reason="no current model")
                return GateDecision(True, candidate, None, cand_metric, None, margin, "no current model: promoted")
            if current_metric is None:
                current_metric = self.manifest(cur).get("valid_metrics", {}).get(GATE_METRIC)
            if current_metric is None or cand_metric > current_metric + margin:
                why = f"validation {GATE_METRIC} {cand_metric:.4f} > current {cur} {current_metric if current_metric is not None else float('nan'):.4f} + margin {margin}"
                self.promote(candidate, reason=why)
                return GateDecision(True, candidate, cur, cand_metric, current_metric, margin, "promoted: " + why)
            why = f"validation {GATE_METRIC} {cand_metric:.4f} does not beat current {cur} {current_metric:.4f} + margin {margin}; keeping {cur}"
            self._log("keep", cur, candidate=candidate, reason=why)
            return GateDecision(False, candidate, cur, cand_metric, current_metric, margin, why)

    # ------------------------------------------------------------------ listing
    def list(self) -> list[VersionInfo]:
        cur = self.current()
        out = []
        for v in self.versions():
            m = self.manifest(v)
            out.append(
                VersionInfo(
                    version=v,
                    path=self.root / v,
                    created=m.get("created", ""),
                    strategy=m.get("strategy"),
                    encoder=m.get("encoder"),
                    valid_metric=m.get("valid_metrics", {}).get(GATE_METRIC),
                    test_metric=m.get("test_metrics", {}).get(GATE_METRIC),
                    fingerprint=m.get("data_fingerprint"),
                    current=v == cur,
                )
            )
        return out

    # ------------------------------------------------------------------ runs
    def find_run(self, run_key: str) -> str | None:
        """The version a run (e.g. one logical date of the nightly DAG) registered, if any.

        Why: a retried or re-run task must not register a second model for the same run.
        """
        for v in reversed(self.versions()):
            if self.manifest(v).get("run_key") == run_key:
                return v
        return None


def registry_for(work_dir: Path) -> ModelRegistry:
    return ModelRegistry(Path(work_dir) / "registry")


__all__ = ["ModelRegistry", "GateDecision", "VersionInfo", "RegistryError", "registry_for", "asdict"]
