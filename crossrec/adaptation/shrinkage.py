"""Shrink each item's learned ID offset toward its text vector by the evidence behind it.

Why: in the ``text+id`` item tower an item's vector is its text vector plus a learned ID offset.
The sampled softmax draws negatives uniformly from the catalogue, so an item seen a few times in
training (or never) gets its offset mostly from being a negative: the offset pushes rare and unseen
items down, exactly where IDs know least and the text knows as much as anywhere. Scaling each
offset by ``c / (c + k)``, with ``c`` the item's training interactions, keeps the offsets of
well-observed items and returns a rare item to its text vector (an unseen one entirely): the usual
shrinkage of a per-item estimate toward a prior by its count, with the text as the prior.

``k`` is chosen after training on the selection set among ``TrainConfig.id_shrink_grid`` and folded
into the ID table, so a saved model carries it and serving needs nothing new. Like every choice of a
run it must be clear: the model as trained (``k = 0``) is kept unless the best ``k``'s paired
bootstrap CI of its gain over it excludes zero. Measured on Art -> Office (target_only, seeds 42 /
43 / 44): the best k was 10 / 3 / 10, +4.3 / +2.7 / +3.3 % on the selection set, each CI including
zero, so the model as trained is kept. Kept anyway (the best k, one 3-seed run), it moved the test
overall NDCG@10 of target_only by +0.3 / +2.0 / +3.1 % and its tail (held-out item with fewer
than 5 training interactions) from .0032 / .0055 / .0000 to .0142 / .0104 / .0078; the routed
model built on it went from .0809 / .0789 / .0805 to .0795 / .0822 / .0809 (README).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from crossrec.adaptation.data import UserSeq
from crossrec.adaptation.model import CrossDomainModel, HybridItemTower
from crossrec.evaluation import paired_bootstrap


def item_event_counts(n_items: int, seqs: Iterable[UserSeq]) -> np.ndarray:
    """Training interactions per catalogue index (both domains) in ``seqs``."""
    counts = np.zeros(n_items, np.int64)
    for s in seqs:
        np.add.at(counts, s.items, 1)
    return counts


def shrink_factors(counts: np.ndarray, k: float) -> torch.Tensor:
    """``c / (c + k)`` per item (all ones for ``k = 0``: no shrinkage)."""
    c = torch.from_numpy(np.asarray(counts, np.float32))
    return torch.ones_like(c) if k <= 0 else c / (c + k)


def has_id_offsets(model: CrossDomainModel | None) -> bool:
    return model is not None and isinstance(model.items, HybridItemTower)


@torch.no_grad()
def choose_id_shrink(
    model: CrossDomainModel, counts: np.ndarray, per_user_ndcg: Callable[[CrossDomainModel], np.ndarray], grid: Sequence[float]
) -> dict:
    """Try every ``k`` of ``grid`` on the selection set, fold the kept one into ``model``'s ID table.

    ``per_user_ndcg(model)``: the selection users' NDCG@10 under the model as it stands. Returns
    what was tried, the best ``k`` with its CI against no shrinkage (``k = 0``), and what was kept.
    """
    items = model.items
    if not isinstance(items, HybridItemTower):
        raise TypeError("only a text+id item tower has ID offsets to shrink")
    table: torch.Tensor = items.ids.weight
    trained = table.detach().clone()
    factors = {float(k): shrink_factors(counts, k).to(trained.device) for k in sorted({0.0, *map(float, grid)})}
    per: dict[float, np.ndarray] = {}
    for k, f in factors.items():
        table.copy_(trained * f[:, None])
        per[k] = per_user_ndcg(model)
    best = max(per, key=lambda k: (per[k].mean(), -k))  # a tie keeps the smaller shrinkage
    ci = paired_bootstrap(per[best], per[0.0])
    if best == 0.0:
        kept, reason = 0.0, "no shrinkage: no k beats the model as trained on the selection set"
    elif ci["lo"] > 0:
        kept, reason = best, f"k={best:g}: {ci['rel']:+.1%} over no shrinkage on the selection set, 95% CI [{ci['lo']:+.4f}, {ci['hi']:+.4f}] excludes zero"
    else:
        kept, reason = 0.0, f"no shrinkage: the best k={best:g} gains {ci['rel']:+.1%} on the selection set (which resolves about ±{ci['resolution_rel']:.1%}), but its 95% CI [{ci['lo']:+.4f}, {ci['hi']:+.4f}] includes zero"
    table.copy_(trained * factors[kept][:, None])
    return {
        "select_ndcg10": {f"{k:g}": float(v.mean()) for k, v in per.items()},
        "best": best,
        "ci_best_vs_none": ci,
        "kept": kept,
        "reason": reason,
    }
