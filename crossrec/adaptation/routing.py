"""The routed model: per user segment, the scorer that earned it on the selection set.

Why: one trained model is not best everywhere. Users with no target history get an empty sequence
from a target-view model (zero-shot scored .0000 there on Art -> Office) while a training-free
co-occurrence scorer over their *source* history can still rank; users with a long target history
are served well by the model or item-KNN. A route is chosen per segment among

    model        the registered trained model (the reference: what serving did before routing)
    item_knn     co-occurrence cosine from the target history
    source_cooc  co-occurrence cosine from the source history (training-free transfer)
    popularity   training users' target counts
    blend        sum of the row-normalised scores above, weights fitted on the selection set

and a route replaces the reference only when the paired bootstrap CI (selection users) of its gain
excludes zero; otherwise the reference is kept and the table says so. The blend's selection score
is cross-fitted (weights fitted on one half of the users, scored on the other, and vice versa), so
it is not favoured for having been fitted on the users it is judged on.

Segments are by the number of target-domain events in the user's history: ``cold`` (none:
constructed on selection users by hiding their target history), ``1-2``, ``3+``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from crossrec.adaptation.baselines import ItemKNN, Popularity
from crossrec.adaptation.data import SOURCE, TARGET, AdaptData, Catalog, EvalSet
from crossrec.adaptation.scorers import ROUTABLE, TrainingFreeScorers, blend, fit_blend, ndcg_objective, normalise_rows, rank_scores
from crossrec.evaluation import paired_bootstrap, per_user

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
    ci_vs_reference: dict[str, dict] = field(default_factory=dict)
    blend_weights: dict[str, float] = field(default_factory=dict)
    reason: str = ""


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
        return cls({k: RouteChoice(**v) for k, v in d["routes"].items()}, d["strategy"])


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


def fit_routing(
    data: AdaptData,
    scorers: TrainingFreeScorers,
    model_logits: Callable[[EvalSet], np.ndarray],
    segments: Mapping[str, tuple[EvalSet, EvalSet, np.ndarray]],
    strategy: str,
    say: Callable[[str], None] = print,
) -> RoutingTable:
    """Choose a route per segment on the selection set.

    ``segments[seg] = (mixed-view eval set, model-view eval set, rows)``: the two eval sets hold the
    same users in the same order (the model may read only its own view, the scorers read both
    domains); ``model_logits`` scores the model-view set.
    """
    routes: dict[str, RouteChoice] = {}
    for seg, (ev_mixed, ev_model, rows) in segments.items():
        if rows.size < 2:
            routes[seg] = RouteChoice(seg, REFERENCE, int(rows.size), reason="too few selection users: keeping the model")
            continue
        hists = [ev_mixed.histories[i] for i in rows]
        comps = {n: normalise_rows(scorers.score(n, hists)) for n in ROUTABLE}
        comps[REFERENCE] = normalise_rows(model_logits(ev_model)[rows])
        per: dict[str, np.ndarray] = {n: per_user(rank_scores(c, ev_mixed, rows)) for n, c in comps.items()}
        anchor = max(per, key=lambda n: per[n].mean())
        per["blend"], weights = _cross_fitted_blend(comps, ev_mixed, rows, anchor)
        means = {n: float(v.mean()) for n, v in per.items()}
        cis = {n: paired_bootstrap(per[n], per[REFERENCE]) for n in per if n != REFERENCE}
        best = max(means, key=lambda n: means[n])
        if best == REFERENCE:
            route, reason = REFERENCE, "the model is best on the selection set"
        elif cis[best]["lo"] > 0:
            route = best
            reason = f"{best} beats the model by {cis[best]['rel']:+.1%} (95% CI [{cis[best]['lo']:+.4f}, {cis[best]['hi']:+.4f}] excludes zero)"
        else:
            route = REFERENCE
            reason = f"{best} is {cis[best]['rel']:+.1%} over the model but its 95% CI [{cis[best]['lo']:+.4f}, {cis[best]['hi']:+.4f}] includes zero: keeping the model"
        routes[seg] = RouteChoice(seg, route, int(rows.size), means, cis, weights, reason)
        say(f"route {seg}: {route} ({reason})")
    return RoutingTable(routes, strategy)


def score_rows(choice: RouteChoice | None, scorers: TrainingFreeScorers, ev_mixed: EvalSet, model_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The routed scores of ``rows`` of an eval set (offline evaluation of a routing table);
    ``model_rows`` are the model's logits for those rows."""
    route = choice.route if choice is not None else REFERENCE
    names = [n for n, w in choice.blend_weights.items() if w] if (choice is not None and route == "blend") else [route]
    hists = [ev_mixed.histories[i] for i in rows]
    comps = {n: normalise_rows(model_rows if n == REFERENCE else scorers.score(n, hists)) for n in names}
    return blend(comps, {n: choice.blend_weights[n] for n in names}) if route == "blend" else comps[route]  # type: ignore[union-attr]


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


