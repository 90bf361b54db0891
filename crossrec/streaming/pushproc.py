"""The consumer's Feast pushes in a child process (``streaming.push_process``).

Why a process and not the push lane's thread: a push is mostly Feast's and pandas' own Python
(about 100 ms for a few hundred users), and on a thread it holds the interpreter lock the
consumer's loop needs. Measured at 500 events/s, the loop's round trips to Redis and the broker
each waited for the lock while a push ran, which set the freshness p99. In a child process the
push runs beside the loop instead of between its steps.

What crosses the pipe is only the touched users' ids: the child reads their histories from Redis
itself (one pipeline) when its push starts, so a push carries a history at least as new as the
batches it covers, as the lane requires, and the loop pays no pickling of histories.

The child is a one-worker ``ProcessPoolExecutor`` (spawn, so it shares no threads or locks with
the consumer), started once before the first poll (:meth:`ChildPush.open`). Each submission's
future resolves to the push's run time, once the child returned, which is the lane's ack: a batch
is committed only after it. A child that dies (killed, out of memory) breaks the pool: its
in-flight push fails with :class:`PushWorkerLost`, a dependency error, so the lane puts its users
back into the next push, the consumer backs off and stays uncommitted, and the next submission
starts a new child. The child exits by itself when the consumer dies (it watches its parent), so a
``kill -9`` of the consumer leaves no orphan.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from crossrec.settings import Settings
from crossrec.streaming.faults import PushWorkerLost

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 300.0  # the child's start: Python, pandas and Feast imports (seconds, more on a busy host)


# -- the child's side ------------------------------------------------------------------------------
_child: dict[str, Any] = {}  # in the child: the Feast pusher, the history reader, the entry decoder


def _init_child(settings: Settings) -> None:
    """Runs once in a new child: ignore Ctrl-C (the consumer stops it), watch the parent, open Feast."""
    from crossrec.features.push import FeaturePusher
    from crossrec.publish import RecWriter
    from crossrec.streaming.history import HistoryApplier, HistoryDecoder

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[push child]: %(message)s")
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()
    writer = RecWriter.from_settings(settings)
    _child["history"] = HistoryApplier(
        writer.client, writer.schema, history_cap=writer.history_cap, dedupe_window=settings.streaming.dedupe_window
    )
    _child["decoder"] = HistoryDecoder()
    _child["pusher"] = pusher = FeaturePusher(settings)
    pusher.open()


def _exit_with(parent: Any) -> None:
    parent.join()  # returns when the consumer process is gone (kill -9 included)
    os._exit(0)


def _ready() -> int:
    return os.getpid()


def _push_users(users: list[str]) -> tuple[float, str | None]:
    """In the child: read the users' current histories (one round trip) and push them."""
    started = time.perf_counter()
    outcome = _child["pusher"].push(_child["history"].read_events(users, _child["decoder"]))
    return time.perf_counter() - started, outcome


# -- the consumer's side ---------------------------------------------------------------------------
class ChildPush:
    """The consumer's handle on the push child: submits pushes, counts outcomes, restarts a dead child.

    ``submit`` is the :class:`~crossrec.streaming.pushlane.PushLane`'s push hook; ``counts``
    holds the outcomes (``pushed``, ``skipped_no_registry``, ``failed``) the child returned,
    as :class:`~crossrec.features.push.FeaturePusher` counts them in-process.
    """

    def __init__(self, settings: Settings, on_outcome: Callable[[str], None] | None = None) -> None:
        from crossrec.features.push import FeaturePusher

        self.settings = settings
        # Counts the outcomes here; never opens Feast in the consumer's process.
        self.local = FeaturePusher(settings, on_outcome)
        self.restarts = 0  # children started after the first (a dead one replaced)
        self.pid: int | None = None  # the current child's process id, once it answered
        self._pool: ProcessPoolExecutor | None = None
        self._started = False

    @property
    def counts(self) -> Counter[str]:
        return self.local.counts

    def open(self, timeout_s: float = OPEN_TIMEOUT_S) -> None:
        """Start the child and wait until it has opened Feast (before the first poll, like
        :meth:`FeaturePusher.open`: the seconds of imports are not in a batch). A child that
        dies on the way raises :class:`PushWorkerLost` (the consumer retries with backoff).
        Without a Feast registry no child is started: the first push after it appears starts it."""
        if not self.local.registry_exists():
            return
        try:
            self._executor().submit(_ready).result(timeout=timeout_s)
        except BrokenProcessPool as exc:
            self._drop()
            raise PushWorkerLost(f"the Feast push child did not start ({exc})") from exc

    def submit(self, histories: Mapping[str, Any]) -> Future[float]:
        """Push these users (their histories are read by the child); resolves to the run time."""
        if self._pool is None and not self.local.registry_exists():
            skipped: Future[float] = Future()
            self.local.skip_no_registry()  # as in-process: warned once, counted, nothing to push to
            skipped.set_result(0.0)
            return skipped
        users = list(histories)
        try:
            inner = self._executor().submit(_push_users, users)
        except BrokenProcessPool:  # the child died between pushes: this push goes to a new one
            self._drop()
            inner = self._executor().submit(_push_users, users)
        outer: Future[float] = Future()
        inner.add_done_callback(lambda done: self._settle(done, outer))
        return outer

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # a push in flight finishes; the child exits
            self._pool = None

    def _settle(self, inner: Future[tuple[float, str | None]], outer: Future[float]) -> None:
        exc = PushWorkerLost("the push was cancelled with its dead child") if inner.cancelled() else inner.exception()
        if isinstance(exc, BrokenProcessPool):
            self.pid = None
            outer.set_exception(PushWorkerLost(f"the Feast push child died ({exc})"))
            return
        if exc is not None:
            outer.set_exception(exc)
            return
        seconds, outcome = inner.result()
        if outcome is not None:
            self.local.count(outcome)
        outer.set_result(seconds)

    def _executor(self) -> ProcessPoolExecutor:
        """The pool of the current child; a new one (a new child) after ``_drop``."""
        if self._pool is None:
            if self._started:
                self.restarts += 1
                log.warning("starting a new Feast push child (restart %d); its lost push is redone", self.restarts)
            self._started = True
            self._pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_child, initargs=(self.settings,)
            )
            self._pool.submit(_ready).add_done_callback(self._note_pid)  # first in the child's queue
        return self._pool

    def _note_pid(self, ready: Future[int]) -> None:
        if not ready.cancelled() and ready.exception() is None:
            self.pid = ready.result()

    def _drop(self) -> None:
        """Forget a broken pool (its child is dead); the next submission starts a new child."""
        old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
