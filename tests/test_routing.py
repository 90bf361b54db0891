"""Diagnose + the routed model on generated pairs with domains other than art/office.

A pair with a planted cross-domain signal (target events that are the "twin" of the user's most
recent source item) must be detected by `crossrec diagnose` and recovered by the routed model; the
same commands run unchanged on a pair whose names come from settings. Real torch, small fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossrec.adaptation.model import ModelConfig
from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
from crossrec.adaptation.synthetic import write_synthetic
from crossrec.adaptation.trainer import TrainConfig
from crossrec.diagnose import DiagnoseOptions, run_diagnose
from crossrec.registry import ModelRegistry

PAIR = ("books", "garden")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("planted") / "work", n_users=1000, n_items=60, dim=16, domains=PAIR, planted=0.5)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("plain") / "work", n_users=500, n_items=60, dim=16, domains=PAIR, planted=0.0)


def _diag(work: Path, out: Path) -> dict:
    return run_diagnose(DiagnoseOptions(work, out, *PAIR, split_path=work / "users_split.json", selection_users=250), say=lambda s: None)


def test_diagnose_detects_a_planted_signal_and_not_an_absent_one(planted: Path, plain: Path, tmp_path: Path) -> None:
    d = _diag(planted, tmp_path / "p")
    g = d["overall"]["gain"]
    assert g["rel"] >= 0.20 and g["lo"] > 0 and "transfer is expected to pay" in d["verdict"]
    assert d["source_domain"] == "books" and d["target_domain"] == "garden"
    cold = d["segments"]["no target history (constructed)"]
    assert cold["with_source_ndcg10"] > 2 * cold["target_only_ndcg10"]  # only the source history can rank for them
    assert (tmp_path / "p" / "diagnose.html").read_text().count("data:image/png;base64,") == 1
    n = _diag(plain, tmp_path / "n")
    assert "transfer is not expected to pay" in n["verdict"]
    assert n["overall"]["gain"]["rel"] < g["rel"]


def _adapt(work: Path, out: Path, registry: Path) -> dict:
    torch.set_num_threads(2)
    opts = AdaptOptions(
        input_dir=work, output_dir=out, strategies=["target_only", "popularity", "item_knn"], seeds=[0], fractions=[0.5, 1.0],
        fraction_strategies=["target_only", "item_knn", "routed"],
        source_domain=PAIR[0], target_domain=PAIR[1], split_path=work / "users_split.json", registry_dir=registry,
        model=ModelConfig(dim=16, max_len=12), train=TrainConfig(max_epochs=4, patience=2, selection_users=500),
    )
    return run_adapt(opts, say=lambda s: None)


def test_routed_model_recovers_the_planted_signal_and_serves_with_its_route(planted: Path, tmp_path: Path) -> None:
    from crossrec.adaptation.routing import RoutedRecommender

    res = _adapt(planted, tmp_path / "out", tmp_path / "reg")
    test = res["test"]
    routed, target_only = test["routed"]["NDCG@10"]["mean"], test["target_only"]["NDCG@10"]["mean"]
    assert routed >= 1.2 * target_only  # the planted source signal is worth >= +20 % and is recovered
    cap = res["targets"]["language_and_signal"]["signal_capture"]
    assert cap["diagnose_gain"] >= 0.2 and cap["met"]  # diagnose's G, recovered by the routed model
    assert "0.5" in res["fractions"]["routed"] and "0.5" in res["fractions"]["item_knn"]
    routes = res["routing"]["routes"]
    assert routes["cold"]["route"] != "model"  # an empty target history must read the source history
    # the target-view model reads nothing for cold users: popularity is their fallback, and the
    # source-reading route replaced it because its CI against popularity excludes zero
    assert routes["cold"]["fallback"] == "popularity" and routes["cold"]["ci_vs_fallback"][routes["cold"]["route"]]["lo"] > 0
    assert routes["1-2"]["fallback"] == routes["3+"]["fallback"] == "model"
    for seg in routes.values():  # every choice carries its evidence
        assert seg["reason"] and set(seg["selection_ndcg10"]) >= {"model", "popularity", "item_knn", "source_cooc", "blend"}
    seg_r, seg_p = res["segments"]["routed"]["user"], res["segments"]["popularity"]["user"]
    assert seg_r["no target history (constructed)"]["NDCG@10"] > seg_p["no target history (constructed)"]["NDCG@10"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Routed model" in report and "popularity (the model reads no history for these users" in report  # the fallback and why
    assert "tail slots (why)" in report and all(seg["tail_slot_reason"] for seg in routes.values() if seg["route"] != "popularity" and seg["n_users"] >= 2)
    assert "Transfer diagnosis" in (tmp_path / "out" / "report.html").read_text()

    # the registered artifact carries the routing table; the library API serves through it
    reg = ModelRegistry(tmp_path / "reg")
    version = reg.current()
    assert json.loads((reg.path(version) / "config.json").read_text())["routed"] is True
    rr = RoutedRecommender(version, reg.path(version))
    cold_user = [("books", "books-003"), ("books", "books-007")]
    warm_user = [("books", "books-003"), ("garden", "garden-001"), ("garden", "garden-004"), ("garden", "garden-010")]
    out = rr.top_k_for_users({"c": cold_user, "w": warm_user}, k=5)
    assert out["c"].route == routes["cold"]["route"] and out["w"].route == routes["3+"]["route"]
    items = {u: [i for i, _ in lst] for u, lst in out.items()}
    assert len(items["c"]) == 5 and [s for _, s in out["c"]] == sorted((s for _, s in out["c"]), reverse=True)
    assert not {"garden-001", "garden-004", "garden-010"} & set(items["w"])  # history masked
    assert routes["cold"]["route"] in ("source_cooc", "blend")  # both read the source history
    assert "garden-007" in items["c"]  # the planted twin of the last source item ranks near the top


def test_adapt_and_diagnose_cli_on_a_pair_from_settings(plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Domains come from settings, not code: the same commands run on books -> garden."""
    from typer.testing import CliRunner

    from crossrec.cli import app
    from crossrec.settings import get_settings

    monkeypatch.setenv("CROSSREC_SOURCE_DOMAIN", PAIR[0])
    monkeypatch.setenv("CROSSREC_TARGET_DOMAIN", PAIR[1])
    monkeypatch.setenv("CROSSREC_DOMAINS", json.dumps(list(PAIR)))
    monkeypatch.setenv("CROSSREC_ADAPT__TAIL_SLOT_MARGIN", "0.2")
    get_settings.cache_clear()
    try:
        r = CliRunner().invoke(app, ["diagnose", "--input", str(plain), "--output", str(tmp_path / "d"), "--split", str(plain / "users_split.json"), "--selection-users", "200"])
        assert r.exit_code == 0, r.output
        assert "expected to pay" in r.output
        diag = json.loads((tmp_path / "d" / "diagnose.json").read_text())
        assert diag["target_domain"] == "garden" and diag["overall"]["n_users"] == 100
        r = CliRunner().invoke(app, [
            "adapt", "--input", str(plain), "--output", str(tmp_path / "a"), "--strategies", "target_only,popularity",
            "--fractions", "", "--split", str(plain / "users_split.json"), "--registry", str(tmp_path / "reg"),
            "--no-promote", "--max-epochs", "2", "--dim", "16",
        ])
        assert r.exit_code == 0, r.output
        res = json.loads((tmp_path / "a" / "results.json").read_text())
        assert {"target_only", "popularity", "routed"} <= set(res["test"])
        assert res["diagnose"]["source_domain"] == "books"
        # the tail-slot margin comes from settings too, and every route but popularity tried slots
        assert res["run"]["train"]["tail_slot_margin"] == 0.2
        assert all(c["tail_slot_reason"] for c in res["routing"]["routes"].values() if c["route"] != "popularity" and c["n_users"] >= 2)
    finally:
        get_settings.cache_clear()


