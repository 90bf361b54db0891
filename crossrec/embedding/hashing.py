"""Content hash of an item's text: what decides whether an item must be re-embedded.

sha256 of the UTF-8 bytes, lower-case hex: the same value as Spark's ``sha2(text, 256)`` (which
earlier versions of the job used, so their outputs stay valid), computed here by the job's
driver-side plan, the streaming consumer and the tests alike.
"""

from __future__ import annotations

import hashlib


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
