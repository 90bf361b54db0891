"""The routed model: per user segment, the scorer that earned it on the selection set.

Why: one trained model is not best everywhere. Users with no target history get an empty sequence
from a target-view model (zero-shot scored .0000 there on Art -> Office) while a training-free
co-occurrence scorer over their *source* history can still rank; users with a long target history
are served well by the model or item-KNN. A route is chosen per segment among

    model        the registered trained model (the reference: what serving did before routing)
    item_knn     co-occurrence cosine from the target history
    source_cooc  co-occurrence cosine from the source history (training-free transfer)
    text_knn     the last target item's nearest target items by text (no interactions needed)
    popularity   training users' target counts
    blend        sum of the row-normalised scores above, weights fitted on the selection set

Each segment has a fallback, the simpler scorer that is kept unless a challenger clearly beats it:
popularity where the model reads no history for the segment's users (a target-view model on users
with no target history sees an empty sequence, so it ranks every one of them alike: a learned
popularity, and counts are the simpler scorer of that kind), the model everywhere else (what
serving did before routing). A challenger (any other candidate, the model included) replaces the
fallback only when the paired bootstrap CI (selection users) of its gain over the fallback excludes
zero; otherwise the fallback is kept and the table says which and why. The blend's selection score
is cross-fitted (weights fitted on one half of the users, scored on the other, and vice versa), so
it is not favoured for having been fitted on the users it is judged on.

Segments are by the number of target-domain events in the user's history: ``cold`` (none:
constructed on selection users by hiding their target history), ``1-2``, ``3+``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from crossrec.adaptation.baselines import ItemKNN
from crossrec.adaptation.data import SOURCE, TARGET, AdaptData, EvalSet
from crossrec.adaptation.inference import History, Recommender
from crossrec.adaptation.scorers import ROUTABLE, TextNeighbours, TrainingFreeScorers, blend, fit_blend, ndcg_objective, normalise_rows, normalise_rows_, rank_scores
from crossrec.adaptation.tail_slots import SLOT_GRID, WINDOW, choose_tail_slots, merge, pick_slots, ranks_with_slots, slot_items_for, slot_pool, tail_items
from crossrec.evaluation import paired_bootstrap, per_user
from crossrec.keys import RoutedItems

ROUTE_SEGMENTS = ("cold", "1-2", "3+")
REFERENCE = "model"
CANDIDATES = (REFERENCE, *ROUTABLE, "blend")


def segment_of(n_target_events: int | np.ndarray) -> np.ndarray:
    n = np.asarray(n_target_events)
    return np.where(n == 0, "cold", np.where(n <= 2, "1-2", "3+"))


@dataclass
class RouteChoice:
    segment: str
    route: str
    n_users: int
    selection_ndcg10: dict[str, float] = field(default_factory=dict)
    ci_vs_fallback: dict[str, dict] = field(default_factory=dict)  # each challenger's gain over ``fallback``
    blend_weights: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    fallback: str = REFERENCE  # the route kept when no challenger's CI excludes zero
    fallback_reason: str = ""
    tail_slots: int = 0  # places of the top ten given to text-nearest tail items (tail_slots.py)
    tail_slot_evidence: dict[str, dict] = field(default_factory=dict)  # per slot count tried: its CIs
    tail_slot_reason: str = ""

    @classmethod
    def from_dict(cls, d: Mapping) -> "RouteChoice":
        """Read a stored choice, older layouts included: tables written before fallbacks existed
        held ``ci_vs_reference`` (CIs against the model, their only fallback). Unknown keys are
        ignored, so a table written by a newer version still loads."""
        d = dict(d)
        if "ci_vs_reference" in d and "ci_vs_fallback" not in d:
            d["ci_vs_fallback"] = d.pop("ci_vs_reference")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class RoutingTable:
    routes: dict[str, RouteChoice]
    strategy: str  # the trained model behind the "model" route

    def route_for(self, n_target_events: int) -> str:
        seg = str(segment_of(n_target_events))
        choice = self.routes.get(seg)
        return choice.route if choice is not None else REFERENCE

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "routes": {k: asdict(v) for k, v in self.routes.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "RoutingTable":
        return cls({k: RouteChoice.from_dict(v) for k, v in d["routes"].items()}, d["strategy"])


def _cross_fitted_blend(comps: dict[str, np.ndarray], ev: EvalSet, rows: np.ndarray, anchor: str, seed: int = 0) -> tuple[np.ndarray, dict[str, float]]:
    """Per-user blend NDCG@10 scored out-of-fold (two folds) plus the weights fitted on all rows."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(rows)) % 2
    vals = np.zeros(len(rows))
    for f in (0, 1):
        fit_idx, out_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if fit_idx.size == 0 or out_idx.size == 0:
            continue
        w, _ = fit_blend({n: c[fit_idx] for n, c in comps.items()}, ndcg_objective(ev, rows[fit_idx]), anchor)
        vals[out_idx] = per_user(rank_scores(blend({n: c[out_idx] for n, c in comps.items()}, w), ev, rows[out_idx]))
    weights, _ = fit_blend(comps, ndcg_objective(ev, rows), anchor)
    return vals, weights


