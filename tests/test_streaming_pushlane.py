"""The consumer's Feast push lane: pushes off the main loop, coalesced, and a batch committed only
once a push carrying its users returned.

The lane's logic is tested with an in-process push function; the commit rule with the real
consumer on a real broker and Redis, whose push is held back until the test releases it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import redis
from streaming_support import CatalogueScorer, catalogue_settings, committed_total, make_event, produce, read_recs, wait_for

from crossrec.settings import Settings
from crossrec.streaming.consumer import RecsConsumer
from crossrec.streaming.faults import PushWorkerLost
from crossrec.streaming.pushlane import PushLane


class _Pushes:
    """Records what each push carried; ``gate`` holds a push until set; ``fail`` fails the next one."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = 0

    def __call__(self, histories) -> None:
        self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise redis.ConnectionError("online store down")
        self.calls.append(dict(histories))


def _thread_lane(settings: Settings) -> Settings:
    """The lane's thread mode (the default, stated here because the test replaces its push
    function; the child process is tested in test_streaming_pushproc.py)."""
    return settings.model_copy(update={"streaming": settings.streaming.model_copy(update={"push_process": False})})


def test_batches_queued_during_a_push_are_coalesced_into_the_next_one_newest_first() -> None:
    pushes = _Pushes()
    lane = PushLane(pushes)
    try:
        pushes.gate.clear()
        t1 = lane.add({"u1": ["h1"]})
        lane.poll()  # starts push 1, which waits at the gate
        t2 = lane.add({"u1": ["h1", "h2"], "u2": ["x"]})
        t3 = lane.add({"u2": ["x", "y"]})
        lane.poll()
        assert lane.done < t1  # nothing returned yet: no batch may be committed
        pushes.gate.set()
        lane.wait(t3, timeout_s=10)
        assert lane.done == t3 and t1 < t2 < t3
        # two pushes for three batches, in order, each user with its newest history
        assert pushes.calls == [{"u1": ["h1"]}, {"u1": ["h1", "h2"], "u2": ["x", "y"]}]
        assert lane.pushes == 2
    finally:
        lane.close()


def test_a_push_failing_on_a_dependency_is_redone_and_its_batches_stay_undone_until_then() -> None:
    pushes = _Pushes()
    lane = PushLane(pushes)
    try:
        pushes.fail = 1
        pushes.gate.clear()
        t1 = lane.add({"u1": ["old"], "u3": ["z"]})
        lane.poll()
        t2 = lane.add({"u1": ["new"]})  # queued while the failing push runs
        pushes.gate.set()
        with pytest.raises(redis.ConnectionError):
            lane.wait(t1, timeout_s=10)
        assert lane.done < t1
        lane.wait(t2, timeout_s=10)  # the retry loop calls again
        assert lane.done == t2
        # the failed push's users went into the next one; u1's newer history won
        assert pushes.calls == [{"u1": ["new"], "u3": ["z"]}]
    finally:
        lane.close()


def test_through_a_submit_hook_a_lost_push_is_queued_again_and_acknowledged_only_by_a_later_one() -> None:
    """The child-process mode's contract: the future is the ack; a lost child is a dependency error."""
    futures: list[tuple[dict, Future]] = []

    def submit(histories):
        future: Future = Future()
        futures.append((dict(histories), future))
        return future

    lane = PushLane(submit=submit)
    t1 = lane.add({"u1": ["old"], "u2": ["x"]})
    lane.poll()
    t2 = lane.add({"u1": ["new"]})
    lane.poll()
    assert len(futures) == 1 and lane.done < t1  # submitted, not acknowledged
    futures[0][1].set_exception(PushWorkerLost("child killed"))
    with pytest.raises(PushWorkerLost):
        lane.poll()
    assert lane.done < t1
    lane.poll()  # the retry loop calls again: one push of both batches' users, newest history
    assert futures[1][0] == {"u1": ["new"], "u2": ["x"]} and lane.done < t1
    futures[1][1].set_result(0.01)
    lane.poll()
    assert lane.done == t2 and lane.pushes == 1


