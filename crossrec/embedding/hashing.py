"""Content hash of an item's text: what decides whether an item must be re-embedded.

The Spark job computes it with ``sha2(text, 256)``; this is the same function in Python (UTF-8
bytes, lower-case hex), for the streaming consumer and for tests that check the two agree.
"""

from __future__ import annotations

import hashlib


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
