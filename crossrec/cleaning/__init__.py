"""Cleaning of raw multi-domain logs (the ``crossrec clean`` job).

``normalize`` and ``reasons`` are pure python (no Spark import) so that the streaming consumer
can validate single events with exactly the batch rules; the Spark modules (``readers``,
``spark_rules``, ``validate``, ``dedupe``, ``kcore``, ``split``, ``pipeline``) are imported
only by the job itself.
"""

from crossrec.cleaning.normalize import (
    normalize_text,
    parse_ts_to_ms,
    validate_event,
    validate_item,
)

__all__ = ["normalize_text", "parse_ts_to_ms", "validate_event", "validate_item"]
