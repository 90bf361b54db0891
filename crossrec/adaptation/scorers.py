"""Training-free scorers over a user's mixed-domain history, and blends of them.

Why one module: `crossrec diagnose` measures these signals, and the routed model serves them; both
must compute exactly the same scores. Every scorer maps histories (arrays of global item indices,
both domains, time order) to a (users, n_target) score matrix; ``rank_scores`` turns a matrix into
full-rank positions with the evaluation's masking and seeded tie rule.

- ``popularity``: target-item counts in the training users' target events.
- ``item_knn``: co-occurrence cosine from the user's *target* history (no transfer).
- ``source_cooc``: co-occurrence cosine from the user's *source* history (art item -> office
  item, counted over training users): the training-free transfer signal.
- ``text_last_target`` / ``text_source`` / ``text_last_any``: cosine of centred frozen text
  embeddings to the last target item / the whole source history / the last item of either domain
  (what a zero-shot model must beat: it reads the same histories); ``text_recent_target`` /
  ``text_recent_any``: to the sum of the last ``RECENT`` items (target / either domain).

Blends mix min-max-normalised scores per user (``normalise_rows``) with weights fitted by
coordinate ascent on a selection set, so scorers on different scales (counts, cosines, logits)
combine without one drowning the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from crossrec.adaptation.baselines import ItemKNN, Popularity
from crossrec.adaptation.data import SOURCE, TARGET, AdaptData, EvalSet, UserSeq
from crossrec.evaluation import compute_metrics, per_user, rank_batch

TARGET_ONLY_SIGNALS = ("popularity", "item_knn", "text_last_target")
SOURCE_SIGNALS = ("source_cooc", "text_source")
ROUTABLE = ("popularity", "item_knn", "source_cooc")  # need no embeddings at serving time
RECENT = 3  # items the text_recent_* signals sum over


def normalise_rows(m: np.ndarray) -> np.ndarray:
    """Per-user min-max to [0, 1] (a constant row becomes 0): puts scorers on one scale."""
    return normalise_rows_(torch.from_numpy(np.array(m, dtype=np.float32, order="C"))).numpy()


def normalise_rows_(t: torch.Tensor) -> torch.Tensor:
    """``normalise_rows`` in place, over ``t``'s own memory (the routed model normalises a batch's
    logits in the buffer they were computed into, rather than in 40 MB of fresh memory)."""
    lo = t.amin(dim=1, keepdim=True)  # two reductions: torch.aminmax took five times as long
    span = t.amax(dim=1, keepdim=True) - lo
    t.sub_(lo).div_(torch.where(span > 0, span, torch.ones_like(span)))
    t[(span <= 0)[:, 0]] = 0.0  # whole rows by index (a full-size boolean mask cost more than the rest)
    return t


@dataclass
class TrainingFreeScorers:
    """Fitted once on the training sequences; scores any batch of histories."""

    data: AdaptData
    pop: Popularity
    knn: ItemKNN
    cooc: ItemKNN
    _centred: torch.Tensor | None = None

    @classmethod
    def fit(cls, data: AdaptData, train_seqs: list[UserSeq]) -> "TrainingFreeScorers":
        return cls(data, Popularity.fit(data, train_seqs), ItemKNN.fit(data, train_seqs), ItemKNN.fit(data, train_seqs, history_domain=SOURCE))

    def _split(self, histories: Sequence[np.ndarray], dom: int) -> list[np.ndarray]:
        cat = self.data.catalog
        return [np.unique(h[cat.domain[h] == dom]) - cat.offset(dom) for h in histories]

    def text_cosine(self, histories: Sequence[np.ndarray], dom: int | None, last: int | None, onto: int = TARGET) -> np.ndarray:
        """Cosine of the (summed) centred history embeddings to every item of domain ``onto``."""
        cat = self.data.catalog
        if self._centred is None:
            emb = torch.from_numpy(cat.embeddings[1:])
            self._centred = torch.nn.functional.normalize(emb - emb.mean(0), dim=-1)
        q = torch.zeros(len(histories), self._centred.shape[1])
        for row, hist in enumerate(histories):
            items = hist if dom is None else hist[cat.domain[hist] == dom]
            items = items[-last:] if last else items
            if items.size:
                q[row] = self._centred[torch.from_numpy(np.asarray(items - 1, np.int64))].sum(0)
        lo = cat.offset(onto) - 1
        return (q @ self._centred[lo : lo + cat.count(onto)].T).numpy()

    def text_onto(self, histories: Sequence[np.ndarray], dom: int) -> np.ndarray:
        """Cosine to the last item of domain ``dom``, over domain ``dom``'s own catalogue: the
        training-free next-item scorer inside one domain (target: ``text_last_target``)."""
        return self.text_cosine(histories, dom, 1, onto=dom)

    def score(self, name: str, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(len(histories), n_target) float32 scores of signal ``name``."""
        n_tgt = self.data.catalog.n_target
        if name == "popularity":
            return np.broadcast_to(self.pop.counts.astype(np.float32), (len(histories), n_tgt)).copy()
        if name == "item_knn":
            return self.knn.scores(self._split(histories, TARGET)).astype(np.float32)
        if name == "source_cooc":
            return self.cooc.scores(self._split(histories, SOURCE)).astype(np.float32)
        if name == "text_last_target":
            return self.text_cosine(histories, TARGET, 1)
        if name == "text_source":
            return self.text_cosine(histories, SOURCE, None)
        if name == "text_last_any":
            return self.text_cosine(histories, None, 1)
        if name == "text_recent_target":
            return self.text_cosine(histories, TARGET, RECENT)
        if name == "text_recent_any":
            return self.text_cosine(histories, None, RECENT)
        raise ValueError(f"unknown training-free signal {name!r}")