def test_a_wait_that_times_out_says_so() -> None:
    pushes = _Pushes()
    lane = PushLane(pushes)
    try:
        pushes.gate.clear()
        ticket = lane.add({"u1": ["h"]})
        with pytest.raises(TimeoutError):
            lane.wait(ticket, timeout_s=0.2)
        pushes.gate.set()
        lane.wait(ticket, timeout_s=10)
    finally:
        lane.close()


@pytest.mark.integration
def test_the_consumer_commits_a_batch_only_after_its_push_returned(services_settings: Settings, redis_client, tmp_path: Path) -> None:
    """Lists are written at once; the offsets wait for the (held) push; nothing is lost meanwhile."""
    settings = _thread_lane(catalogue_settings(services_settings.model_copy(update={"work_dir": tmp_path / "work"}), redis_client))
    consumer = RecsConsumer(settings, lambda: CatalogueScorer("m1", ["o1", "o2", "o3", "o4"]), poll_timeout_ms=100)
    pushes = _Pushes()
    assert consumer._push_lane is not None
    consumer._push_lane._push = pushes  # the held-back push stands in for Feast's; the rest is real
    pushes.gate.clear()
    produce(settings, settings.kafka.events_topic, [make_event(f"u{n}", "office", "o1", 1_600_000_000_000 + n) for n in range(5)])
    runner = threading.Thread(target=consumer.run, kwargs={"max_seconds": 40, "max_events": 5})
    runner.start()
    try:
        wait_for(lambda: all(read_recs(redis_client, settings, f"u{n}") for n in range(5)), 30, "lists written before the push returned")
        assert committed_total(settings)[0] == 0  # the push has not returned: nothing committed
        pushes.gate.set()
        runner.join(30)
        assert not runner.is_alive()
        assert committed_total(settings)[0] == 5
        assert {u for call in pushes.calls for u in call} == {f"u{n}" for n in range(5)}
        assert consumer.stats.consumed == 5 and consumer.stats.pushes >= 1
    finally:
        pushes.gate.set()
        consumer.stop()
        runner.join(30)
        consumer.close()


@pytest.mark.integration
def test_a_push_failing_on_redis_holds_the_commit_until_a_later_push_succeeds(
    services_settings: Settings, redis_client, tmp_path: Path
) -> None:
    settings = _thread_lane(catalogue_settings(services_settings.model_copy(update={"work_dir": tmp_path / "work"}), redis_client))
    consumer = RecsConsumer(settings, lambda: CatalogueScorer("m1", ["o1", "o2", "o3", "o4"]), poll_timeout_ms=100)
    pushes = _Pushes()
    pushes.fail = 2
    assert consumer._push_lane is not None
    consumer._push_lane._push = pushes
    produce(settings, settings.kafka.events_topic, [make_event(f"u{n}", "office", "o2", 1_600_000_000_000 + n) for n in range(4)])
    try:
        stats = consumer.run(max_events=4, max_seconds=40)
    finally:
        consumer.close()
    assert stats.dependency_errors >= 2 and stats.consumed == 4
    assert committed_total(settings)[0] == 4
    assert {u for call in pushes.calls for u in call} == {f"u{n}" for n in range(4)}  # nobody's push lost


def test_pushes_start_at_most_once_per_interval_unless_waited_for() -> None:
    pushes = _Pushes()
    lane = PushLane(pushes, min_interval_s=30.0)
    try:
        t1 = lane.add({"u1": ["a"]})
        lane.poll()  # the first push starts at once
        lane.wait(t1, timeout_s=10)
        t2 = lane.add({"u2": ["b"]})
        lane.poll()
        t3 = lane.add({"u3": ["c"]})
        lane.poll()
        assert len(pushes.calls) == 1 and lane.done == t1  # within the interval: held and merged
        lane.wait(t3, timeout_s=10)  # a wait (idle, exit, too much uncommitted) starts it at once
        assert pushes.calls == [{"u1": ["a"]}, {"u2": ["b"], "u3": ["c"]}] and lane.done == t3 > t2
    finally:
        lane.close()