SIMPLER = "popularity"  # the fallback where the model reads nothing


def fallback_for(ev_model: EvalSet, rows: np.ndarray) -> tuple[str, str]:
    """The segment's fallback route and why: popularity when the model's view holds no event of
    any of these users (it then ranks all of them alike, and counts are the simpler scorer of that
    kind), else the model (also for a segment without selection users: no evidence either way,
    so serving stays what it was before routing)."""
    if rows.size == 0:
        return REFERENCE, "no selection users in this segment: the model, as served before routing"
    if all(len(ev_model.histories[i]) == 0 for i in rows):
        return SIMPLER, "the model reads no history for these users (an empty sequence in its view), so popularity is the simpler scorer"
    return REFERENCE, "the model reads these users' history"


def choose_route(per: Mapping[str, np.ndarray], fallback: str) -> tuple[str, dict[str, dict], str]:
    """(route, each challenger's paired CI against the fallback, reason) from per-user selection
    NDCG@10: the best challenger replaces ``fallback`` only when its CI excludes zero; a challenger
    that merely ties the fallback's mean never replaces it."""
    means = {n: float(v.mean()) for n, v in per.items()}
    cis = {n: paired_bootstrap(per[n], per[fallback]) for n in per if n != fallback}
    best = max(cis, key=lambda n: means[n])
    if means[best] <= means[fallback]:
        return fallback, cis, f"keeping the fallback {fallback}: no candidate beats it on the selection set"
    ci = cis[best]
    interval = f"{ci['rel']:+.1%} (these users resolve about ±{ci['resolution_rel']:.1%}; 95% CI [{ci['lo']:+.4f}, {ci['hi']:+.4f}]"
    if ci["lo"] > 0:
        return best, cis, f"{best} beats the fallback {fallback} by {interval} excludes zero)"
    return fallback, cis, f"{best} is {interval} over the fallback {fallback} but its CI includes zero: keeping {fallback}"


def slotted_ranks(scores: np.ndarray, text: np.ndarray, ev: EvalSet, rows: np.ndarray, is_tail: np.ndarray, slots: Sequence[int]) -> dict[int, np.ndarray]:
    """Ranks of ``rows``' held-out items under ``scores`` (a route's, ``rows`` of ``ev``) with
    each number of tail slots in ``slots`` (0: the route's own ranking); ``text`` holds the same
    rows' row-normalised ``text_knn`` scores."""
    base = rank_scores(scores, ev, rows)
    out = {0: base} if 0 in slots else {}
    wanted = [s for s in slots if s > 0]
    if not wanted or len(rows) == 0:
        return out
    masked = torch.zeros(scores.shape, dtype=torch.bool)
    for j, i in enumerate(rows):
        masked[j, torch.from_numpy(np.asarray(ev.masks[i], np.int64))] = True
    t = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    head = torch.topk(t.masked_fill(masked, -np.inf), min(WINDOW, t.shape[1]), dim=1).indices.numpy()
    pool = slot_pool(torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32)), is_tail, masked)
    for s in wanted:
        out[s] = ranks_with_slots(scores, base, ev.targets[rows], slot_items_for(pool, head, s))
    return out


