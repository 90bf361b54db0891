"""Serving the routed model: publish, the consumer and the API go through the registered routing
table, and every stored list says which route it took. Real Redis and broker, a real trained model.

The artifact's table is set by the test (cold -> source co-occurrence, 1-2 -> item-KNN, 3+ -> a
blend with the model), so each segment's route is known and differs from the others; the fitted
scorers and model behind it are the ones `crossrec adapt` registered.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from kafka import KafkaProducer
from streaming_support import isolated_settings

from crossrec.adaptation.baselines import ItemKNN
from crossrec.adaptation.inference import Recommender, load_current
from crossrec.adaptation.model import ModelConfig
from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
from crossrec.adaptation.routing import RouteChoice, RoutedRecommender, RoutingTable, SparseScores, _sparse_t, knn_scores, segment_of, top_k_rows
from crossrec.adaptation.data import load_adapt_data
from crossrec.adaptation.scorers import TrainingFreeScorers, normalise_rows
from crossrec.adaptation.synthetic import write_synthetic
from crossrec.adaptation.trainer import TrainConfig
from crossrec.batch_publish import publish
from crossrec.publish import make_rec_list
from crossrec.keys import KeySchema, RecList
from crossrec.registry import registry_for
from crossrec.settings import Settings
from crossrec.streaming.consumer import RecsConsumer
from crossrec.streaming.scoring import load_scorer
from serving.app import create_app

ROUTES = {"cold": "source_cooc", "1-2": "item_knn", "3+": "blend"}
BLEND = {"model": 1.0, "item_knn": 0.3, "popularity": 0.03}
COLD_USERS = {"COLD1": ["art-001", "art-004"], "COLD2": ["art-017", "art-022", "art-025"]}
THIN_USER = [("art", "art-002"), ("office", "office-003"), ("office", "office-009")]  # the 1-2 segment


# ------------------------------------------------------------------------------ pure logic
def test_top_k_rows_is_a_stable_sort_on_tie_heavy_masked_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(300, 40)).astype(np.float32)  # ties everywhere
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[:5, 3:] = -np.inf  # rows with fewer unmasked items than k
    for k in (1, 7, 40, 60):
        idx, val, keep = top_k_rows(scores.copy(), k)
        for r in range(scores.shape[0]):
            ref = np.argsort(-scores[r], kind="stable")[: min(k, 40)]
            ref = ref[np.isfinite(scores[r, ref])]
            assert keep[r] == ref.size and list(idx[r, : keep[r]]) == list(ref), (k, r)
            assert np.array_equal(val[r, : keep[r]], scores[r, ref])


def test_sparse_knn_scores_equal_the_fitted_item_knn() -> None:
    rng = np.random.default_rng(1)
    n_users, n_hist, n_target = 50, 30, 20

    def factor(rows: int, cols: int) -> torch.Tensor:
        dense = torch.from_numpy((rng.random((rows, cols)) < 0.15) * rng.random((rows, cols)))
        return dense.to_sparse().coalesce()

    knn = ItemKNN(by_user=factor(n_users, n_hist), by_item=factor(n_target, n_users), n_history_items=n_hist)
    histories = [rng.choice(n_hist, size=rng.integers(0, 6), replace=False) for _ in range(25)]
    rows = np.concatenate([np.full(h.size, u) for u, h in enumerate(histories)]).astype(np.int64)
    cols = np.concatenate(histories).astype(np.int64)
    got = knn_scores(_sparse_t(knn.by_user), _sparse_t(knn.by_item), np.concatenate([rows, rows]), np.concatenate([cols, cols]), len(histories))
    want = knn.scores(histories).astype(np.float32)
    assert np.array_equal(got.dense(), want)  # repeated history items count once
    assert np.array_equal(got.normalised().dense(), normalise_rows(want))  # what the fitted scorers' blend reads
    full = SparseScores(np.repeat(np.arange(2), 3), np.tile(np.arange(3), 2), np.asarray([2, 3, 5, 4, 4, 4], np.float32), (2, 3))
    assert np.array_equal(full.normalised().dense(), normalise_rows(full.dense()))  # rows without zeros: own minimum


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def routed_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained, registered model whose routing table the test sets, plus cleaned data with two
    users who have only source-domain events (the cold segment) and one with two target events."""
    work = write_synthetic(tmp_path_factory.mktemp("routed") / "work", n_users=40, n_items=30, dim=16)
    run_adapt(
        AdaptOptions(
            input_dir=work, output_dir=work / "adapt", strategies=["target_only"], seeds=[0], fractions=[],
            split_path=work / "users_split.json", registry_dir=work / "registry",
            model=ModelConfig(dim=16, max_len=12), train=TrainConfig(max_epochs=1, patience=1),
        ),
        say=lambda _: None,
    )
    reg = registry_for(work)
    rdir = reg.path(reg.current()) / "routing"
    table = RoutingTable({seg: RouteChoice(seg, route, 10, blend_weights=BLEND if route == "blend" else {}) for seg, route in ROUTES.items()}, "target_only")
    (rdir / "routing.json").write_text(json.dumps(table.to_dict()))
    events = pd.read_parquet(work / "clean" / "events", columns=["user_id", "domain", "item_id", "event_type", "ts_ms"])
    events["domain"] = events["domain"].astype(str)
    t0 = int(events["ts_ms"].min())
    cold = [(u, "art", item, "purchase", t0 + n) for u, items in COLD_USERS.items() for n, item in enumerate(items)]
    cold += [("THIN", d, item, "purchase", t0 + n) for n, (d, item) in enumerate(THIN_USER)]
    events = pd.concat([events, pd.DataFrame(cold, columns=events.columns)], ignore_index=True)
    (work / "clean_routed" / "events").mkdir(parents=True)
    events.to_parquet(work / "clean_routed" / "events" / "part-0.parquet")
    shutil.copytree(work / "clean" / "items", work / "clean_routed" / "items")
    return work


