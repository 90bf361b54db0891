"""The consumer's scorer: the registry's current model, plus the encoder for new catalogue items."""

from __future__ import annotations

import logging

from crossrec.adaptation.inference import Recommender, load_current
from crossrec.keys import HistoryEvent, RecItem
from crossrec.recommend import recommend
from crossrec.registry import RegistryError
from crossrec.settings import Settings

log = logging.getLogger(__name__)


class ModelScorer:
    """Implements the consumer's ``Scorer`` over a loaded ``Recommender``."""

    def __init__(self, recommender: Recommender, encoder_name: str) -> None:
        self.recommender = recommender
        self.version = recommender.version
        self.encoder_name = encoder_name

    def recommend(self, history: list[HistoryEvent], k: int) -> list[RecItem]:
        return recommend(self.recommender, [(h.domain, h.item_id) for h in history], k)

    def add_item(self, domain: str, item_id: str, text: str) -> None:
        """Embed the new item's text and make it scorable now (its f_i comes from text alone)."""
        from crossrec.encoders.registry import get_encoder

        if domain not in (self.recommender.source_domain, self.recommender.target_domain):
            return  # a domain this model does not cover: nothing to score it with
        vector = get_encoder(self.encoder_name, threads=None).encode([text])[0]
        self.recommender.add_item(domain, item_id, vector)


def load_scorer(settings: Settings) -> ModelScorer | None:
    """The current model's scorer, or None while no model has been promoted yet."""
    try:
        recommender = load_current(settings)
    except RegistryError as exc:
        log.warning("no model to score with yet (%s); lists fall back to popular items", exc)
        return None
    return ModelScorer(recommender, recommender.config.get("encoder", settings.encoder))