def _choose_slots(route_scores: np.ndarray, text: np.ndarray, ev: EvalSet, rows: np.ndarray, is_tail: np.ndarray, margin: float) -> tuple[int, dict[str, dict], str]:
    ranks = slotted_ranks(route_scores, text, ev, rows, is_tail, (0, *SLOT_GRID))
    per = {s: per_user(r) for s, r in ranks.items()}
    return choose_tail_slots(per, is_tail[ev.targets[rows]], margin)


def fit_routing(
    data: AdaptData,
    scorers: TrainingFreeScorers,
    model_logits: Callable[[EvalSet], np.ndarray],
    segments: Mapping[str, tuple[EvalSet, EvalSet, np.ndarray]],
    strategy: str,
    say: Callable[[str], None] = print,
    tail_slot_margin: float = 0.0,
) -> RoutingTable:
    """Choose a route per segment on the selection set (its fallback unless a challenger clearly
    beats it), then its tail slots (``tail_slots.py``; none when ``tail_slot_margin`` is 0).

    ``segments[seg] = (mixed-view eval set, model-view eval set, rows)``: the two eval sets hold the
    same users in the same order (the model may read only its own view, the scorers read both
    domains); ``model_logits`` scores the model-view set.
    """
    routes: dict[str, RouteChoice] = {}
    is_tail = tail_items(scorers.pop.counts)
    for seg, (ev_mixed, ev_model, rows) in segments.items():
        fallback, why = fallback_for(ev_model, rows)
        if rows.size < 2:
            reason = f"too few selection users ({rows.size}): keeping the fallback {fallback}"
            routes[seg] = RouteChoice(seg, fallback, int(rows.size), reason=reason, fallback=fallback, fallback_reason=why)
            say(f"route {seg}: {fallback} ({reason}; {why})")
            continue
        hists = [ev_mixed.histories[i] for i in rows]
        comps = {n: normalise_rows(scorers.score(n, hists)) for n in ROUTABLE}
        comps[REFERENCE] = normalise_rows(model_logits(ev_model)[rows])
        per: dict[str, np.ndarray] = {n: per_user(rank_scores(c, ev_mixed, rows)) for n, c in comps.items()}
        anchor = max(per, key=lambda n: per[n].mean())
        per["blend"], weights = _cross_fitted_blend(comps, ev_mixed, rows, anchor)
        route, cis, reason = choose_route(per, fallback)
        means = {n: float(v.mean()) for n, v in per.items()}
        choice = RouteChoice(seg, route, int(rows.size), means, cis, weights, reason, fallback, why)
        if tail_slot_margin > 0 and route != "popularity":
            route_scores = blend(comps, weights) if route == "blend" else comps[route]
            choice.tail_slots, choice.tail_slot_evidence, choice.tail_slot_reason = _choose_slots(route_scores, comps["text_knn"], ev_mixed, rows, is_tail, tail_slot_margin)
        routes[seg] = choice
        slots = f"; {choice.tail_slot_reason}" if choice.tail_slot_reason else ""
        say(f"route {seg}: {route} ({reason}; fallback {fallback}: {why}){slots}")
    return RoutingTable(routes, strategy)


