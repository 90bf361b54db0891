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


@dataclass
class ItemKNN:
    """Target item-item cosine over co-occurrence in training users' target histories.

    score(u, j) = sum over the user's target history items i of |U_i & U_j| / sqrt(|U_i| |U_j|),
    computed as two sparse products per user batch (history -> users -> items), so the 19.7k^2
    co-occurrence matrix is never materialised.
    """

    by_user: torch.Tensor  # sparse COO (n_users, n_target): [u has j] / sqrt(|U_j|)
    by_item: torch.Tensor  # its transpose, coalesced once (sparse @ dense needs the row-major form)
    inv_sqrt_deg: torch.Tensor  # (n_target,)

    @classmethod
    def fit(cls, data: AdaptData, seqs: list[UserSeq]) -> "ItemKNN":
        cat = data.catalog
        rows, cols = [], []
        for u, s in enumerate(seqs):
            t = np.unique(s.items[s.dom == TARGET]) - cat.target_offset
            rows.append(np.full(t.size, u))
            cols.append(t)
        r = torch.from_numpy(np.concatenate(rows) if rows else np.zeros(0, np.int64))
        c = torch.from_numpy(np.concatenate(cols) if cols else np.zeros(0, np.int64))
        deg = torch.bincount(c, minlength=cat.n_target).double()
        inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        shape = (max(len(seqs), 1), cat.n_target)
        by_user = torch.sparse_coo_tensor(torch.stack([r, c]), inv[c], shape, check_invariants=True).coalesce()
        by_item = torch.sparse_coo_tensor(torch.stack([c, r]), inv[c], shape[::-1], check_invariants=True).coalesce()
        return cls(by_user=by_user, by_item=by_item, inv_sqrt_deg=inv)

    def ranks(self, data: AdaptData, ev: EvalSet, batch_size: int = 256) -> np.ndarray:
        out = []
        for s in range(0, len(ev.targets), batch_size):
            masks = ev.masks[s : s + batch_size]  # = the user's target history items (local idx)
            h = torch.zeros(len(masks), self.inv_sqrt_deg.numel(), dtype=torch.float64)
            for i, m in enumerate(masks):
                h[i, torch.from_numpy(np.asarray(m, np.int64))] = 1.0
            via_users = torch.sparse.mm(self.by_user, h.T)  # (n_users, batch): sum over history i of [u has i] / sqrt(|U_i|)
            scores = torch.sparse.mm(self.by_item, via_users).T  # (batch, n_target): the cosine sum
            out.append(rank_batch(scores.numpy(), ev.targets[s : s + batch_size], masks))
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def sasrec_model(cfg: ModelConfig, n_items: int) -> CrossDomainModel:
    """Same causal encoder and scorer as the text model, but free ID embeddings as f_i."""
    id_cfg = ModelConfig(**{**cfg.to_dict(), "item_tower": "id", "n_items": n_items})
    return CrossDomainModel(id_cfg)


__all__ = ["Popularity", "ItemKNN", "sasrec_model", "torch"]