@pytest.fixture()
def settings(services_settings: Settings, routed_work: Path, redis_client) -> Settings:
    kafka = isolated_settings(services_settings).kafka
    return services_settings.model_copy(update={"work_dir": routed_work, "kafka": kafka, "top_k": 5})


def _segment_route(history: list[tuple[str, str]]) -> str:
    n = sum(1 for d, _ in history if d == "office")
    return ROUTES["cold" if n == 0 else "1-2" if n <= 2 else "3+"]


def _stored(redis_client, settings: Settings, user: str) -> RecList:
    raw = redis_client.get(KeySchema(settings.key_prefix).recs(settings.target_domain, user))
    assert raw is not None, f"no list for {user}"
    return RecList.from_json(raw)


def _pairs(stored: RecList) -> list[tuple[str, float]]:
    return [(i.item_id, i.score) for i in stored.items]  # scores round-trip JSON exactly


# ------------------------------------------------------------------------------ loading
def test_loader_serves_the_routing_table_and_falls_back_to_the_plain_model(settings: Settings, tmp_path: Path) -> None:
    routed = load_current(settings)
    assert isinstance(routed, RoutedRecommender) and routed.table.routes["cold"].route == "source_cooc"
    off = settings.model_copy(update={"serving": settings.serving.model_copy(update={"routing": False})})
    assert type(load_current(off)) is Recommender
    plain_dir = tmp_path / "plain"
    shutil.copytree(registry_for(settings.work_dir).path(routed.version), plain_dir, ignore=shutil.ignore_patterns("routing"))
    from crossrec.adaptation.inference import load_model

    assert type(load_model(settings, "vX", plain_dir)) is Recommender  # registered before routing existed

    # a cold user is routed by their source history, not given the model's empty-sequence list
    cold = {u: [("art", i) for i in items] for u, items in COLD_USERS.items()}
    model_lists = load_current(off).top_k_for_users(cold, k=5)
    assert model_lists["COLD1"] == model_lists["COLD2"]  # the target-view model sees two empty sequences
    lists = routed.top_k_for_users(cold, k=5)
    assert all(lst.route == "source_cooc" for lst in lists.values())
    assert [i for i, _ in lists["COLD1"]] != [i for i, _ in lists["COLD2"]]  # each is read from its own source history

    # a streamed catalogue item is scorable by every route (the training-free ones rank it last)
    routed.add_item("office", "office-new", np.ones(16, np.float32))
    everyone = {"c": [("art", "art-001")], "w1": [("office", "office-001")], "w3": [("office", f"office-00{i}") for i in range(3)]}
    full = routed.top_k_for_users(everyone, k=100)
    assert {full[u].route for u in everyone} == set(ROUTES.values())
    assert all("office-new" in [i for i, _ in full[u]] for u in everyone)
    assert routed.n_trained_targets + 1 == len(routed.target_items)


