"""The item-embedding batch job: content hashing, incremental diff, Spark mapInArrow, parquet out.

``jobs/embed_items.py`` and ``crossrec embed`` are thin wrappers over :func:`embed_items`.
"""

from __future__ import annotations

from crossrec.embedding.hashing import text_hash
from crossrec.embedding.job import EMBEDDING_COLUMNS, EmbedStats, embed_items, output_dir_for

__all__ = ["EMBEDDING_COLUMNS", "EmbedStats", "embed_items", "output_dir_for", "text_hash"]
