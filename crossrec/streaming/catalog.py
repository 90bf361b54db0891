"""Catalogue updates that outlive the process: item text embeddings stored in Redis.

An item that arrives on the ``items`` topic is embedded once, by whichever consumer reads it, and
its *text embedding* (the encoder's output, before any model's adaptor) is stored in the hash
``{p}:itemvec:{encoder_version}`` under ``domain\\x1fitem_id``. Because the adaptor runs at load
time, the stored vector is valid for every model trained on that encoder's embeddings: each
consumer of the group, a restarted one, a hot-reloaded model and the nightly publisher all call
:func:`stream_items` after loading a model and so score the same catalogue.

The vectors are keyed by the encoder *version* (weights digest, pooling, dtype), so a new encoder
never mixes its space with an old one's vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import numpy as np
import redis

from crossrec.keys import KeySchema
from crossrec.settings import Settings

if TYPE_CHECKING:
    from crossrec.adaptation.inference import Recommender

log = logging.getLogger(__name__)

FIELD_SEP = "\x1f"  # cannot occur in a cleaned domain (no control characters survive cleaning)


def vector_field(domain: str, item_id: str) -> str:
    return f"{domain}{FIELD_SEP}{item_id}"


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").copy()


def queue_item_vectors(
    pipe: redis.client.Pipeline, schema: KeySchema, encoder_version: str, items: Iterable[tuple[str, str, np.ndarray]]
) -> None:
    """Queue the HSET of ``(domain, item_id, vector)`` rows on a pipeline the caller executes."""
    mapping = {vector_field(d, i): encode_vector(v) for d, i, v in items}
    if mapping:
        pipe.hset(schema.item_vectors(encoder_version), mapping=mapping)  # type: ignore[arg-type]


def read_item_vectors(client: redis.Redis, schema: KeySchema, encoder_version: str) -> list[tuple[str, str, np.ndarray]]:
    """Every stored ``(domain, item_id, vector)`` of one encoder version (HSCAN: no huge reply)."""
    out = []
    for field, raw in client.hscan_iter(schema.item_vectors(encoder_version), count=1000):
        name = field.decode() if isinstance(field, bytes) else cast(str, field)
        domain, _, item_id = name.partition(FIELD_SEP)
        out.append((domain, item_id, decode_vector(cast(bytes, raw))))
    return out


def model_encoder_version(settings: Settings, recommender: Recommender) -> str:
    """The version of the encoder whose embeddings ``recommender`` was trained on."""
    from crossrec.encoders.registry import encoder_version

    return encoder_version(recommender.config.get("encoder", settings.encoder))


def stream_items(settings: Settings, recommender: Recommender, client: redis.Redis | None = None) -> int:
    """Add every item the stream stored for this model's encoder to ``recommender``; returns how many.

    Items of a domain the model does not cover, or with a vector of the wrong size, are skipped
    with a warning (they cannot be scored by this model, and must not stop a model load).
    """
    from crossrec.redis_conn import redis_client

    version = model_encoder_version(settings, recommender)
    own = client is None
    client = client or redis_client(settings)
    try:
        rows = read_item_vectors(client, KeySchema(settings.key_prefix), version)
    finally:
        if own:
            client.close()
    added = skipped = 0
    domains = {recommender.source_domain, recommender.target_domain}
    for domain, item_id, vector in rows:
        if domain not in domains:
            skipped += 1
            continue
        try:
            recommender.add_item(domain, item_id, vector)
            added += 1
        except (ValueError, TypeError) as exc:  # wrong size, or an ID-only model
            skipped += 1
            log.warning("stream item %s/%s not added to model %s: %s", domain, item_id, recommender.version, exc)
    if rows:
        log.info("model %s: %d streamed items added, %d skipped", recommender.version, added, skipped)
    return added