def test_a_popularity_route_serves_the_stored_counts_and_older_tables_load(routed_work: Path, tmp_path: Path) -> None:
    """Cold users routed to their popularity fallback get the training counts' order (the same
    list for every one of them, history masked); a table in the layout written before fallbacks
    existed (``ci_vs_reference``, no ``fallback``) still loads and serves."""
    reg = registry_for(routed_work)
    art = tmp_path / "art"
    shutil.copytree(reg.path(reg.current()), art)
    old = {seg: {"segment": seg, "route": route, "n_users": 10, "selection_ndcg10": {}, "ci_vs_reference": {}, "blend_weights": {}, "reason": "old"}
           for seg, route in {"cold": "popularity", "1-2": "item_knn", "3+": "model"}.items()}
    (art / "routing" / "routing.json").write_text(json.dumps({"strategy": "target_only", "routes": old}))
    rr = RoutedRecommender("vP", art)
    assert rr.table.routes["cold"].fallback == "model"  # the only fallback those tables had
    counts = np.load(art / "routing" / "popularity.npy")
    order = [rr.target_items[j] for j in np.argsort(-counts, kind="stable")]
    cold = {u: [("art", i) for i in items] for u, items in COLD_USERS.items()}
    lists = rr.top_k_for_users(cold, k=5)
    for lst in lists.values():
        assert lst.route == "popularity" and [i for i, _ in lst] == order[:5]
    thin_masked = rr.top_k_for_users({"T": [("art", "art-001"), *[("office", i) for i in order[:1]]]}, k=5)["T"]
    assert thin_masked.route == "item_knn" and order[0] not in [i for i, _ in thin_masked]


def test_a_table_that_uses_text_knn_needs_its_stored_neighbours(routed_work: Path, tmp_path: Path) -> None:
    """Without ``routing/text_knn.npz`` (an artifact written before text_knn existed) a table
    whose routes never name it loads; one with text_knn in a blend is refused at load."""
    reg = registry_for(routed_work)
    art = tmp_path / "art"
    shutil.copytree(reg.path(reg.current()), art)
    (art / "routing" / "text_knn.npz").unlink()
    RoutedRecommender("vOld", art)  # the fixture's table: source_cooc, item_knn, a blend without text_knn
    table = RoutingTable({"3+": RouteChoice("3+", "blend", 10, blend_weights={"model": 1.0, "text_knn": 0.1})}, "target_only")
    (art / "routing" / "routing.json").write_text(json.dumps(table.to_dict()))
    with pytest.raises(FileNotFoundError, match="text_knn"):
        RoutedRecommender("vNew", art)