def test_diagnose_without_selection_users_is_a_clear_error(tmp_path: Path) -> None:
    from crossrec.diagnose import diagnose_data
    from crossrec.adaptation.data import load_adapt_data

    work = write_synthetic(tmp_path / "w", n_users=20, n_items=9, dim=8, domains=PAIR)
    data = load_adapt_data(work, source=PAIR[0], target=PAIR[1], split_path=work / "users_split.json")
    with pytest.raises(ValueError, match="selection set"):
        diagnose_data(data, selection_users=0, say=lambda s: None)
    assert np.isfinite(diagnose_data(data, selection_users=5, say=lambda s: None)["overall"]["target_only_ndcg10"])


# ------------------------------------------------------------------------------ fallbacks
def _per_user(rng: np.random.Generator, base: np.ndarray, shift: float, noise: float) -> np.ndarray:
    return np.clip(base + shift + rng.normal(scale=noise, size=base.size), 0.0, 1.0)


def test_a_challenger_replaces_the_fallback_only_when_its_ci_against_the_fallback_excludes_zero() -> None:
    from crossrec.adaptation.routing import choose_route

    rng = np.random.default_rng(0)
    base = rng.random(600) * 0.2
    # blend and the model both clearly beat popularity and tie each other: judged against the
    # fallback (popularity), blend wins; judged against the model it would not
    model = _per_user(rng, base, 0.10, 0.02)
    per = {"popularity": base, "item_knn": base * 0.5, "source_cooc": base * 0.5, "model": model, "blend": _per_user(rng, model, 0.003, 0.05)}
    assert per["blend"].mean() > model.mean()
    route, cis, reason = choose_route(per, "popularity")
    assert route == "blend" and cis["blend"]["lo"] > 0 and "beats the fallback popularity" in reason
    assert set(cis) == {"item_knn", "source_cooc", "model", "blend"}  # every challenger against the fallback
    assert choose_route(per, "model")[0] == "model"  # the same numbers against the model: within noise

    # a challenger within noise of the fallback does not replace it, and the reason says so
    noisy = {"popularity": base, "model": _per_user(rng, base, 0.0, 0.05), "blend": _per_user(rng, base, 0.001, 0.05)}
    route, cis, reason = choose_route(noisy, "popularity")
    best = max(("model", "blend"), key=lambda n: noisy[n].mean())
    assert route == "popularity" and cis[best]["includes_zero"] and "includes zero: keeping popularity" in reason
    assert f"resolve about ±{cis[best]['resolution_rel']:.1%}" in reason  # how fine a difference these users can judge

    # nothing above the fallback (e.g. all zero on a handful of users): the fallback, no "+inf %"
    zeros = {n: np.zeros(5) for n in ("popularity", "item_knn", "model", "blend")}
    route, _, reason = choose_route(zeros, "model")
    assert route == "model" and "inf" not in reason and "no candidate beats it" in reason


