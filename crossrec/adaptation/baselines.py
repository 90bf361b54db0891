"""Baselines for the comparison table: popularity and an ID-based sequential model (SASRec-style).

Why these two: popularity is the floor any personalised model must clear; the SASRec-style ID model
is what a team would deploy without text embeddings, trained on the target domain only, so it
tells how much the frozen-LLM item side and the source domain add.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from crossrec.adaptation.data import TARGET, AdaptData, EvalSet, UserSeq
from crossrec.adaptation.model import CrossDomainModel, ModelConfig
from crossrec.evaluation import rank_batch


@dataclass
class Popularity:
    """Counts of target items in the training users' target events (ties -> catalogue order)."""

    counts: np.ndarray
    view: str = "target"
    logs: list = field(default_factory=list)
    best_valid: float | None = None

    @classmethod
    def fit(cls, data: AdaptData, seqs: list[UserSeq]) -> "Popularity":
        cat = data.catalog
        counts = np.zeros(cat.n_target, np.float64)
        for s in seqs:
            t = s.items[s.dom == TARGET] - cat.target_offset
            np.add.at(counts, t, 1.0)
        return cls(counts=counts)

    def ranks(self, data: AdaptData, ev: EvalSet, batch_size: int = 512) -> np.ndarray:
        out = []
        for s in range(0, len(ev.targets), batch_size):
            n = len(ev.targets[s : s + batch_size])
            scores = np.broadcast_to(self.counts, (n, self.counts.size))
            out.append(rank_batch(scores, ev.targets[s : s + batch_size], ev.masks[s : s + batch_size]))
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def sasrec_model(cfg: ModelConfig, n_items: int) -> CrossDomainModel:
    """Same causal encoder and scorer as the text model, but free ID embeddings as f_i."""
    id_cfg = ModelConfig(**{**cfg.to_dict(), "item_tower": "id", "n_items": n_items})
    return CrossDomainModel(id_cfg)


__all__ = ["Popularity", "sasrec_model", "torch"]