def _reference_routed(rr: RoutedRecommender, histories: list[list[tuple[str, str]]], k: int) -> list[tuple[str, list[tuple[str, float]]]]:
    """Each user's routed list the plain way: per user, the dense score matrix of its segment's
    route (the model's logits normalised in fresh memory, the fitted co-occurrence scorers' dense
    scores from local indices found by a per-event loop, popularity broadcast), summed in the
    route's order, history masked, then the exact top-k."""
    n_now = len(rr.target_items)
    items = pd.read_parquet(rr.path / "items.parquet", columns=["domain", "item_id"])  # the catalogue the scorers were fitted on
    trained = list(zip(items["domain"].astype(str), items["item_id"]))
    local = {name: {key: j for j, key in enumerate(k_ for k_ in trained if k_[0] == dom)} for name, dom in (("item_knn", "office"), ("source_cooc", "art"))}
    out = []
    for h in histories:
        route, weights = rr.route_of_segment(str(segment_of(sum(1 for d, _ in h if d == "office"))))
        dense = np.zeros((1, n_now), np.float32)
        for name, w in (weights if route == "blend" else {route: 1.0}).items():
            if name == "model":
                comp = normalise_rows(rr.logits([h]))[:, :n_now]
            elif name == "popularity":
                comp = normalise_rows(np.load(rr.path / "routing" / "popularity.npy").astype(np.float32)[None, :])
            elif name == "text_knn":  # the stored neighbours of the last trained target item
                table = np.load(rr.path / "routing" / "text_knn.npz")
                last = [local["item_knn"][key] for key in h if key in local["item_knn"]]
                comp = np.zeros((1, len(local["item_knn"])), np.float32)
                if last:
                    cols = table["cols"][last[-1]]
                    comp[0, cols[cols >= 0]] = table["values"][last[-1]][cols >= 0]
                comp = normalise_rows(comp)
            else:
                idx = [local[name][key] for key in h if key in local[name]]
                comp = normalise_rows(rr._knn[name].scores([np.asarray(idx, np.int64)]).astype(np.float32))
            dense[:, : comp.shape[1]] += np.float32(w) * comp
        seen = [j for j, item in enumerate(rr.target_items) if ("office", item) in set(h)]
        dense[0, seen] = -np.inf
        idx, val, keep = top_k_rows(dense, k)
        out.append((route, [(rr.target_items[j], float(v)) for j, v in zip(idx[0, : keep[0]], val[0, : keep[0]])]))
    return out


@pytest.mark.parametrize(
    "routes",
    [
        ROUTES,
        {"cold": "popularity", "1-2": "model", "3+": "popularity"},
        {"cold": "blend", "1-2": "blend", "3+": "model"},
        {"cold": "text_knn", "1-2": "blend", "3+": "text_knn"},
    ],
    ids=["knn-cooc-blend", "popularity-model", "blends", "text"],
)
def test_batched_routed_lists_equal_a_plain_dense_build_per_user(routed_work: Path, tmp_path: Path, routes: dict[str, str]) -> None:
    """The batched routed path (segments split, the model's logits normalised in the reused
    buffer, sparse scatter-adds, the popularity route ranked once for all) against a per-user
    dense build, on one batch mixing every segment, a streamed item, unknown and repeated items."""
    reg = registry_for(routed_work)
    art = tmp_path / "art"
    shutil.copytree(reg.path(reg.current()), art)
    weights = {"cold": {"popularity": 0.4, "source_cooc": 1.0, "model": 0.25}, "1-2": {"item_knn": 1.0, "popularity": 0.2, "source_cooc": 0.5, "text_knn": 0.7}}
    table = RoutingTable({seg: RouteChoice(seg, r, 10, blend_weights=weights.get(seg, BLEND) if r == "blend" else {}) for seg, r in routes.items()}, "target_only")
    (art / "routing" / "routing.json").write_text(json.dumps(table.to_dict()))
    rr = RoutedRecommender("vR", art)
    rr.path = art
    fitted = TrainingFreeScorers.fit(load_adapt_data(routed_work, split_path=routed_work / "users_split.json"), []).text_neighbours()
    stored = np.load(art / "routing" / "text_knn.npz")
    assert np.array_equal(stored["cols"], fitted.cols) and np.array_equal(stored["values"], fitted.values)  # what fit_routing chose on
    rr.add_item("office", "office-new", np.full(16, 0.5, np.float32))
    rng = np.random.default_rng(4)
    keys = rr._keys[1:]
    histories = [[keys[j] for j in rng.integers(0, len(keys), rng.integers(0, 14))] for _ in range(60)]
    histories += [[("art", i) for i in items] for items in COLD_USERS.values()] + [THIN_USER, THIN_USER + [("office", "office-new")]]
    histories += [[("art", "no-such"), ("office", "no-such"), *THIN_USER, *THIN_USER]]  # unknown and repeated items
    got = rr.top_k_for_users({f"u{i}": h for i, h in enumerate(histories)}, k=7)
    want = _reference_routed(rr, histories, 7)
    assert {r for r, _ in want} == set(routes.values())  # every route of the table is exercised
    for i, (route, items) in enumerate(want):
        lst = got[f"u{i}"]
        assert lst.route == route and [item for item, _ in lst] == [item for item, _ in items], (i, route)
        assert np.allclose([s for _, s in lst], [s for _, s in items], rtol=1e-5, atol=1e-6), (i, route)