@pytest.fixture(scope="module")
def no_signal(tmp_path_factory: pytest.TempPathFactory):
    """One topic: neither history says anything about the next target item, so nothing beats
    popularity for a user whose target history is hidden. A real target_only model, trained briefly."""
    from crossrec.adaptation.data import load_adapt_data
    from crossrec.adaptation.strategies import STRATEGIES, RunContext

    torch.set_num_threads(2)
    work = write_synthetic(tmp_path_factory.mktemp("nosignal") / "work", n_users=400, n_items=30, dim=16, n_topics=1, domains=PAIR)
    data = load_adapt_data(work, source=PAIR[0], target=PAIR[1], split_path=work / "users_split.json")
    ctx = RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(max_epochs=2, patience=1, selection_users=200), 0)
    return ctx, STRATEGIES["target_only"](ctx)


def _fit(ctx, trained, view: str):
    from crossrec.adaptation.pipeline import routing_selection
    from crossrec.adaptation.routing import fit_routing
    from crossrec.adaptation.trainer import logits_eval_set

    scorers, segments = routing_selection(ctx, view)
    return fit_routing(ctx.data, scorers, lambda ev: logits_eval_set(trained.model, ctx.data, ev), segments, trained.name, say=lambda s: None)


def test_cold_users_fall_back_to_popularity_where_the_model_reads_no_history(no_signal) -> None:
    ctx, trained = no_signal
    assert trained.view == "target"
    table = _fit(ctx, trained, "target")
    cold = table.routes["cold"]
    assert cold.n_users >= 100 and cold.fallback == "popularity" and "reads no history" in cold.fallback_reason
    assert cold.route == "popularity", cold.reason  # no challenger's CI against popularity excludes zero
    assert "keeping" in cold.reason and "popularity" in cold.reason
    assert set(cold.ci_vs_fallback) == {"model", "item_knn", "source_cooc", "text_knn", "blend"}
    for seg in ("1-2", "3+"):  # users whose target history the model reads keep the model as fallback
        assert table.routes[seg].fallback == "model", seg
    assert table.routes["3+"].n_users > 0 and table.routes["3+"].route in ("model", "popularity", "item_knn", "source_cooc", "blend")
    # what decides is what the model reads, not the segment's name: a mixed-view model reads the
    # cold users' source history, so its fallback there is the model
    assert _fit(ctx, trained, "mixed").routes["cold"].fallback == "model"