@dataclass
class RoutedList:
    items: list[str]
    scores: list[float]
    route: str


class RoutedRecommender:
    """Serves a registered artifact through its routing table.

    ``top_k_for_users(histories, k)`` -> ``{user: RoutedList(items, scores, route)}``: each user's
    segment (target events in their history) picks the route; the list says which route it took.
    Scores are the route's row-normalised scores (0-1 within a user), not probabilities.
    """

    def __init__(self, version: str, path: Path) -> None:
        from crossrec.adaptation.inference import Recommender

        self.rec = Recommender(version, path)
        self.version = version
        rdir = Path(path) / "routing"
        if not (rdir / "routing.json").is_file():
            raise FileNotFoundError(f"{path} has no routing table (routing/routing.json); it was registered before routing existed")
        self.table = RoutingTable.from_dict(json.loads((rdir / "routing.json").read_text()))
        import pandas as pd

        items = pd.read_parquet(Path(path) / "items.parquet")
        dom = items["domain_code"].to_numpy().astype(np.int8)
        keys = list(zip(items["domain"], items["item_id"]))
        src = np.flatnonzero(dom == SOURCE)
        tgt = np.flatnonzero(dom == TARGET)
        cat = Catalog(keys, dom, np.zeros((len(keys), 1), np.float32), int(src[0]) if src.size else 1, int(tgt[0]))
        cat.index = {k: i for i, k in enumerate(keys) if i > 0}
        data = AdaptData(cat, {}, {"train": [], "valid": [], "test": []}, self.rec.source_domain, self.rec.target_domain, "", "")
        pop = Popularity(counts=np.load(rdir / "popularity.npy"))
        self.scorers = TrainingFreeScorers(data, pop, _load_knn(rdir / "item_knn.npz"), _load_knn(rdir / "source_cooc.npz"))
        self._cat = cat

    def _global(self, history: Sequence[tuple[str, str]]) -> np.ndarray:
        idx = [self._cat.index.get((d, i), 0) for d, i in history]
        return np.asarray([g for g in idx if g > 0], np.int64)

    def _route_scores(self, route: str, histories: Sequence[Sequence[tuple[str, str]]], weights: dict[str, float]) -> np.ndarray:
        n_now = len(self.rec.target_items)  # items added since training score 0 from the scorers
        need = set(weights) if route == "blend" else {route}
        comps: dict[str, np.ndarray] = {}
        g = [self._global(h) for h in histories]
        for name in need:
            if name == REFERENCE:
                m = self.rec.logits(histories)
            else:
                m = self.scorers.score(name, g)
                if m.shape[1] < n_now:
                    m = np.pad(m, ((0, 0), (0, n_now - m.shape[1])))
            comps[name] = normalise_rows(m)
        return blend(comps, {n: w for n, w in weights.items() if n in comps}) if route == "blend" else comps[route]

    def top_k_for_users(self, histories: Mapping[str, Sequence[tuple[str, str]]], k: int) -> dict[str, RoutedList]:
        users = list(histories)
        by_route: dict[str, list[str]] = {}
        seg_of: dict[str, str] = {}
        for u in users:
            n_t = sum(1 for d, _ in histories[u] if d == self.rec.target_domain)
            seg = str(segment_of(n_t))
            seg_of[u] = seg
            by_route.setdefault(seg, []).append(u)
        out: dict[str, RoutedList] = {}
        for seg, us in by_route.items():
            choice = self.table.routes.get(seg)
            route = choice.route if choice is not None else REFERENCE
            weights = choice.blend_weights if choice is not None else {}
            hs = [histories[u] for u in us]
            scores = self._route_scores(route, hs, weights)
            masks = self.rec._masks(hs, None)
            ids = self.rec.target_items
            for u, s, m in zip(us, scores, masks):
                s = s.astype(np.float64).copy()
                s[m] = -np.inf
                kk = min(k, int(np.isfinite(s).sum()))
                top = np.argsort(-s, kind="stable")[:kk]
                out[u] = RoutedList([ids[j] for j in top], [float(s[j]) for j in top], route)
        return out


def load_routed(version: str, path: Path) -> RoutedRecommender:
    return RoutedRecommender(version, path)