def test_tail_slots_serve_the_merged_ranking_the_evaluation_scores(routed_work: Path, tmp_path: Path) -> None:
    """A table with tail slots: each list is ``tail_slots.merge`` of the route's full order (the
    plain per-user build above) and the user's tail items nearest their last trained target item
    by text (stored neighbours, stored counts < 5, history left out); a list whose slots took an
    item says ``<route>+tail``; segments without slots and lists shorter than the window are the route's."""
    from crossrec.adaptation.tail_slots import TAIL_MAX_COUNT, WINDOW, merge

    reg = registry_for(routed_work)
    art = tmp_path / "art"
    shutil.copytree(reg.path(reg.current()), art)
    counts = np.load(art / "routing" / "popularity.npy")
    assert 0 < (counts < TAIL_MAX_COUNT).sum() < counts.size  # the fixture has tail and head items
    routes = {"cold": RouteChoice("cold", "source_cooc", 10), "1-2": RouteChoice("1-2", "item_knn", 10, tail_slots=2),
              "3+": RouteChoice("3+", "blend", 10, blend_weights=BLEND, tail_slots=1)}
    (art / "routing" / "routing.json").write_text(json.dumps(RoutingTable(routes, "target_only").to_dict()))
    rr = RoutedRecommender("vT", art)
    rr.path = art
    table = np.load(art / "routing" / "text_knn.npz")
    items = pd.read_parquet(art / "items.parquet", columns=["domain", "item_id"])
    office = [i for d, i in zip(items["domain"].astype(str), items["item_id"]) if d == "office"]
    rng = np.random.default_rng(7)
    keys = rr._keys[1:]
    histories = [[keys[j] for j in rng.integers(0, len(keys), rng.integers(0, 14))] for _ in range(80)]
    histories += [[("art", i) for i in it] for it in COLD_USERS.values()] + [THIN_USER]
    n_now = len(rr.target_items)
    full = _reference_routed(rr, histories, n_now)
    for k in (12, 7):
        got = rr.top_k_for_users({f"u{i}": h for i, h in enumerate(histories)}, k=k)
        slotted = 0
        for i, (h, (route, order)) in enumerate(zip(histories, full)):
            seg = str(segment_of(sum(1 for d, _ in h if d == "office")))
            s = routes[seg].tail_slots if k > WINDOW - routes[seg].tail_slots else 0
            last = [office.index(item) for d, item in h if d == "office" and item in office]
            pool: list[str] = []
            if s and last:
                cols, vals = table["cols"][last[-1]], table["values"][last[-1]]
                ranked = sorted((-v, c) for c, v in zip(cols, vals) if c >= 0 and v > 0 and counts[c] < TAIL_MAX_COUNT)
                pool = [office[c] for _, c in ranked if ("office", office[c]) not in set(h)]
            route_items = [item for item, _ in order]
            want = merge(route_items, pool, s, k)
            lst = got[f"u{i}"]
            assert [item for item, _ in lst] == want, (i, seg, k)
            moved = bool(set(want[:WINDOW]) - set(route_items[:WINDOW]))
            assert lst.route == (f"{route}+tail" if moved else route), (i, seg)
            slotted += moved
            # each item keeps its route score, but a slot shows the score of the place above it,
            # so the list stays best-first by score and the writer's ordering keeps the slots
            score_of = dict(order)
            head = WINDOW - s
            shown = [score_of[item] if not (head <= p < head + s and item in pool) else score_of[want[head - 1]] for p, item in enumerate(want)]
            assert np.allclose([sc for _, sc in lst], shown, rtol=1e-5, atol=1e-6), (i, seg)
            written = make_rec_list([it for it, _ in lst], [sc for _, sc in lst], "vT", route=lst.route)
            assert [it.item_id for it in written.items] == want
        assert slotted > 5 if k == 12 else slotted == 0  # k = 7 < WINDOW - s: no slot shows