def rank_scores(scores: np.ndarray, ev: EvalSet, rows: np.ndarray | None = None) -> np.ndarray:
    """Full-rank positions of the held-out items under ``scores`` (history masked, seeded ties)."""
    rows = np.arange(len(ev.targets)) if rows is None else rows
    return rank_batch(scores, ev.targets[rows], [ev.masks[i] for i in rows])


def blend(components: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """sum_k w_k * score_k over the weighted components (all row-normalised already)."""
    out: torch.Tensor | None = None
    for name, w in weights.items():
        if w == 0.0 or name not in components:
            continue
        c = torch.from_numpy(components[name])
        out = c * w if out is None else out.add_(c, alpha=w)
    if out is None:
        return np.zeros_like(next(iter(components.values())))
    return out.numpy()


GRID = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)


def fit_blend(
    components: dict[str, np.ndarray], objective: Callable[[np.ndarray], float], anchor: str, passes: int = 2
) -> tuple[dict[str, float], float]:
    """Coordinate ascent on the weights (``anchor`` fixed at 1, others over ``GRID``).

    ``components`` are already row-normalised; ``objective`` maps a blended score matrix to the
    selection-set metric. A weight moves only on a strict gain, so ties keep the simpler blend.
    Each trial is the current blend plus one rescaled component (one fused pass, torch threads),
    not a re-summation of every component.
    """
    comps = {n: torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)) for n, c in components.items()}
    weights = {n: (1.0 if n == anchor else 0.0) for n in components}
    current = comps[anchor].clone()
    best = objective(current.numpy())
    for _ in range(passes):
        moved = False
        for name in components:
            if name == anchor:
                continue
            best_w, best_t = weights[name], None
            for w in GRID:
                if w == weights[name]:
                    continue
                trial = torch.add(current, comps[name], alpha=w - weights[name])
                val = objective(trial.numpy())
                if val > best + 1e-12:
                    best, best_w, best_t = val, w, trial
            if best_t is not None:
                weights[name], current, moved = best_w, best_t, True
        if not moved:
            break
    return weights, best


def ndcg_objective(ev: EvalSet, rows: np.ndarray | None = None) -> Callable[[np.ndarray], float]:
    def f(scores: np.ndarray) -> float:
        return float(per_user(rank_scores(scores, ev, rows)).mean()) if scores.shape[0] else 0.0

    return f


def metrics_of(scores: np.ndarray, ev: EvalSet, rows: np.ndarray | None = None) -> dict[str, float]:
    return compute_metrics(rank_scores(scores, ev, rows))
