"""The consumer's Feast pushes, off the main loop: one at a time, coalesced, acknowledged.

Why: a Feast ``store.push`` costs tens of ms per batch, mostly Feast's own Python and a fixed
part that does not shrink with the batch, so pushing inline both halves the consumer's rate and
adds its time to every later event's freshness. The lane runs pushes on one worker thread, or
through a submit hook (the child process of :mod:`crossrec.streaming.pushproc`), while the
consumer polls, scores and writes the next batches.

What it guarantees (the consumer commits a batch only once ``done`` covers its ticket):

- every batch's users are pushed, with a history at least as new as the batch's: batches that
  arrive while a push runs, or within ``min_interval_s`` of the last push's start, are merged
  into the next one (per user, the newest history wins). Why the interval: a push has a fixed
  cost of Feast's own Python (tens of ms), and that Python holds the interpreter lock the
  consumer's loop needs; at 500 events/s, pushing whenever the worker was free kept it busy
  half the time and slowed every batch. A ``wait`` starts a queued push at once;
- pushes run one at a time, in order, so a user's older features never overwrite newer ones;
- a push that raises a dependency error (Redis down, or the push child died) is not lost: its
  users go back into the next push (newer histories queued since win) and the error is re-raised
  to the caller, whose retry loop backs off; the tickets it carried are not done until a later push succeeds. Any other
  failure is the push function's to count (``FeaturePusher`` logs and counts it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from crossrec.streaming.faults import DEPENDENCY_ERRORS

Histories = Mapping[str, Sequence[Any]]


class PushLane:
    """Tickets: ``add`` returns one per batch; ``done`` is the newest ticket whose push returned.

    A push runs either as ``push(histories)`` on the lane's worker thread, or through ``submit``,
    which starts it elsewhere and returns a future of its run time in seconds (the push child of
    :mod:`crossrec.streaming.pushproc`); the future resolving is the push's acknowledgement.
    """

    def __init__(
        self,
        push: Callable[[Histories], object] | None = None,
        min_interval_s: float = 0.0,
        *,
        submit: Callable[[Histories], Future[float]] | None = None,
    ) -> None:
        if (push is None) == (submit is None):
            raise ValueError("give the lane either a push function or a submit hook")
        self._push = push
        self._submit = submit
        self.min_interval_s = min_interval_s
        self._started_at = float("-inf")  # monotonic time the last push started
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="feast-push") if submit is None else None
        self._queued: dict[str, Sequence[Any]] = {}
        self._queued_ticket = 0
        self._running: Future[float] | None = None
        self._running_ticket = 0
        self._running_users: dict[str, Sequence[Any]] = {}
        self._last_ticket = 0
        self.done = 0
        self.busy_s = 0.0  # run time of the pushes that returned (on the worker thread or in the child)
        self.pushes = 0

    def add(self, histories: Histories) -> int:
        """Queue a batch's users; returns its ticket (nothing to push: done at once)."""
        self._last_ticket += 1
        ticket = self._last_ticket
        if not histories:
            if self._running is None and not self._queued:
                self.done = ticket
            else:
                self._queued_ticket = ticket  # done once everything queued before it is
            return ticket
        self._queued.update(histories)
        self._queued_ticket = ticket
        return ticket

    def poll(self, force: bool = False) -> None:
        """Collect a finished push and start the next one (``min_interval_s`` after the last
        start, at once with ``force``); never waits."""
        running = self._running
        if running is not None and running.done():
            self._running = None
            try:
                self.busy_s += running.result()
                self.pushes += 1
                self.done = max(self.done, self._running_ticket)
            except DEPENDENCY_ERRORS:
                # Not pushed: its users go first into the next push; newer queued histories win.
                self._queued = {**self._running_users, **self._queued}
                self._queued_ticket = max(self._queued_ticket, self._running_ticket)
                raise
            finally:
                self._running_users = {}
        if self._running is None:
            if not self._queued:
                self.done = max(self.done, self._queued_ticket)  # only empty batches were queued
            elif force or time.monotonic() - self._started_at >= self.min_interval_s:
                started_at = time.monotonic()
                running = self._start(self._queued)  # if it raises, everything stays queued
                self._started_at = started_at
                self._running_users, self._queued = self._queued, {}
                self._running_ticket = self._queued_ticket
                self._running = running

    def wait(self, ticket: int, timeout_s: float | None = None) -> None:
        """Block until ``ticket`` is done (pushes started as needed); raises a push's dependency error."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.done < ticket:
            self.poll(force=True)
            if self.done >= ticket:
                return
            running = self._running
            if running is not None:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    running.exception(timeout=left)  # wait for it; poll() collects the outcome
                except TimeoutError:
                    raise TimeoutError(f"feature push not done within {timeout_s}s") from None

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)

    def _start(self, histories: Histories) -> Future[float]:
        if self._submit is not None:
            return self._submit(histories)
        assert self._worker is not None
        return self._worker.submit(self._timed, histories)

    def _timed(self, histories: Histories) -> float:
        assert self._push is not None
        started = time.perf_counter()
        self._push(histories)
        return time.perf_counter() - started
