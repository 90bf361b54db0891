"""Baselines for the comparison table: popularity, item-KNN and an ID-based sequential model (SASRec-style).

Why these: popularity is the floor any personalised model must clear; item-KNN (co-occurrence
cosine, no training) is the classic strong baseline on sparse review data and tells whether the
neural models earn their cost; the SASRec-style ID model is what a team would deploy without text
embeddings, trained on the target domain only, so it tells how much the frozen-LLM item side and
the source domain add.
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
    """Counts of target items in the training users' target events (ties broken by the metric's seeded rule)."""

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


@dataclass
class ItemKNN:
    """Target item-item cosine over co-occurrence in training users' histories.

    score(u, j) = sum over the user's history items i of |U_i & U_j| / sqrt(|U_i| |U_j|), computed
    as two sparse products per user batch (history -> users -> items), so the item-item matrix is
    never materialised. The history items are target items for the baseline; ``history_domain=
    SOURCE`` scores office items from art items instead (benchmarks/bench_transfer_signal.py).
    """

    by_user: torch.Tensor  # sparse COO (n_users, n_history_items): [u has i] / sqrt(|U_i|)
    by_item: torch.Tensor  # sparse COO (n_target, n_users): [u has j] / sqrt(|U_j|)
    n_history_items: int

    @classmethod
    def fit(cls, data: AdaptData, seqs: list[UserSeq], history_domain: int = TARGET) -> "ItemKNN":
        cat = data.catalog

        def incidence(dom: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
            for u, s in enumerate(seqs):
                items = np.unique(s.items[s.dom == dom]) - cat.offset(dom)
                rows.append(np.full(items.size, u))
                cols.append(items)
            r, c = torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))
            deg = torch.bincount(c, minlength=cat.count(dom)).double()
            return r, c, torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))

        n_users = max(len(seqs), 1)
        r, c, inv = incidence(history_domain)
        by_user = torch.sparse_coo_tensor(torch.stack([r, c]), inv[c], (n_users, cat.count(history_domain)), check_invariants=True)
        r, c, inv = incidence(TARGET)
        by_item = torch.sparse_coo_tensor(torch.stack([c, r]), inv[c], (cat.n_target, n_users), check_invariants=True)
        return cls(by_user=by_user.coalesce(), by_item=by_item.coalesce(), n_history_items=cat.count(history_domain))

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """(len(histories), n_target) scores for users with these histories (local indices of the history domain)."""
        h = torch.zeros(len(histories), self.n_history_items, dtype=torch.float64)
        for i, items in enumerate(histories):
            h[i, torch.from_numpy(np.asarray(items, np.int64))] = 1.0
        via_users = torch.sparse.mm(self.by_user, h.T)  # (n_users, batch): sum over history i of [u has i] / sqrt(|U_i|)
        return torch.sparse.mm(self.by_item, via_users).T.numpy()  # (batch, n_target): the cosine sum

    def ranks(self, data: AdaptData, ev: EvalSet, batch_size: int = 256) -> np.ndarray:
        out = []
        for s in range(0, len(ev.targets), batch_size):
            masks = ev.masks[s : s + batch_size]  # = the user's (full) target history
            out.append(rank_batch(self.scores(masks), ev.targets[s : s + batch_size], masks))
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def sasrec_model(cfg: ModelConfig, n_items: int) -> CrossDomainModel:
    """SASRec: causal self-attention (``encoder="transformer"``) over free ID embeddings as f_i.

    The encoder is forced to the transformer whatever the text model uses (the text model defaults
    to a GRU): an ID GRU labelled SASRec would be a weaker, different baseline.
    """
    id_cfg = ModelConfig(**{**cfg.to_dict(), "item_tower": "id", "encoder": "transformer", "n_items": n_items})
    return CrossDomainModel(id_cfg)


__all__ = ["Popularity", "ItemKNN", "sasrec_model", "torch"]
