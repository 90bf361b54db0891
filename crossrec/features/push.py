"""The stream's fresh user features, pushed into Feast's online store (``user_features_push``).

Why here and not in the nightly table only: the nightly ``user_features`` snapshot is a day old
by the time it is served; the consumer already holds every touched user's current history (it
read it to score them), so it turns those histories into ``user_features`` rows and pushes them
in the same batch in which it writes the users' lists. The API's ``/users/{user_id}/features``
and ``RecClient.user_features`` read the online store, so they see the stream's values at once.

The rows have the shape the nightly job writes (:func:`crossrec.features.tables.user_features`):

- ``recent_items`` / ``recent_domains``: the ``N_RECENT`` latest events, latest first (by event
  time; the nightly's default ``--n-recent``);
- ``n_events``: the length of the user's history *as the stream knows it*, i.e. the Redis
  history, which is capped at ``crossrec.keys.HISTORY_CAP`` (50) entries; the nightly counts every event, so
  for a long-lived user the pushed count is the cap, not the lifetime count;
- ``last_event_ts_ms``: the latest event time in that history;
- ``user_vector``: an **empty list**. The nightly computes it from the text-encoder embeddings of
  the recent items; the consumer holds the model's own item vectors, not those, and fetching
  them would cost a round trip per batch, so the stream pushes none (the nightly materialisation
  fills it again);
- ``event_timestamp``: the push time.

One write per push, by default straight to the online store's ``online_write_batch``
(:class:`crossrec.features.online_write.DirectOnlineWriter`, without Feast's pandas conversion);
where that writer cannot express the registry's views, or fails on something other than Redis
(a Redis error is the push's, as with ``store.push``), ``store.push(..., to=PushMode.ONLINE)``
writes the same rows (one warning line with the reason). The Feast store is opened once per
consumer, by :meth:`FeaturePusher.open` before the first poll or else by the first push after the
registry appears (importing Feast costs seconds; the consumer module never imports it). If the Feast registry
does not exist yet (``crossrec features apply`` never ran), the push is skipped: one warning line,
and the ``skipped_no_registry`` count goes up every batch, so the stream never stops for it. A
Redis error during the push propagates (a dependency error: the consumer retries the batch and
commits nothing past it); any other failure of the push (for example a registry without the push
source) is logged and counted as ``failed`` and the batch goes on: the lists are the product,
the features are a view of them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from crossrec.keys import HistoryEvent
from crossrec.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

    from crossrec.features.online_write import DirectOnlineWriter

log = logging.getLogger(__name__)

PUSH_SOURCE = "user_features_push"  # feature_repo/definitions.py USER_PUSH_SOURCE
N_RECENT = 20  # the nightly table's default (`crossrec features build --n-recent`)
COLUMNS = ["user_id", "recent_items", "recent_domains", "n_events", "last_event_ts_ms", "user_vector", "event_timestamp"]

# Outcomes of one batch's push (counted by the pusher and by the consumer's metric).
PUSHED = "pushed"
SKIPPED_NO_REGISTRY = "skipped_no_registry"
FAILED = "failed"


def user_feature_records(
    histories: Mapping[str, Sequence[HistoryEvent]], now: pd.Timestamp | None = None, n_recent: int = N_RECENT
) -> list[dict[str, Any]]:
    """One ``user_features`` row (a dict of :data:`COLUMNS`) per user with a non-empty history
    (histories oldest first)."""
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    rows = []
    for user, history in histories.items():
        if not history:
            continue
        # Latest first by event time; ties keep the history's order (newest applied first).
        latest = sorted(reversed(history), key=lambda h: h.ts, reverse=True)[:n_recent]
        rows.append({
            "user_id": user,
            "recent_items": [h.item_id for h in latest],
            "recent_domains": [h.domain for h in latest],
            "n_events": len(history),
            "last_event_ts_ms": int(round(max(h.ts for h in history) * 1000)),
            "user_vector": [],
            "event_timestamp": now,
        })
    return rows


def user_feature_rows(
    histories: Mapping[str, Sequence[HistoryEvent]], now: pd.Timestamp | None = None, n_recent: int = N_RECENT
) -> pd.DataFrame:
    """:func:`user_feature_records` as the DataFrame ``store.push`` takes."""
    return pd.DataFrame(user_feature_records(histories, now, n_recent), columns=COLUMNS)


class FeaturePusher:
    """Pushes a batch's touched users' features; owns the consumer's lazily opened Feast store."""

    def __init__(self, settings: Settings, on_outcome: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_outcome = on_outcome
        self.counts: Counter[str] = Counter()
        self._store: FeatureStore | None = None
        self._direct: DirectOnlineWriter | None = None  # None: every push goes through store.push
        self._warned: set[str] = set()

    def registry_exists(self) -> bool:
        from crossrec.features.store import feast_dir

        return (feast_dir(self.settings) / "registry.db").exists()

    def open(self) -> bool:
        """Open the Feast store if its registry exists (seconds: Feast's import); True if open.

        The consumer calls this once before its first poll, so the one-off cost does not land in
        a batch; a registry that appears later is opened by the first push after it.
        """
        if self._store is None and self.registry_exists():
            from crossrec.features.online_write import DirectOnlineWriter
            from crossrec.features.store import feast_dir, feature_store

            started = time.perf_counter()
            self._store = feature_store(self.settings)
            if self.settings.streaming.push_direct:
                self._direct = DirectOnlineWriter(self._store, PUSH_SOURCE, feast_dir(self.settings) / "registry.db")
            log.info("Feast store opened for the feature push in %.1fs", time.perf_counter() - started)
        return self._store is not None

    def push(self, histories: Mapping[str, Sequence[HistoryEvent]]) -> str | None:
        """Push the users' rows (one write); returns the outcome, None when there was nothing."""
        records = user_feature_records(histories)
        if not records:
            return None
        if not self.open():
            return self.skip_no_registry()
        from crossrec.streaming.faults import DEPENDENCY_ERRORS

        try:
            if not self._write_direct(records):
                self._push_through_store(records)
        except DEPENDENCY_ERRORS:
            raise  # Redis is down: the consumer retries the whole batch
        except Exception as exc:  # noqa: BLE001 - a registry/schema problem: the lists still go out
            self._warn_once(f"{FAILED}:{type(exc).__name__}", f"feature push failed ({type(exc).__name__}: {exc}); counting failed batches")
            return self.count(FAILED)
        return self.count(PUSHED)

    def _write_direct(self, records: list[dict[str, Any]]) -> bool:
        """Write through the direct writer; False where it cannot (then ``store.push`` writes)."""
        from redis.exceptions import RedisError

        from crossrec.features.online_write import NotDirectlyWritable
        from crossrec.streaming.faults import DEPENDENCY_ERRORS

        if self._direct is None:
            return False
        try:
            self._direct.write(records, records[0]["event_timestamp"].to_pydatetime())
        except NotDirectlyWritable as exc:
            self._warn_once(f"direct:{exc}", f"feature push through store.push: {exc}")
            return False
        except DEPENDENCY_ERRORS:
            raise  # Redis is down: the caller retries; the path stays
        except RedisError:
            raise  # Redis refused (e.g. out of memory): the caller counts it; the path stays
        except Exception as exc:  # noqa: BLE001 - the direct path broke (a Feast change?): stop using it
            log.warning("direct feature write failed (%s: %s); pushing through store.push from now on", type(exc).__name__, exc)
            self._direct = None
            return False
        return True

    def _push_through_store(self, records: list[dict[str, Any]]) -> None:
        from feast.data_source import PushMode

        assert self._store is not None
        self._store.push(PUSH_SOURCE, pd.DataFrame(records, columns=COLUMNS), to=PushMode.ONLINE)

    def skip_no_registry(self) -> str:
        """A push skipped because no Feast registry exists: one warning line, every skip counted."""
        self._warn_once(SKIPPED_NO_REGISTRY, "feature push skipped: no Feast registry (run `crossrec features apply`); counting skipped batches")
        return self.count(SKIPPED_NO_REGISTRY)

    def count(self, outcome: str) -> str:
        """Count a push's outcome (also those of pushes run in the push child process)."""
        self.counts[outcome] += 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)
