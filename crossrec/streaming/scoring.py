"""The consumer's scorer: the registry's current model, plus the encoder for new catalogue items."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np

from crossrec.adaptation.inference import Recommender, load_current
from crossrec.keys import HistoryEvent, RecItem
from crossrec.recommend import recommend_many
from crossrec.registry import RegistryError
from crossrec.settings import Settings
from crossrec.streaming.catalog import model_encoder_version, stream_items

log = logging.getLogger(__name__)


class ModelScorer:
    """Implements the consumer's ``Scorer`` over a loaded ``Recommender``."""

    def __init__(self, recommender: Recommender, settings: Settings) -> None:
        self.recommender = recommender
        self.version = recommender.version
        self.settings = settings
        self.encoder_name: str = recommender.config.get("encoder", settings.encoder)

    @cached_property
    def encoder_version(self) -> str:
        """Key of the stored item vectors (the weights digest is read once, not per item)."""
        return model_encoder_version(self.settings, self.recommender)

    def covers(self, domain: str) -> bool:
        return domain in (self.recommender.source_domain, self.recommender.target_domain)

    def recommend_many(self, histories: Mapping[str, Sequence[HistoryEvent]], k: int) -> dict[str, list[RecItem]]:
        """Every user of a batch in one matmul over the target catalogue (chunks of 512 users)."""
        return recommend_many(self.recommender, {u: [(h.domain, h.item_id) for h in hs] for u, hs in histories.items()}, k)

    def warm_up(self, max_users: int, k: int) -> None:
        """Score synthetic batches once, before the first real one (results dropped).

        Why: in a fresh process the first batches paid one-off costs: torch's first kernels for
        each new shape, the per-thread logits buffer grown to the batch's size, and first
        look-ups. Measured at 500 events/s, the second batch after start took 50 ms for 14
        events, against about 17 ms later. This runs a one-user batch (a user with several target
        items) and a batch of ``max_users`` (at least 5) over every route's kind of history: none,
        one and several target items, and source items.
        """
        rec = self.recommender
        target = [(rec.target_domain, item_id) for item_id in rec.target_items[:20]]
        source = rec.known_keys(rec.source_domain, 20)
        kinds = [target, [], target[:1], source, source + target[:2]]  # the first: the model's route
        events = [[HistoryEvent(d, i, "warm_up", 0.0) for d, i in kinds[u % len(kinds)]] for u in range(max(max_users, len(kinds)))]
        for n in (1, len(events)):
            self.recommend_many({f"warm-up-{u}": events[u] for u in range(n)}, k)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings of new items, one encoder call for the batch (model independent)."""
        from crossrec.encoders.registry import get_encoder

        vectors = np.asarray(get_encoder(self.encoder_name, threads=None).encode(list(texts)), dtype=np.float32)
        if vectors.shape[0] != len(texts) or not np.isfinite(vectors).all():
            raise ValueError("the encoder returned no finite vector for some text")
        return vectors

    def add_item(self, domain: str, item_id: str, vector: np.ndarray) -> None:
        """Make an item scorable now (its f_i comes from its text embedding alone)."""
        self.recommender.add_item(domain, item_id, vector)


def load_scorer(settings: Settings) -> ModelScorer | None:
    """The current model's scorer with every streamed item added, or None before any promotion."""
    try:
        recommender = load_current(settings)
    except RegistryError as exc:
        log.warning("no model to score with yet (%s); lists fall back to popular items", exc)
        return None
    stream_items(settings, recommender)
    return ModelScorer(recommender, settings)