def score_rows(choice: RouteChoice | None, scorers: TrainingFreeScorers, ev_mixed: EvalSet, model_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The routed scores of ``rows`` of an eval set (offline evaluation of a routing table);
    ``model_rows`` are the model's logits for those rows."""
    route = choice.route if choice is not None else REFERENCE
    names = [n for n, w in choice.blend_weights.items() if w] if (choice is not None and route == "blend") else [route]
    hists = [ev_mixed.histories[i] for i in rows]
    comps = {n: normalise_rows(model_rows if n == REFERENCE else scorers.score(n, hists)) for n in names}
    return blend(comps, {n: choice.blend_weights[n] for n in names}) if route == "blend" else comps[route]  # type: ignore[union-attr]


def route_ranks(choice: RouteChoice | None, scorers: TrainingFreeScorers, ev_mixed: EvalSet, model_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Ranks of ``rows``' held-out items under their route, tail slots included (offline
    evaluation of a routing table; the ranking serving builds)."""
    scores = score_rows(choice, scorers, ev_mixed, model_rows, rows)
    s = choice.tail_slots if choice is not None and choice.route != "popularity" else 0  # as served
    if s <= 0:
        return rank_scores(scores, ev_mixed, rows)
    text = normalise_rows(scorers.score("text_knn", [ev_mixed.histories[i] for i in rows]))
    return slotted_ranks(scores, text, ev_mixed, rows, tail_items(scorers.pop.counts), (s,))[s]


# --------------------------------------------------------------------------------- serving


def _save_knn(path: Path, knn: ItemKNN) -> None:
    bu, bi = knn.by_user.coalesce(), knn.by_item.coalesce()
    np.savez_compressed(
        path,
        bu_idx=bu.indices().numpy(), bu_val=bu.values().numpy(), bu_shape=np.asarray(bu.shape),
        bi_idx=bi.indices().numpy(), bi_val=bi.values().numpy(), bi_shape=np.asarray(bi.shape),
        n_history_items=np.asarray([knn.n_history_items]),
    )


def _load_knn(path: Path) -> ItemKNN:
    z = np.load(path)
    bu = torch.sparse_coo_tensor(torch.from_numpy(z["bu_idx"]), torch.from_numpy(z["bu_val"]), tuple(int(x) for x in z["bu_shape"]), check_invariants=True).coalesce()
    bi = torch.sparse_coo_tensor(torch.from_numpy(z["bi_idx"]), torch.from_numpy(z["bi_val"]), tuple(int(x) for x in z["bi_shape"]), check_invariants=True).coalesce()
    return ItemKNN(by_user=bu, by_item=bi, n_history_items=int(z["n_history_items"][0]))


def write_routing(out: Path, table: RoutingTable, scorers: TrainingFreeScorers) -> None:
    """``{artifact}/routing/``: the table (JSON) and the training-free scorers' fitted state."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(json.dumps(table.to_dict(), indent=2, default=float))
    np.save(out / "popularity.npy", scorers.pop.counts)
    _save_knn(out / "item_knn.npz", scorers.knn)
    _save_knn(out / "source_cooc.npz", scorers.cooc)
    text = scorers.text_neighbours()
    np.savez_compressed(out / "text_knn.npz", cols=text.cols, values=text.values)


def _sparse_t(m: torch.Tensor) -> torch.Tensor:
    """The transpose of a stored co-occurrence factor, as CSR (the batched products multiply by it)."""
    with warnings.catch_warnings():  # torch calls sparse CSR "beta"; these products are checked by tests
        warnings.simplefilter("ignore", UserWarning)
        return m.t().coalesce().to_sparse_csr()


@dataclass
class SparseScores:
    """A (users, items) score matrix by its nonzero entries, CSR order (row-major, unique)."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray  # float32
    shape: tuple[int, int]

    def dense(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        out[self.rows, self.cols] = self.values
        return out

    def normalised(self) -> "SparseScores":
        """``normalise_rows`` of the dense matrix, computed on the nonzero entries only.

        Scores are >= 0, so a row with any zero has minimum 0 and its entries become v / max,
        the implicit zeros stay 0 (a row with no zero uses its own minimum, as normalise_rows
        does); same float32 arithmetic, so the same values.
        """
        if self.values.size == 0:
            return self
        starts = np.flatnonzero(np.r_[True, self.rows[1:] != self.rows[:-1]])
        counts = np.diff(np.r_[starts, self.rows.size])
        hi = np.maximum.reduceat(self.values, starts)
        lo = np.where(counts == self.shape[1], np.minimum.reduceat(self.values, starts), np.float32(0))
        span = hi - lo
        lo_e, span_e = np.repeat(lo, counts), np.repeat(span, counts)
        vals = np.where(span_e > 0, (self.values - lo_e) / np.where(span_e > 0, span_e, np.float32(1)), np.float32(0))
        return SparseScores(self.rows, self.cols, vals.astype(np.float32), self.shape)


def knn_scores(by_user_t: torch.Tensor, by_item_t: torch.Tensor, rows: np.ndarray, cols: np.ndarray, n_users: int) -> SparseScores:
    """``ItemKNN.scores`` for a batch given as (user row, history item) pairs, sparse throughout.

    ``ItemKNN.scores`` builds a dense (users, history items) matrix and multiplies the whole
    factors by it; a user's history touches a few training users, so here the history is a
    sparse matrix H and the scores are (H @ by_user.T) @ by_item.T: the work follows the
    co-occurrences, not the catalogue size, and so does the result (its nonzero entries). Same
    cosine sums, float64 as there, then float32 as there.
    """
    n_hist, n_target = by_user_t.shape[0], by_item_t.shape[1]
    if rows.size == 0:
        empty = np.zeros(0, np.int64)
        return SparseScores(empty, empty, np.zeros(0, np.float32), (n_users, n_target))
    key = np.unique(rows.astype(np.int64) * n_hist + cols)
    idx = torch.from_numpy(np.stack([key // n_hist, key % n_hist]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        h = torch.sparse_coo_tensor(idx, torch.ones(key.size, dtype=torch.float64), (n_users, n_hist)).to_sparse_csr()
        s = (h @ by_user_t) @ by_item_t
    crow = s.crow_indices().numpy()
    values = s.values().numpy().astype(np.float32)
    keep = values != 0  # explicit zeros are implicit ones for the row minimum
    r = np.repeat(np.arange(n_users), np.diff(crow))
    return SparseScores(r[keep], s.col_indices().numpy()[keep], values[keep], (n_users, n_target))


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` best columns, best first, equal scores to the lower column; -inf = masked.

    Returns (columns, scores, how many of the row's ``k`` are unmasked). One ``torch.topk`` for
    the threshold, then exact selection: routes score many ties (popularity, an empty
    co-occurrence row), where ``topk`` alone picks among tied columns arbitrarily. Only rows with
    more tied columns at the threshold than places left pay for the cumulative count.
    """
    n, m = scores.shape
    kk = min(k, m)
    if n == 0 or kk <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32), np.zeros(n, np.int64)
    t = torch.from_numpy(scores)
    # One extra place shows whether the k-th score ties with a column left out: only such rows
    # need the exact (lowest columns first) choice among the tied columns.
    top = torch.topk(t, min(kk + 1, m), dim=1)
    idx, val = top.indices[:, :kk].numpy().copy(), top.values[:, :kk].numpy().copy()
    if kk < m:
        crowded = np.flatnonzero(top.values[:, kk].numpy() == val[:, kk - 1])
        if crowded.size:
            sub = t[torch.from_numpy(crowded)]
            thr = torch.from_numpy(val[crowded, kk - 1 :])
            gt, eq = sub > thr, sub == thr
            need = kk - torch.from_numpy((val[crowded] > val[crowded, kk - 1 :]).sum(1, keepdims=True))
            sel = gt | (eq & (eq.cumsum(1, dtype=torch.int32) <= need))
            r, c = sel.nonzero(as_tuple=True)  # row-major: exactly kk per row
            idx[crowded] = c.view(-1, kk).numpy()
            val[crowded] = sub[r, c].view(-1, kk).numpy()
    order = np.lexsort((idx, -val), axis=-1)
    idx, val = np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1)
    return idx, val, np.isfinite(val).sum(1)