# ------------------------------------------------------------------------------ publish + API
def test_publish_writes_each_users_list_through_its_route_and_the_api_shows_it(settings: Settings, redis_client) -> None:
    clean = settings.work_dir / "clean_routed"
    summary = publish(settings, clean)
    events = pd.read_parquet(clean / "events").sort_values(["user_id", "ts_ms"], kind="stable")
    histories = {u: list(zip(g["domain"].astype(str), g["item_id"])) for u, g in events.groupby("user_id", sort=False)}
    assert summary.users == len(histories) == summary.lists_written
    rr = RoutedRecommender(summary.model_version, registry_for(settings.work_dir).path(summary.model_version))
    expected = rr.top_k_for_users(histories, settings.top_k)
    seen_routes = set()
    for user, history in histories.items():
        stored = _stored(redis_client, settings, user)
        assert stored.route == _segment_route(history) == expected[user].route, user
        assert _pairs(stored) == list(expected[user]), user
        seen_routes.add(stored.route)
    assert seen_routes == set(ROUTES.values())  # every segment is present and served by its own route
    assert summary.routes == {r: sum(1 for h in histories.values() if _segment_route(h) == r) for r in seen_routes}

    with TestClient(create_app(settings)) as api:
        body = api.get("/recommendations/office/COLD1").json()
        assert body["route"] == "source_cooc" and body["source"] == "batch" and len(body["items"]) == 5
        warm = next(u for u, h in histories.items() if _segment_route(h) == "blend")
        assert api.get(f"/recommendations/office/{warm}").json()["route"] == "blend"
        assert api.get("/recommendations/office/NOBODY").json()["route"] is None  # popular fallback: no route

    # a list without a route (an unrouted model, an older writer) still reads, as route None
    old = RecList(items=[], model_version="v0000").to_json("office")
    assert '"route"' not in old
    redis_client.set(KeySchema(settings.key_prefix).recs("office", "OLD"), old)
    assert _stored(redis_client, settings, "OLD").route is None
    with TestClient(create_app(settings)) as api:
        assert api.get("/recommendations/office/OLD").json()["route"] is None