def test_text_neighbour_table_is_the_exact_top_n_by_text_cosine() -> None:
    """Several blocks, a short last one: each row holds the ``width`` largest cosines (self
    included), columns ascending, non-positive cosines left out as padding."""
    from crossrec.adaptation.scorers import TextNeighbours

    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(23, 8), dim=-1)
    table = TextNeighbours.from_centred(x, width=6, block=5)
    cos = (x @ x.T).numpy()
    for j in range(23):
        want = np.argsort(-cos[j], kind="stable")[:6]
        want = np.sort(want[cos[j, want] > 0])
        got = table.cols[j][table.cols[j] >= 0]
        assert list(got) == list(want), j
        assert np.allclose(table.values[j][: got.size], cos[j, got], atol=1e-6) and (table.values[j][got.size :] == 0).all()
        assert got.size == 6 or (table.cols[j][got.size :] == -1).all()
    assert TextNeighbours.from_centred(x[:4], width=6).cols.shape == (4, 4)  # fewer items than the width


def test_text_knn_scores_the_last_target_items_nearest_texts(no_signal) -> None:
    """``text_knn`` is ``text_last_target`` on the last target item's neighbours, zero elsewhere
    (and for a history without a target item), whatever the source items around it."""
    ctx, _ = no_signal
    from crossrec.adaptation.data import SOURCE, TARGET
    from crossrec.adaptation.scorers import TrainingFreeScorers

    cat = ctx.data.catalog
    sc = TrainingFreeScorers.fit(ctx.data, ctx.train_seqs("mixed"))
    src, tgt = cat.offset(SOURCE), cat.offset(TARGET)
    hists = [np.asarray([tgt + 3, src + 1, tgt + 7, src + 2]), np.asarray([src + 4]), np.asarray([], np.int64)]
    got = sc.score("text_knn", hists)
    dense = sc.score("text_last_target", hists)
    nbrs = sc.text_neighbours().cols[7]
    nbrs = nbrs[nbrs >= 0]
    assert 7 in nbrs and np.allclose(got[0, nbrs], dense[0, nbrs], atol=1e-6)
    assert (np.delete(got[0], nbrs) == 0).all() and not got[1:].any()


def test_routing_tables_written_before_fallbacks_still_load() -> None:
    from crossrec.adaptation.routing import RoutingTable

    ci = {"diff": 0.01, "lo": 0.005, "hi": 0.015, "rel": 0.2, "includes_zero": False, "n_users": 100}
    old = {"strategy": "target_only", "routes": {
        "cold": {"segment": "cold", "route": "blend", "n_users": 100, "selection_ndcg10": {"model": 0.01, "blend": 0.02},
                 "ci_vs_reference": {"blend": ci}, "blend_weights": {"model": 1.0, "popularity": 0.3}, "reason": "blend beats the model"},
    }}
    table = RoutingTable.from_dict(json.loads(json.dumps(old)))
    cold = table.routes["cold"]
    assert cold.route == "blend" and cold.fallback == "model" and cold.ci_vs_fallback == {"blend": ci}
    newer = table.to_dict()
    assert newer["routes"]["cold"]["fallback"] == "model" and "ci_vs_reference" not in newer["routes"]["cold"]
    newer["routes"]["cold"]["added_by_a_later_version"] = 1  # unknown keys are ignored
    assert RoutingTable.from_dict(newer).routes["cold"].blend_weights == {"model": 1.0, "popularity": 0.3}


def test_the_routed_table_records_the_tail_slot_choice_and_its_evidence(no_signal) -> None:
    """With a margin every route but popularity says what its tail slots did on the selection set
    (and the choice never changes which route is chosen); with none, nothing is tried."""
    from crossrec.adaptation.pipeline import routing_selection
    from crossrec.adaptation.routing import fit_routing
    from crossrec.adaptation.trainer import logits_eval_set

    ctx, trained = no_signal
    scorers, segments = routing_selection(ctx, trained.view)
    logits = lambda ev: logits_eval_set(trained.model, ctx.data, ev)  # noqa: E731
    with_slots = fit_routing(ctx.data, scorers, logits, segments, trained.name, say=lambda s: None, tail_slot_margin=0.5)
    without = fit_routing(ctx.data, scorers, logits, segments, trained.name, say=lambda s: None)
    tried = 0
    for seg, choice in with_slots.routes.items():
        assert choice.route == without.routes[seg].route
        if choice.route != "popularity" and choice.n_users >= 2:
            tried += 1
            assert set(choice.tail_slot_evidence) == {"1", "2"} and choice.tail_slot_reason, seg
            assert (choice.tail_slots > 0) == any(e["kept"] for e in choice.tail_slot_evidence.values())
        assert without.routes[seg].tail_slots == 0 and not without.routes[seg].tail_slot_reason
    assert tried >= 1