class RoutedRecommender(Recommender):
    """A registered artifact served through its routing table: a ``Recommender`` in every other way.

    ``top_k_for_users(histories, k)`` -> ``{user: RoutedItems([(item_id, score), ...], route)}``:
    each user's segment (target-domain events in their history) picks the route stored for it,
    and the list says which route it took. Scores are the route's row-normalised scores (0-1
    within a user; a blend's weighted sum of them), not probabilities. Adding an item
    (``add_item``, e.g. a streamed catalogue item) makes it scorable by the model and by every
    blend with the model in it; the training-free scorers have no counts for it and give it
    their lowest score. ``ranks`` (the gate's re-scoring) stays the plain model's.
    """

    def __init__(self, version: str, path: Path) -> None:
        super().__init__(version, path)
        rdir = Path(path) / "routing"
        if not has_routing(path):
            raise FileNotFoundError(f"{path} has no routing table (routing/routing.json); it was registered before routing existed")
        self.table = RoutingTable.from_dict(json.loads((rdir / "routing.json").read_text()))
        import pandas as pd

        items = pd.read_parquet(Path(path) / "items.parquet", columns=["domain_code"])
        dom = items["domain_code"].to_numpy().astype(np.int8)
        offsets = {d: int(np.flatnonzero(dom == d)[0]) if (dom == d).any() else 0 for d in (SOURCE, TARGET)}
        # Per index row: its domain code and its index local to that domain, as the scorers were
        # fitted (-1: neither, e.g. the padding row); rows added later (streamed items) lie past the end.
        self._local_dom = np.full(len(dom), -1, np.int8)
        self._local_idx = np.full(len(dom), -1, np.int64)
        for d in (SOURCE, TARGET):
            at = np.flatnonzero(dom == d)
            at = at[at > 0]
            self._local_dom[at], self._local_idx[at] = d, at - offsets[d]
        counts = np.load(rdir / "popularity.npy")
        self._pop = normalise_rows(counts.astype(np.float32)[None, :])
        self._is_tail = tail_items(counts)  # what the tail slots may hold (items streamed in later have no text neighbours)
        self._knn = {name: _load_knn(rdir / f"{name}.npz") for name in ("item_knn", "source_cooc")}
        self._knn_t = {name: (_sparse_t(m.by_user), _sparse_t(m.by_item)) for name, m in self._knn.items()}
        self.n_trained_targets = int(self._pop.shape[1])
        if self.n_trained_targets != len(self._target_rows) or self._knn["item_knn"].by_item.shape[0] != self.n_trained_targets:
            raise ValueError(f"{path}: the routing scorers cover {self.n_trained_targets} target items but the model has {len(self._target_rows)}")
        # text_knn's table; tables written before it existed have none and no route that uses it
        self._text: TextNeighbours | None = None
        if (rdir / "text_knn.npz").exists():
            z = np.load(rdir / "text_knn.npz")
            self._text = TextNeighbours(z["cols"], z["values"])
            if self._text.cols.shape[0] != self.n_trained_targets:
                raise ValueError(f"{path}: text_knn covers {self._text.cols.shape[0]} target items but the model has {self.n_trained_targets}")
        elif any("text_knn" in (route, *weights) for route, weights in map(self.route_of_segment, self.table.routes)) or any(c.tail_slots for c in self.table.routes.values()):
            raise FileNotFoundError(f"{path}: the routing table uses text_knn (a route or its tail slots) but routing/text_knn.npz is missing")

    def route_of_segment(self, segment: str) -> tuple[str, dict[str, float]]:
        choice = self.table.routes.get(segment)
        if choice is None:
            return REFERENCE, {}
        return choice.route, ({n: w for n, w in choice.blend_weights.items() if w} if choice.route == "blend" else {})

    def _training_free(self, name: str, users: np.ndarray, rows: np.ndarray, n_users: int) -> np.ndarray | SparseScores:
        """Row-normalised scores of one training-free scorer over the trained target items:
        popularity is one row (the same for every user), co-occurrence and text_knn are sparse.
        ``users``/``rows``: the user and index row (-1: unknown) of every history event."""
        if name == "popularity":
            return self._pop
        want = SOURCE if name == "source_cooc" else TARGET
        fitted = (rows >= 0) & (rows < self._local_dom.size)
        hit = np.flatnonzero(fitted)
        hit = hit[self._local_dom[rows[hit]] == want]
        if name == "text_knn":
            assert self._text is not None  # checked at load for every route that names it
            u = users[hit]
            last = np.flatnonzero(np.r_[u[1:] != u[:-1], True]) if u.size else np.zeros(0, np.int64)  # each user's last target event
            at, cols, vals = self._text.of(self._local_idx[rows[hit[last]]])
            return SparseScores(u[last][at], cols, vals, (n_users, self.n_trained_targets)).normalised()
        by_user_t, by_item_t = self._knn_t[name]
        return knn_scores(by_user_t, by_item_t, users[hit], self._local_idx[rows[hit]], n_users).normalised()

    def _route_scores(
        self, route: str, weights: dict[str, float], histories: Sequence[History], users: np.ndarray, looked_up: tuple[np.ndarray, np.ndarray], n_now: int
    ) -> np.ndarray:
        """(users, n_now target items) float32 scores of ``route``; items added since training
        take the training-free scorers' lowest score (0 after normalisation). ``users`` and
        ``looked_up`` (``look_up`` of ``histories``) give every history event's user and row.

        The matrix is this thread's scratch buffer (the model's logits are computed into it and
        normalised there; a blend without the model starts from it zeroed), so it is valid until
        the thread scores its next batch; every part is added into it in place, the dense parts
        first, then the sparse ones.
        """
        parts = weights if route == "blend" else {route: 1.0}
        n = len(histories)
        if REFERENCE in parts:
            full = normalise_rows_(torch.from_numpy(self._buffered_logits(histories, looked_up)))
            if parts[REFERENCE] != 1.0:
                full.mul_(parts[REFERENCE])
        else:
            full = self._scratch(self._thread_flat(), n, n_now).zero_()
        out = full[:, :n_now]  # the model's logits may hold items added after ``n_now`` was read
        for name, w in parts.items():
            if name == REFERENCE:
                continue
            m = self._training_free(name, users, looked_up[0], n)
            if isinstance(m, SparseScores):
                # (row, col) pairs are unique: one scatter-add over the flat buffer
                at = torch.from_numpy(m.rows * full.shape[1] + m.cols)
                full.view(-1).index_add_(0, at, torch.from_numpy(m.values), alpha=w)
            else:
                out[:, : m.shape[1]].add_(torch.from_numpy(m), alpha=w)  # popularity's one row broadcasts
        return out.numpy()

    def _popular_top(self, masks: Sequence[np.ndarray], k: int, n_now: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The popularity route's top-k per user without a (users, items) matrix: every user has
        the same scores, so one ranked row long enough to outlast any user's mask serves all;
        each user takes its first ``k`` unmasked entries (the same list the masked matrix gives)."""
        row = np.zeros((1, n_now), np.float32)
        row[0, : self._pop.shape[1]] = self._pop[0, :n_now]
        longest = max((m.size for m in masks), default=0)
        idx, val, _ = top_k_rows(row, k + longest)
        out_idx, out_val = [], []
        for m in masks:
            keep = ~np.isin(idx[0], m)
            out_idx.append(idx[0][keep][:k])
            out_val.append(val[0][keep][:k])
        return out_idx, out_val

    def _routed(self, histories: Sequence[History], k: int, excludes: Sequence[Iterable[str]] | None = None) -> list[RoutedItems]:
        with self._lock:
            ids, target_rows, n_keys = list(self._target_ids), self._target_rows.copy(), len(self._keys)
            pos = dict(self._target_pos) if excludes is not None else {}
        n_now = len(ids)
        col_of_row = np.full(n_keys, -1, np.int64)
        col_of_row[target_rows] = np.arange(n_now)
        sizes = np.fromiter((len(h) for h in histories), np.int64, len(histories))
        users = np.repeat(np.arange(len(histories)), sizes)
        rows, is_target = self.look_up(histories)
        segs = segment_of(np.bincount(users[is_target], minlength=len(histories)))
        # the columns each user already has (target history, plus ``excludes``): masked from the lists
        seen_col = np.where(is_target & (rows >= 0) & (rows < n_keys), col_of_row[np.clip(rows, 0, n_keys - 1)], -1)
        masks = _split(users, seen_col, len(histories))
        if excludes is not None:
            masks = [np.union1d(m, [pos[x] for x in ex if x in pos]).astype(np.int64) for m, ex in zip(masks, excludes)]
        out: list[RoutedItems] = [RoutedItems()] * len(histories)
        for seg in np.unique(segs):
            members = np.flatnonzero(segs == seg)
            route, weights = self.route_of_segment(str(seg))
            seg_masks = [masks[i] for i in members]
            slots, tailed = 0, [False] * len(members)
            if route == "popularity":
                top_idx, top_val = self._popular_top(seg_masks, k, n_now)
            else:
                in_seg = np.isin(users, members)
                looked_up = (rows[in_seg], is_target[in_seg])
                local = np.searchsorted(members, users[in_seg])
                scores = self._route_scores(route, weights, [histories[i] for i in members], local, looked_up, n_now)
                lens = [m.size for m in seg_masks]
                scores[np.repeat(np.arange(len(members)), lens), np.concatenate(seg_masks) if seg_masks else np.zeros(0, np.int64)] = -np.inf
                choice = self.table.routes.get(str(seg))
                slots = choice.tail_slots if choice is not None and k > WINDOW - choice.tail_slots else 0
                idx, val, keep = top_k_rows(scores, k + slots)
                top_idx = [idx[r, : keep[r]] for r in range(len(members))]
                top_val = [val[r, : keep[r]] for r in range(len(members))]
                if slots:
                    pools = self._slot_pools(local, looked_up[0], len(members), seg_masks)
                    top_idx, top_val, tailed = self._with_slots(top_idx, scores, pools, slots, k)
            for r, i in enumerate(members):
                label = f"{route}+tail" if tailed[r] else route
                out[i] = RoutedItems([(ids[j], float(v)) for j, v in zip(top_idx[r], top_val[r])], label)
        return out

    def _slot_pools(self, users: np.ndarray, rows: np.ndarray, n_users: int, masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per user, the tail items the slots may hold, best first: the last target item's text
        neighbours (``text_knn``, positive scores) with fewer than ``TAIL_MAX_COUNT`` training
        interactions, the user's masked columns left out (ties: lower column first)."""
        sparse = self._training_free("text_knn", users, rows, n_users)
        assert isinstance(sparse, SparseScores)
        keep = (sparse.values > 0) & self._is_tail[sparse.cols]
        r, c, v = sparse.rows[keep], sparse.cols[keep], sparse.values[keep]
        order = np.lexsort((c, -v, r))
        r, c = r[order], c[order]
        bounds = np.searchsorted(r, np.arange(n_users + 1))
        return [c[bounds[u] : bounds[u + 1]][~np.isin(c[bounds[u] : bounds[u + 1]], masks[u])] for u in range(n_users)]

    @staticmethod
    def _with_slots(top_idx: list[np.ndarray], scores: np.ndarray, pools: list[np.ndarray], slots: int, k: int) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]]:
        """``tail_slots.merge`` per user: the lists with their slots filled, and whether a slot
        brought in an item the route's first ``WINDOW`` did not hold. An item keeps its route
        score except in a slot, where it shows the score of the last route place above it (its
        own is lower): the list stays best-first by score, so a writer that orders by score
        (``publish.make_rec_list``) keeps the slots where they are."""
        out_idx, out_val, tailed = [], [], []
        for r, order in enumerate(top_idx):
            route_order = order.tolist()
            picked = pick_slots(route_order, pools[r].tolist(), slots)
            merged = np.asarray(merge(route_order, picked, slots, k), np.int64)
            val = scores[r, merged].astype(np.float32) if merged.size else np.zeros(0, np.float32)
            head = min(WINDOW - slots, order.size)
            if head > 0 and merged.size > head:
                val[head : head + len(picked)] = val[head - 1]
            out_idx.append(merged)
            out_val.append(val)
            # the slots change the top WINDOW only by what they bring from below it
            tailed.append(bool(set(picked) - set(route_order[:WINDOW])))
        return out_idx, out_val, tailed

    def score_history(self, history: History, k: int, exclude: Iterable[str] | None = None) -> list[tuple[str, float]]:
        """Top-k target items for one history through its segment's route (a ``RoutedItems``)."""
        return self._routed([history], k, [exclude or ()])[0]

    def top_k_for_users(self, histories: Mapping[str, History], k: int, batch_size: int = 512) -> dict[str, list[tuple[str, float]]]:
        """{user: RoutedItems([(item_id, score), ...], route)}, best first, target history masked;
        users are scored in chunks of ``batch_size``, each segment of a chunk in one batch."""
        users = list(histories)
        out: dict[str, list[tuple[str, float]]] = {}
        for s in range(0, len(users), batch_size):
            chunk = users[s : s + batch_size]
            out.update(zip(chunk, self._routed([histories[u] for u in chunk], k)))
        return out


def _split(users: np.ndarray, cols: np.ndarray, n_users: int) -> list[np.ndarray]:
    """Per user (``users`` sorted ascending, as a batch's events are), the distinct columns >= 0."""
    keep = cols >= 0
    u, c = users[keep], cols[keep]
    bounds = np.searchsorted(u, np.arange(n_users + 1))
    return [np.unique(c[bounds[i] : bounds[i + 1]]) for i in range(n_users)]


def has_routing(path: Path) -> bool:
    """Whether a registered artifact carries a routing table (artifacts registered before
    routing existed, or fitted with ``--no-routing``, do not)."""
    return (Path(path) / "routing" / "routing.json").is_file()
