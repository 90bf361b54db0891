"""Training-free scorers over a user's mixed-domain history, and blends of them.

Why one module: `crossrec diagnose` measures these signals, and the routed model serves them; both
must compute exactly the same scores. Every scorer maps histories (arrays of global item indices,
both domains, time order) to a (users, n_target) score matrix; ``rank_scores`` turns a matrix into
full-rank positions with the evaluation's masking and seeded tie rule.

- ``popularity``: target-item counts in the training users' target events.
- ``item_knn``: co-occurrence cosine from the user's *target* history (no transfer).
- ``source_cooc``: co-occurrence cosine from the user's *source* history (art item -> office
  item, counted over training users): the training-free transfer signal.
- ``text_knn``: the last target item's ``TEXT_NEIGHBOURS`` nearest target items by that cosine
  (a sparse table computed once from the item texts, no interactions): ``text_last_target``
  truncated so that serving can add it per user without a (users x catalogue x 384) product.
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
# Routes and blend parts; none needs the embeddings at serving time (text_knn is a stored table).
ROUTABLE = ("popularity", "item_knn", "source_cooc", "text_knn")
TEXT_NEIGHBOURS = 100  # per target item, in text_knn's table
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
class TextNeighbours:
    """Per target item (local index), its nearest target items by centred text cosine, self
    included: ``cols[j]`` ascending, ``values[j]`` the cosines (> 0; fewer than the table's width
    are padded with column -1 and value 0)."""

    cols: np.ndarray  # int32 (n_target, width)
    values: np.ndarray  # float32 (n_target, width)

    @classmethod
    def from_centred(cls, centred: torch.Tensor, width: int = TEXT_NEIGHBOURS, block: int = 2048) -> "TextNeighbours":
        """``centred``: unit-length centred embeddings of the target items, in local order."""
        n = centred.shape[0]
        width = min(width, n)
        cols = np.full((n, width), -1, np.int32)
        values = np.zeros((n, width), np.float32)
        for s in range(0, n, block):
            top = torch.topk(centred[s : s + block] @ centred.T, width, dim=1)
            idx, val = top.indices.numpy(), top.values.numpy()
            keep = val > 0
            order = np.argsort(np.where(keep, idx, n), axis=1, kind="stable")
            idx, val, keep = (np.take_along_axis(a, order, 1) for a in (idx, val, keep))
            cols[s : s + block] = np.where(keep, idx, -1)
            values[s : s + block] = np.where(keep, val, 0.0)
        return cls(cols, values)

    def of(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in ``local``, column, value) of the neighbours of each item in ``local``."""
        c, v = self.cols[local], self.values[local]
        keep = c >= 0
        return np.nonzero(keep)[0], c[keep].astype(np.int64), v[keep]


@dataclass
class TrainingFreeScorers:
    """Fitted once on the training sequences; scores any batch of histories."""

    data: AdaptData
    pop: Popularity
    knn: ItemKNN
    cooc: ItemKNN
    _centred: torch.Tensor | None = None
    _neighbours: TextNeighbours | None = None

    @classmethod
    def fit(cls, data: AdaptData, train_seqs: list[UserSeq], neighbours: TextNeighbours | None = None) -> "TrainingFreeScorers":
        """``neighbours``: text_knn's table of the same catalogue, when already computed (it
        depends on the texts only, so a run's fractions share one)."""
        return cls(
            data, Popularity.fit(data, train_seqs), ItemKNN.fit(data, train_seqs), ItemKNN.fit(data, train_seqs, history_domain=SOURCE),
            _neighbours=neighbours,
        )

    def _split(self, histories: Sequence[np.ndarray], dom: int) -> list[np.ndarray]:
        cat = self.data.catalog
        return [np.unique(h[cat.domain[h] == dom]) - cat.offset(dom) for h in histories]

    def centred(self) -> torch.Tensor:
        """Unit-length text embeddings of every catalogue item (rows 1.., as the catalogue),
        centred on the catalogue's mean: raw sentence embeddings share a large common direction."""
        if self._centred is None:
            emb = torch.from_numpy(self.data.catalog.embeddings[1:])
            self._centred = torch.nn.functional.normalize(emb - emb.mean(0), dim=-1)
        return self._centred

    def text_neighbours(self) -> TextNeighbours:
        """text_knn's table (computed on first use, unless ``fit`` was given it)."""
        if self._neighbours is None:
            cat = self.data.catalog
            lo = cat.target_offset - 1
            self._neighbours = TextNeighbours.from_centred(self.centred()[lo : lo + cat.n_target])
        return self._neighbours

    def text_knn(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Each user's last target item's row of the neighbour table, dense (zeros elsewhere)."""
        cat = self.data.catalog
        out = np.zeros((len(histories), cat.n_target), np.float32)
        users, last = [], []
        for row, hist in enumerate(histories):
            items = hist[cat.domain[hist] == TARGET]
            if items.size:
                users.append(row)
                last.append(int(items[-1]) - cat.target_offset)
        if users:
            at, cols, vals = self.text_neighbours().of(np.asarray(last, np.int64))
            out[np.asarray(users)[at], cols] = vals
        return out

    def text_cosine(self, histories: Sequence[np.ndarray], dom: int | None, last: int | None, onto: int = TARGET) -> np.ndarray:
        """Cosine of the (summed) centred history embeddings to every item of domain ``onto``."""
        cat = self.data.catalog
        centred = self.centred()
        q = torch.zeros(len(histories), centred.shape[1])
        for row, hist in enumerate(histories):
            items = hist if dom is None else hist[cat.domain[hist] == dom]
            items = items[-last:] if last else items
            if items.size:
                q[row] = centred[torch.from_numpy(np.asarray(items - 1, np.int64))].sum(0)
        lo = cat.offset(onto) - 1
        return (q @ centred[lo : lo + cat.count(onto)].T).numpy()

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
        if name == "text_knn":
            return self.text_knn(histories)
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
