"""The fixed, documented set of quarantine reasons.

Every rejected row carries exactly one reason: the *first* check it fails, in the order below.
A fixed vocabulary (rather than free-text error messages) is what makes the summary's
``rejected_by_reason`` comparable between runs and lets tests assert exact counts.

Events, in check order:
    malformed_json        the line is not one JSON object (JSON-lines inputs only)
    missing_field:<name>  a required field is absent or empty after normalisation
                          (<name> in user_id, domain, item_id, event_type, ts, checked in that order)
    bad_user_id           the user id starts with ``}``: its Redis Cluster hash tag ``{U}`` would be
                          empty (``crossrec.keys.user_id_problem``), so its keys could not share a slot
    bad_timestamp         ``ts`` is present but neither ISO 8601 nor epoch ms, or outside
                          [1990-01-01, 2100-01-01) UTC (catches epoch *seconds* given as ms)
    bad_event_type        not one of view, click, cart, purchase, review, rating
    bad_rating            ``rating`` present but not a finite number in [0, 5]
    unknown_domain        domain neither in the item catalogue nor in ``settings.domains``
    unknown_item          (domain, item_id) not in the cleaned item catalogue
    exact_duplicate       same event_id as an earlier row (given, or derived from the content)
    near_duplicate        same user, domain, item and event type within the near-dup window of
                          the previous such event
    kcore                 removed by the optional per-domain k-core filter

Items, in check order:
    malformed_json, missing_field:<name> (item_id, domain, title), duplicate_item

Both:
    unreadable_file       a whole input file could not be read (corrupt gzip or parquet); it
                          counts as one input row because its rows cannot be counted
"""

from __future__ import annotations

MALFORMED_JSON = "malformed_json"
BAD_USER_ID = "bad_user_id"
BAD_TIMESTAMP = "bad_timestamp"
BAD_EVENT_TYPE = "bad_event_type"
BAD_RATING = "bad_rating"
UNKNOWN_DOMAIN = "unknown_domain"
UNKNOWN_ITEM = "unknown_item"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
KCORE = "kcore"
DUPLICATE_ITEM = "duplicate_item"
UNREADABLE_FILE = "unreadable_file"

EVENT_REQUIRED_FIELDS: tuple[str, ...] = ("user_id", "domain", "item_id", "event_type", "ts")
ITEM_REQUIRED_FIELDS: tuple[str, ...] = ("item_id", "domain", "title")


def missing(field: str) -> str:
    """The reason for an absent or empty required field."""
    return f"missing_field:{field}"


EVENT_REASONS: tuple[str, ...] = (
    MALFORMED_JSON,
    *(missing(f) for f in EVENT_REQUIRED_FIELDS),
    BAD_USER_ID,
    BAD_TIMESTAMP,
    BAD_EVENT_TYPE,
    BAD_RATING,
    UNKNOWN_DOMAIN,
    UNKNOWN_ITEM,
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    KCORE,
    UNREADABLE_FILE,
)
ITEM_REASONS: tuple[str, ...] = (
    MALFORMED_JSON,
    *(missing(f) for f in ITEM_REQUIRED_FIELDS),
    DUPLICATE_ITEM,
    UNREADABLE_FILE,
)
ALL_REASONS: frozenset[str] = frozenset(EVENT_REASONS) | frozenset(ITEM_REASONS)