# ------------------------------------------------------------------------------ consumer
def _send(settings: Settings, user: str, events: list[tuple[str, str]], ts_ms: int) -> None:
    producer = KafkaProducer(**settings.kafka.client_kwargs())
    for n, (domain, item) in enumerate(events):
        event = {"user_id": user, "domain": domain, "item_id": item, "event_type": "purchase", "ts": ts_ms + n,
                 "event_id": uuid.uuid4().hex, "schema_version": 1}
        producer.send(settings.kafka.events_topic, key=user.encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()


def test_consumer_writes_the_route_of_the_users_new_segment(settings: Settings, redis_client) -> None:
    """One user goes from cold (source events only) to 1-2 to 3+ target events: each list the
    consumer writes takes the new segment's route and equals the routed model's own top-k."""
    from crossrec.features.store import apply as feast_apply

    publish(settings, settings.work_dir / "clean")  # the catalogue the consumer checks events against
    feast_apply(settings)  # the consumer pushes touched users' features to Feast with each list
    version = registry_for(settings.work_dir).current()
    rr = RoutedRecommender(version, registry_for(settings.work_dir).path(version))
    steps = [
        [("art", "art-003"), ("art", "art-010")],  # cold
        [("office", "office-002")],  # 1-2
        [("office", "office-005"), ("office", "office-011")],  # 3+
    ]
    history: list[tuple[str, str]] = []
    consumer = RecsConsumer(settings, lambda: load_scorer(settings), poll_timeout_ms=200)
    routes = []
    try:
        sent = 0
        for n, step in enumerate(steps):
            _send(settings, "MOVER", step, 1_900_000_000_000 + 10_000 * n)
            sent += len(step)
            consumer.run(max_events=sent, max_seconds=60)
            history += step
            stored = _stored(redis_client, settings, "MOVER")
            assert stored.source == "stream"
            want = rr.top_k_for_users({"MOVER": history}, settings.top_k)["MOVER"]
            assert stored.route == want.route == _segment_route(history), n
            assert _pairs(stored) == list(want), n
            routes.append(stored.route)
    finally:
        consumer.close()
    assert consumer.stats.applied == sent
    assert routes == ["source_cooc", "item_knn", "blend"]


def test_scorer_warm_up_scores_every_route_and_leaves_the_lists_unchanged(settings: Settings) -> None:
    """The consumer's warm-up (before a model's first batch) runs each segment's route once, on
    a one-user batch and a ``max_users`` batch, without counting unknown items or changing a list."""
    from crossrec.streaming.scoring import ModelScorer

    rr = load_current(settings)
    assert isinstance(rr, RoutedRecommender)
    history = [("art", "art-003"), ("office", "office-002"), ("office", "office-005"), ("office", "office-011")]
    before = rr.top_k_for_users({"u": history}, 5)["u"]
    scorer = ModelScorer(rr, settings)
    batches: list[dict] = []
    score = scorer.recommend_many

    def recording(histories, k):  # type: ignore[no-untyped-def]
        lists = score(histories, k)
        batches.append(lists)
        return lists

    scorer.recommend_many = recording  # type: ignore[method-assign]
    unknown = rr.unknown_items
    scorer.warm_up(7, 5)
    assert [len(b) for b in batches] == [1, 7]
    assert [lst.route for lst in batches[0].values()] == [ROUTES["3+"]]  # the one-user batch runs the richest route
    assert {lst.route for lst in batches[1].values()} == set(ROUTES.values())  # cold, 1-2 and 3+ all taken
    assert rr.unknown_items == unknown
    assert rr.top_k_for_users({"u": history}, 5)["u"] == before


def test_consumer_warms_a_new_model_up_before_it_scores(settings: Settings) -> None:
    class Warming:
        version = "m-warm"

        def __init__(self) -> None:
            self.calls: list[tuple[int, int]] = []

        def warm_up(self, max_users: int, k: int) -> None:
            self.calls.append((max_users, k))

    scorer = Warming()
    consumer = RecsConsumer(settings, lambda: scorer, max_poll_records=123)  # type: ignore[arg-type, return-value]
    try:
        consumer._maybe_reload_scorer(force=True)
        assert consumer.scorer is scorer and scorer.calls == [(123, settings.top_k)]
        consumer._maybe_reload_scorer(force=True)  # the same version again: not warmed twice
        assert scorer.calls == [(123, settings.top_k)]
    finally:
        consumer.close()
