"""Adaptation on a tiny synthetic fixture in the real contracts: data views, training, inference, pipeline.

Real torch throughout (no mocks); the fixture is 40 users x 30 items per domain x 16-d embeddings so
the whole module runs in seconds on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from crossrec.adaptation.data import SPLIT_CODES, TARGET, load_adapt_data, make_eval_set, make_train_examples
from crossrec.adaptation.inference import load_current
from crossrec.adaptation.model import ModelConfig
from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
from crossrec.adaptation.strategies import STRATEGIES, RunContext, resolve
from crossrec.adaptation.synthetic import write_synthetic
from crossrec.adaptation.trainer import TrainConfig
from crossrec.evaluation import compute_metrics
from crossrec.registry import ModelRegistry, RegistryError

from conftest import make_settings


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("adapt") / "work", n_users=40, n_items=30, dim=16)


@pytest.fixture(scope="module")
def data(work: Path):
    return load_adapt_data(work, split_path=work / "users_split.json")


def _ctx(data, seed: int = 0, fraction: float = 1.0) -> RunContext:
    torch.set_num_threads(2)
    return RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(max_epochs=4, pretrain_epochs=2, patience=2), seed, fraction)


def test_loader_layout_and_splits(data) -> None:
    cat = data.catalog
    assert cat.n_source == 30 and cat.n_target == 30 and cat.target_offset == 31
    assert (cat.domain[cat.target_offset :] == TARGET).all() and cat.embeddings.shape == (61, 16)
    assert sum(len(v) for v in data.split_users.values()) == 40
    s = next(iter(data.users.values()))
    assert s.split[s.heldout(SPLIT_CODES["test"])] == SPLIT_CODES["test"]


def test_eval_set_history_is_strictly_before_heldout(data) -> None:
    users = data.split_users["test"]
    ev = make_eval_set(data, users, SPLIT_CODES["test"], "mixed", None)
    for u, h, t in zip(ev.user_ids, ev.histories, ev.targets):
        s = data.users[u]
        p = s.heldout(SPLIT_CODES["test"])
        assert list(h) == list(s.items[:p])  # nothing at or after the held-out event
        assert t == s.items[p] - data.catalog.target_offset
    target_view = make_eval_set(data, users, SPLIT_CODES["test"], "target", None)
    assert all((data.catalog.domain[h] == TARGET).all() for h in target_view.histories)
    cold = make_eval_set(data, users, SPLIT_CODES["test"], "mixed", None, drop_target_history=True)
    assert cold.cold.all() and all(m.size == 0 for m in cold.masks)
    assert all((data.catalog.domain[h] != TARGET).all() for h in cold.histories)


def test_events_with_unknown_items_are_counted_not_lost_silently(tmp_path: Path) -> None:
    work = write_synthetic(tmp_path / "w", n_users=12, n_items=9, dim=8)
    emb_path = work / "embeddings" / "minilm" / "part-0.parquet"
    emb = pd.read_parquet(emb_path)
    emb[emb["item_id"] != "art-000"].to_parquet(emb_path, index=False)
    ev = pd.read_parquet(work / "clean" / "events")
    n_lost = int(((ev["item_id"] == "art-000")).sum())
    d = load_adapt_data(work)
    assert d.dropped["item_without_embedding"] == n_lost > 0


def test_train_examples_predict_only_requested_domain(data) -> None:
    seqs = [data.users[u] for u in data.split_users["train"]]
    ex = make_train_examples(seqs, {TARGET}, max_len=5)
    labels = np.concatenate([e.labels for e in ex])
    assert (data.catalog.domain[labels[labels > 0]] == TARGET).all()
    assert all(len(e.tokens) == len(e.labels) - 1 <= 4 for e in ex)
    total_target = sum(int((s.dom == TARGET).sum()) for s in seqs)
    assert int((labels > 0).sum()) == total_target  # windowing drops no label


def test_short_training_learns_and_beats_popularity(data) -> None:
    ctx = _ctx(data)
    pop = STRATEGIES["popularity"](ctx)
    trained = STRATEGIES["pretrain_finetune_all"](ctx)
    losses = [log.loss for log in trained.logs if log.phase == "pretrain_finetune_all"]
    assert losses[-1] < losses[0]
    ev = ctx.eval_set("test", trained.view)
    m_model = compute_metrics(trained.ranks(data, ev))["NDCG@10"]
    m_pop = compute_metrics(pop.ranks(data, ctx.eval_set("test", "target")))["NDCG@10"]
    assert m_model > m_pop


def test_transfer_view_decides_what_the_transfer_strategies_read(data) -> None:
    """Default 'target': transfer through shared weights only; 'mixed' keeps the interleaved path working."""
    with pytest.raises(ValueError, match="transfer view"):
        TrainConfig(transfer_view="sideways")
    for view in ("target", "mixed"):
        ctx = RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(max_epochs=2, pretrain_epochs=1, patience=2, transfer_view=view), 0, 1.0)
        for name in ("zero_shot", "pretrain_finetune_adaptor", "joint_adversarial"):
            trained = STRATEGIES[name](ctx)
            assert trained.view == view
            assert all(np.isfinite(log.loss) for log in trained.logs)
            ranks = trained.ranks(data, ctx.eval_set("test", view))
            assert ranks.size and ranks.min() >= 1


def test_residual_encoder_starts_from_the_most_recent_item(data) -> None:
    """Untrained, the residual GRU's state is closest to the last item it read (the item-KNN prior);
    without the skip path it is not: this is what lets a source-trained model transfer zero-shot."""
    cat = data.catalog
    last = torch.arange(cat.target_offset, cat.n_items)
    dom = torch.stack([torch.full_like(last, 2), torch.ones_like(last)], dim=1)
    hits = {}
    for residual in (True, False):
        torch.manual_seed(0)
        from crossrec.adaptation.model import CrossDomainModel

        model = CrossDomainModel(ModelConfig(in_dim=16, dim=16, residual=residual, item_tower="text"), torch.from_numpy(cat.embeddings)).eval()
        model.items.adaptor.init_whitening(torch.from_numpy(cat.embeddings[1:]))
        with torch.no_grad():
            vecs = model.item_vecs(last)
            tok_vecs = torch.stack([torch.zeros_like(vecs), vecs], dim=1)  # [BOS, item]
            h = model.user_states(tok_vecs, dom, torch.full((len(last),), 2))[:, 1]
            scores = model.logits(h, vecs)
        hits[residual] = float((scores.argmax(1) == torch.arange(len(last))).float().mean())
    assert hits[True] >= 0.8 > hits[False] + 0.3


def test_item_knn_is_the_hand_computed_cosine() -> None:
    """Users {t1,t2}, {t1,t2,t3}, {t3}: cos(t1,t2) = 2/2 = 1, cos(t1,t3) = cos(t2,t3) = 1/2."""
    from crossrec.adaptation.baselines import ItemKNN
    from crossrec.adaptation.data import AdaptData, Catalog, EvalSet, UserSeq

    keys = [("", "<pad>"), ("art", "s1"), ("office", "t1"), ("office", "t2"), ("office", "t3")]
    cat = Catalog(keys, np.array([-1, 0, 1, 1, 1], np.int8), np.zeros((5, 2), np.float32), 1, 2)
    seq = lambda *g: UserSeq(np.array(g, np.int64), cat.domain[list(g)], np.zeros(len(g), np.int8))  # noqa: E731
    users = {"a": seq(1, 2, 3), "b": seq(2, 3, 4), "c": seq(4, 1)}
    data = AdaptData(cat, users, {"train": ["a", "b", "c"], "valid": [], "test": []}, "art", "office", "minilm", "x")
    knn = ItemKNN.fit(data, list(users.values()))
    # local target indices: t1=0, t2=1, t3=2; masks = the user's target history
    ev = EvalSet(["x", "y"], [np.zeros(0, np.int64)] * 2, [np.array([0]), np.array([0, 2])], np.array([2, 1]), np.array([False, False]))
    # x: history {t1} -> t2 scores 1, t3 scores 1/2 -> t3 ranks 2nd; y: history {t1,t3} -> t2 = 1 + 1/2, rank 1
    assert knn.ranks(data, ev).tolist() == [2, 1]
    np.testing.assert_allclose(knn.scores([np.array([0])]), [[1.0, 1.0, 0.5]])  # self-similarity 1 (masked in ranking)
    # from the source history: s1 is held by a (t1, t2) and c (t3): each 1 / sqrt(|U_s1| |U_tj|) = 1/2
    cross = ItemKNN.fit(data, list(users.values()), history_domain=0)
    np.testing.assert_allclose(cross.scores([np.array([0]), np.zeros(0, np.int64)]), [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])


def test_sampled_softmax_path_trains(data) -> None:
    """With fewer negatives than items the trainer takes the sampled-softmax branch."""
    ctx = RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(max_epochs=4, patience=4, n_negatives=8, batch_size=8), 0, 1.0)
    trained = STRATEGIES["target_only"](ctx)
    losses = [log.loss for log in trained.logs]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert all(np.isfinite(losses))


def test_fraction_limits_target_training_users(data) -> None:
    full, small = _ctx(data, fraction=1.0), _ctx(data, fraction=0.25)
    assert len(small.target_users()) == int(np.ceil(0.25 * len(full.target_users())))
    outside = [s for u, s in zip(data.split_users["train"], small.train_seqs("mixed")) if u not in small.target_users()]
    assert outside and all((s.dom != TARGET).all() for s in outside)


def test_selection_set_is_held_out_of_training(data) -> None:
    """The selection event (last target event of some training users) never appears in what the
    strategies train on, and the 'select' eval set ranks exactly those events."""
    ctx = RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(selection_users=10), 0, 1.0)
    sel = ctx.selection()
    assert len(sel) == 10 and set(sel) <= set(data.split_users["train"])
    by_user = dict(zip(data.split_users["train"], ctx.train_seqs("mixed")))
    for u, p in sel.items():
        full = data.users[u]
        assert full.dom[p] == TARGET and (full.dom[p + 1 :] != TARGET).all()  # the last target event
        assert by_user[u].items.size == p  # cut before it: the event and everything after are gone
    ev = ctx.eval_set("select", "target")
    assert sorted(ev.user_ids) == sorted(sel)
    for u, t in zip(ev.user_ids, ev.targets):
        assert t == data.users[u].items[sel[u]] - data.catalog.target_offset
    off = RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(selection_users=0), 0, 1.0)
    assert off.eval_set("select", "target") is off.eval_set("valid", "target")  # disabled: falls back


def test_sasrec_is_self_attention_over_ids_with_its_own_hyper_parameters(data) -> None:
    from crossrec.adaptation.model import IdItemTower, SeqEncoder

    cfg = TrainConfig(max_epochs=2, patience=2, sasrec_grid=[{"lr": 1e-3, "dropout": 0.5}, {"lr": 1e-2, "n_layers": 1}])
    ctx = RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), cfg, 0, 1.0)
    t = STRATEGIES["sasrec"](ctx)
    assert isinstance(t.model.encoder, SeqEncoder) and isinstance(t.model.items, IdItemTower)
    assert len(t.choice["tried"]) == 2
    best = max(t.choice["tried"], key=lambda r: r["select_ndcg10"])
    assert t.choice["kept"] == best["params"]
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        STRATEGIES["sasrec"](RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(sasrec_grid=[{"magic": 1}]), 0, 1.0))


def test_text_models_keep_the_id_shrinkage_that_scores_best_on_the_selection_set(data, monkeypatch) -> None:
    """The kept k (the selection set's best when its CI excludes zero) is folded into the model (the
    model as returned scores what the report says); the factors come from the run's own training counts (rows of
    items it never trained on become zero); an empty grid leaves the trained model as it was."""
    import crossrec.adaptation.strategies as strategies
    from crossrec.adaptation.trainer import score_eval_set
    from crossrec.evaluation import per_user

    def run(grid: list[float]):
        ctx = RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(max_epochs=2, patience=2, selection_users=10, id_shrink_grid=grid), 0, 1.0)
        return ctx, STRATEGIES["target_only"](ctx)

    ctx, chosen = run([1.0, 1e6])
    report = chosen.choice["id_shrink"]
    assert set(report["select_ndcg10"]) == {"0", "1", "1e+06"}
    best = max(report["select_ndcg10"], key=lambda k: (report["select_ndcg10"][k], -float(k)))
    assert report["best"] == float(best)
    kept = best if report["ci_best_vs_none"]["lo"] > 0 else "0"
    assert report["kept"] == float(kept)
    assert per_user(score_eval_set(chosen.model, data, ctx.eval_set("select", "target"))).mean() == pytest.approx(report["select_ndcg10"][kept])
    _, plain = run([])
    assert plain.choice is None
    trained_table = plain.model.items.ids.weight.detach()
    assert trained_table.abs().sum() > 0
    # a selection score that prefers the smallest offsets: the largest k is kept, with the run's counts
    real = strategies.choose_id_shrink
    monkeypatch.setattr(strategies, "choose_id_shrink", lambda model, counts, _score, grid: real(model, counts, lambda m: np.array([-float(m.items.ids.weight.abs().sum())]), grid))
    ctx, shrunk = run([1.0, 1e6])
    assert shrunk.choice["id_shrink"]["kept"] == 1e6
    counts = torch.from_numpy(ctx.item_event_counts()).float()
    assert torch.allclose(shrunk.model.items.ids.weight.detach(), trained_table * (counts / (counts + 1e6))[:, None])
    assert (counts == 0).any() and shrunk.model.items.ids.weight.detach()[counts == 0].abs().sum() == 0


def test_transformer_state_depends_on_the_items_not_only_on_the_positions() -> None:
    """At initialisation, two histories of the same length with different items must get clearly
    different states: with N(0, 1) position vectors (norm ~8 against unit item vectors) their
    cosine was 0.98, and SASRec trained from there stalled at a third of its accuracy."""
    from crossrec.adaptation.model import SeqEncoder

    torch.manual_seed(0)
    enc = SeqEncoder(ModelConfig(dim=64, max_len=50)).eval()
    n, length = 32, 6
    a, b = (torch.nn.functional.normalize(torch.randn(n, length, 64), dim=-1) for _ in range(2))
    dom, lengths = torch.ones(n, length, dtype=torch.long), torch.full((n,), length)
    with torch.no_grad():
        ha, hb = enc(a, dom, lengths)[:, -1], enc(b, dom, lengths)[:, -1]
    assert torch.nn.functional.cosine_similarity(ha, hb).mean() < 0.8


def test_unknown_strategy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown strategies"):
        resolve("target_only,magic")
    assert {"zero_shot", "sasrec", "item_knn"} <= set(resolve("all"))


def _run(work: Path, out: Path, registry: Path, margin: float = 0.0, strategies: str | list = "all", fractions=(0.5, 1.0), item_tower: str = "text+id") -> dict:
    opts = AdaptOptions(
        input_dir=work,
        output_dir=out,
        strategies=[strategies] if isinstance(strategies, str) else strategies,
        seeds=[0, 1] if strategies == "all" else [0],
        fractions=list(fractions),
        split_path=work / "users_split.json",
        registry_dir=registry,
        promote_margin=margin,
        model=ModelConfig(dim=16, max_len=12, item_tower=item_tower),
        train=TrainConfig(max_epochs=2, pretrain_epochs=2, patience=1),
    )
    return run_adapt(opts, say=lambda s: None)


def test_pipeline_end_to_end_report_registry_gate_and_inference(work: Path, data, tmp_path: Path) -> None:
    registry = tmp_path / "work" / "registry"
    res = _run(work, tmp_path / "out", registry)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == set(resolve("all")) | {"routed"}
    for name in metrics:
        assert {"NDCG@10", "Recall@10", "Recall@50", "MRR", "Precision@10", "F1@10"} <= set(metrics[name])
        assert 0.0 <= metrics[name]["NDCG@10"] <= 1.0
    assert len(res["test"]["target_only"]["NDCG@10"]["values"]) == 2  # two seeds, spread reported
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    # each text model's ID-offset shrinkage is reported with what the selection set said of each k
    shrink = res["hyper_parameter_search"]["target_only"]["id_shrink"]
    assert set(shrink["select_ndcg10"]) == {"0", "1", "3", "10", "30", "100"}
    assert "target_only: ID offsets shrunk by c/(c+k)" in html and html.count("k (0: as trained)") == sum("id_shrink" in c for c in res["hyper_parameter_search"].values()) >= 3
    assert set(res["fractions"]) >= {"target_only", "popularity", "item_knn", "sasrec"} and "0.5" in res["fractions"]["target_only"]
    # every strategy and baseline has every metric per user and item segment, with user counts
    from crossrec.evaluation import ITEM_SEGMENTS, USER_SEGMENTS

    assert set(res["segments"]) == set(resolve("all")) | {"routed"}
    for name, seg in res["segments"].items():
        assert list(seg["user"]) == list(USER_SEGMENTS) and list(seg["item"]) == list(ITEM_SEGMENTS)
        n_test = res["test"][name]["n_users"]
        assert sum(seg["user"][s]["n_users"] for s in USER_SEGMENTS[1:]) == n_test
        assert seg["user"][USER_SEGMENTS[0]]["n_users"] == n_test
        assert sum(seg["item"][s]["n_users"] for s in ITEM_SEGMENTS) == n_test
        assert {"NDCG@10", "Recall@10", "MRR"} <= set(seg["item"][ITEM_SEGMENTS[2]])
    assert "per user segment" in html and "per item segment" in html
    assert res["strategy_choice"]["chosen"] in res["test"] and "reason" in res["strategy_choice"]
    assert set(res["select_ndcg10"]) == set(resolve("all")) and "sasrec" in res["hyper_parameter_search"]
    assert set(res["routing"]["routes"]) == {"cold", "1-2", "3+"} and res["targets"]["routed"]["best_single"] in res["test"]
    assert res["gate"]["promoted"] and res["gate"]["registered"] == "v0001"

    # the registered artifact serves: same ranks through the inference API as in the trainer
    settings = make_settings(tmp_path)
    rec = load_current(settings)
    assert rec.version == "v0001" and len(rec.target_items) == 30
    ev = make_eval_set(data, data.split_users["valid"], SPLIT_CODES["valid"], "mixed", None)
    hists = [[data.catalog.keys[int(g)] for g in h] for h in ev.histories]
    tids = [data.catalog.keys[int(t) + data.catalog.target_offset][1] for t in ev.targets]
    ranks_api = rec.ranks(hists, tids)
    stored = ModelRegistry(registry).manifest("v0001")["valid_metrics"]["NDCG@10"]
    assert compute_metrics(ranks_api)["NDCG@10"] == pytest.approx(stored, abs=1e-6)

    # second run with an impossible margin: the gate keeps v0001 and says why
    res2 = _run(work, tmp_path / "out2", registry, margin=1.0, strategies=["target_only", "popularity"], fractions=())
    assert res2["gate"]["registered"] == "v0002" and not res2["gate"]["promoted"]
    assert res2["gate"]["current_rescored_on_today_valid"] and "keeping v0001" in res2["gate"]["reason"]
    assert load_current(settings).version == "v0001"


def test_encoder_comparison_runs_each_encoder_on_its_own_embeddings(work: Path, tmp_path: Path) -> None:
    """--compare-encoders: a second encoder of another width gets its own rows; a missing one is
    reported as skipped, not fatal; the report shows the comparison."""
    import shutil

    other = write_synthetic(tmp_path / "other", n_users=40, n_items=30, dim=24, encoder="smollm2")
    mixed = tmp_path / "mixed"
    shutil.copytree(work, mixed)
    shutil.copytree(other / "embeddings" / "smollm2", mixed / "embeddings" / "smollm2")
    opts = AdaptOptions(
        input_dir=mixed, output_dir=tmp_path / "out", strategies=["target_only", "zero_shot", "popularity"],
        seeds=[0], fractions=[], extra_encoders=["smollm2", "missing"], split_path=mixed / "users_split.json",
        registry_dir=tmp_path / "registry", promote=False, model=ModelConfig(dim=16, max_len=12),
        train=TrainConfig(max_epochs=2, pretrain_epochs=2, patience=1),
    )
    res = run_adapt(opts, say=lambda s: None)
    enc = res["encoders"]
    assert set(enc) == {"minilm", "smollm2", "missing"}
    # text strategies only for the extra encoder (popularity does not read embeddings)
    assert set(enc["smollm2"]) == {"target_only", "zero_shot"}
    assert all(0.0 <= v <= 1.0 for v in enc["smollm2"].values())
    assert enc["smollm2"]["target_only"] != enc["minilm"]["target_only"]  # its own 24-d vectors
    assert "skipped" in enc["missing"]
    assert "Encoder comparison" in (tmp_path / "out" / "report.html").read_text()


def test_recommender_scoring_masking_and_new_items(work: Path, tmp_path: Path) -> None:
    registry = tmp_path / "work" / "registry"
    _run(work, tmp_path / "out", registry, strategies=["pretrain_finetune_all"], fractions=(), item_tower="text")
    rec = load_current(make_settings(tmp_path))
    history = [("art", "art-000"), ("office", "office-003"), ("office", "office-006")]
    top = rec.score_history(history, k=5, exclude={"office-009"})
    ids = [i for i, _ in top]
    assert len(top) == 5 and not {"office-003", "office-006", "office-009"} & set(ids)
    scores = [s for _, s in top]
    assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    # unknown history items are skipped and counted, not fatal
    rec.score_history([("office", "nope")], k=3)
    assert rec.unknown_items == 1
    # a new item with text only becomes scorable; an embedding equal to a known item's scores alike
    emb = pd.read_parquet(work / "embeddings" / "minilm")
    e3 = np.asarray(emb.loc[emb["item_id"] == "office-012", "embedding"].iloc[0], dtype=np.float32)
    rec.add_item("office", "office-new", e3)
    assert "office-new" in rec.target_items
    full = dict(rec.score_history(history, k=100))
    assert full["office-new"] == pytest.approx(full["office-012"], rel=1e-5)
    with pytest.raises(ValueError):
        rec.add_item("garden", "g-1", e3)
    batch = rec.top_k_for_users({"u1": history, "u2": []}, k=5)
    assert [i for i, _ in batch["u1"]] == [i for i, _ in rec.score_history(history, k=5)]
    assert len(batch["u2"]) == 5


def test_hybrid_tower_scores_new_items_from_text_only(work: Path, tmp_path: Path) -> None:
    """text+id: a new item gets the adaptor's text vector, with no (untrained) ID part."""
    registry = tmp_path / "work" / "registry"
    _run(work, tmp_path / "out", registry, strategies=["target_only"], fractions=(), item_tower="text+id")
    rec = load_current(make_settings(tmp_path))
    assert rec.config["model"]["item_tower"] == "text+id"
    emb = pd.read_parquet(work / "embeddings" / "minilm")
    e = np.asarray(emb.loc[emb["item_id"] == "office-012", "embedding"].iloc[0], dtype=np.float32)
    rec.add_item("office", "office-new", e)
    with torch.no_grad():
        expected = rec.model.raw_item_vecs(torch.from_numpy(e)[None])[0]
    assert torch.allclose(rec._target_mat[-1], expected)
    assert "office-new" in dict(rec.score_history([("office", "office-003")], k=31))


def test_load_current_without_model_is_clear(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no current model"):
        load_current(make_settings(tmp_path))


def test_cli_passes_hyper_parameters_and_records_them(work: Path, tmp_path: Path) -> None:
    """`crossrec adapt` hands its options to the run, and results.json records every
    hyper-parameter of the run, so a reported row can be reproduced."""
    from typer.testing import CliRunner

    from crossrec.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "adapt", "--input", str(work), "--output", str(out), "--strategies", "target_only,popularity",
        "--fractions", "", "--split", str(work / "users_split.json"), "--registry", str(tmp_path / "reg"),
        "--no-promote", "--max-epochs", "2", "--pretrain-epochs", "1", "--dim", "16", "--lr", "0.001",
    ])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["train"]["lr"] == 0.001 and run["train"]["max_epochs"] == 2
    assert run["model"]["dim"] == 16 and run["model"]["in_dim"] == 16


def test_cli_sasrec_grid_is_parsed_and_bad_json_is_a_clear_error(work: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crossrec.cli import app

    base = ["adapt", "--input", str(work), "--output", str(tmp_path / "out"), "--strategies", "sasrec", "--fractions", "",
            "--split", str(work / "users_split.json"), "--registry", str(tmp_path / "reg"), "--no-promote", "--no-diagnose",
            "--max-epochs", "1", "--dim", "16", "--selection-users", "8"]
    bad = CliRunner().invoke(app, [*base, "--sasrec-grid", "{not json"])
    assert bad.exit_code == 1 and "not JSON" in bad.output
    ok = CliRunner().invoke(app, [*base, "--sasrec-grid", '[{"lr": 0.002}, {"lr": 0.01, "n_heads": 1}]'])
    assert ok.exit_code == 0, ok.output
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [t["params"] for t in res["hyper_parameter_search"]["sasrec"]["tried"]] == [{"lr": 0.002}, {"lr": 0.01, "n_heads": 1}]
    assert res["run"]["train"]["selection_users"] == 8 and "diagnose" not in res


def test_device_setting_is_validated_and_the_cpu_path_is_unchanged(data) -> None:
    from crossrec.adaptation.trainer import resolve_device

    with pytest.raises(ValueError, match="unknown device"):
        TrainConfig(device="tpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    ranks = {}
    for dev in ("cpu", "auto"):
        ctx = _ctx(data)
        ctx.train_cfg.device = dev
        trained = STRATEGIES["target_only"](ctx)
        assert next(trained.model.parameters()).device == resolve_device(dev)
        ranks[dev] = trained.ranks(data, ctx.eval_set("test", trained.view))
    if not torch.cuda.is_available():  # 'auto' on a CPU machine is exactly the CPU run
        assert np.array_equal(ranks["cpu"], ranks["auto"])


def test_cli_device_flag_reaches_training_with_its_default_from_settings(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`crossrec adapt --device` sets TrainConfig.device (default: settings.adapt.device); asking
    for a GPU torch does not see is a clear error before any data is read, not a torch assertion."""
    from typer.testing import CliRunner

    from crossrec.cli import app
    from crossrec.settings import get_settings

    def run(*extra: str, out: str = "out"):
        return CliRunner().invoke(app, [
            "adapt", "--input", str(work), "--output", str(tmp_path / out), "--strategies", "target_only", "--fractions", "",
            "--split", str(work / "users_split.json"), "--registry", str(tmp_path / "reg"), "--no-promote", "--no-diagnose",
            "--no-routing", "--max-epochs", "1", "--dim", "16", *extra,
        ])

    ok = run("--device", "cpu")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "out" / "results.json").read_text())["run"]["train"]["device"] == "cpu"
    bad = run("--device", "tpu", out="bad")
    assert bad.exit_code == 1 and "unknown device 'tpu'" in bad.output
    monkeypatch.setenv("CROSSREC_ADAPT__DEVICE", "cuda")
    get_settings.cache_clear()
    try:
        from_settings = run(out="gpu")
        if torch.cuda.is_available():
            assert from_settings.exit_code == 0, from_settings.output
            assert json.loads((tmp_path / "gpu" / "results.json").read_text())["run"]["train"]["device"] == "cuda"
        else:
            assert from_settings.exit_code == 1 and "torch sees no CUDA device" in from_settings.output
            assert not (tmp_path / "gpu" / "results.json").exists()
        override = run("--device", "cpu", out="cpu2")  # the flag wins over the setting
        assert override.exit_code == 0, override.output
        assert json.loads((tmp_path / "cpu2" / "results.json").read_text())["run"]["train"]["device"] == "cpu"
    finally:
        get_settings.cache_clear()


def test_bare_work_dir_loads_where_feast_is_not_installed(work: Path) -> None:
    """A work dir without features/ must not import Feast (a GPU box for bench_seeds has none)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('feast', 'pydantic', 'pydantic_settings'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from crossrec.adaptation.data import load_adapt_data\n"
        f"d = load_adapt_data({str(work)!r}, split_path={str(work / 'users_split.json')!r})\n"
        "print(d.feature_source, len(d.users))\n"
    )
    assert not (work / "features").exists()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "parquet"


def test_partial_results_come_before_the_fraction_curve_and_bench_summary_averages_seeds(work: Path, tmp_path: Path) -> None:
    from benchmarks.bench_seeds import summarise, write_summary

    partial: list[dict] = []
    opts = AdaptOptions(
        input_dir=work, output_dir=tmp_path / "out", strategies=["target_only", "popularity", "item_knn", "sasrec", "zero_shot"], seeds=[0],
        fractions=[0.5], fraction_strategies=["target_only", "popularity", "routed"], split_path=work / "users_split.json",
        registry_dir=tmp_path / "registry", promote=False, model=ModelConfig(dim=16, max_len=12),
        train=TrainConfig(max_epochs=2, pretrain_epochs=1, patience=1, sasrec_grid=[{"lr": 1e-3}]), on_partial=partial.append,
    )
    res = run_adapt(opts, say=lambda s: None)
    assert len(partial) == 1 and "routed" in partial[0]["test"] and "fractions" not in partial[0]
    assert "0.5" in res["fractions"]["routed"] and "0.5" in res["fractions"]["popularity"]
    # two "seeds": the same run with target_only shifted by +0.01 on the second
    out = tmp_path / "seeds"
    out.mkdir()
    second = json.loads(json.dumps(res, default=float))
    second["test"]["target_only"]["NDCG@10"]["mean"] += 0.01
    # the second seed chose (and served) another strategy: the served summary follows each seed's choice
    first_served = res["served"]["test"][res["served"]["strategy"]]["NDCG@10"]
    second["served"]["test"] = {"zero_shot": {"NDCG@10": first_served + 0.02}, "routed": second["served"]["test"]["routed"]}
    second["served"]["segments"]["zero_shot"] = second["served"]["segments"].pop(res["served"]["strategy"])
    second["served"]["strategy"] = "zero_shot"
    (out / "seed1.json").write_text(json.dumps(res, default=float))
    (out / "seed2.json").write_text(json.dumps(second))
    s = write_summary(out)["main"]
    base = res["test"]["target_only"]["NDCG@10"]["mean"]
    assert s["seeds"] == [1, 2]
    assert s["test"]["target_only"]["NDCG@10"]["mean"] == pytest.approx(base + 0.005)
    assert s["test"]["target_only"]["NDCG@10"]["sd"] == pytest.approx(0.01 / np.sqrt(2))
    assert s["test"]["popularity"]["NDCG@10"]["sd"] == pytest.approx(0.0)
    assert s["verdicts"]["text_vs_sasrec"]["values"][1] > s["verdicts"]["text_vs_sasrec"]["values"][0]
    served = s["served"]["chosen text model"]
    assert served["strategies"] == [res["served"]["strategy"], "zero_shot"] and served["NDCG@10"]["mean"] == pytest.approx(first_served + 0.01)
    assert s["served"]["routed"]["NDCG@10"]["mean"] == pytest.approx(res["served"]["test"]["routed"]["NDCG@10"])
    # the routed model's tail-item NDCG@10 (test items with < 5 training interactions), pooled by count
    from crossrec.evaluation import ITEM_SEGMENTS

    tail = [res["segments"]["routed"]["item"][g] for g in ITEM_SEGMENTS[:2] if res["segments"]["routed"]["item"][g]["n_users"]]
    pooled = sum(g["NDCG@10"] * g["n_users"] for g in tail) / sum(g["n_users"] for g in tail)
    assert res["targets"]["language_and_signal"]["tail_items_routed_vs_sasrec"]["routed"] == pytest.approx(pooled)
    assert s["verdicts_per_seed"][0]["tail_routed"] == pytest.approx(pooled)
    assert "| target_only |" in (out / "summary.md").read_text()
    (out / "seed2.json").unlink()  # a seed cut off by a time limit: the summary covers the others
    assert summarise(out)["main"]["seeds"] == [1]


def test_training_twice_with_the_same_seed_gives_the_same_weights(tmp_path: Path) -> None:
    """Two threads, repeated items in every batch: the gradients of repeated item rows must be summed
    in the same order each run, or a seed does not reproduce its numbers (SASRec on Art -> Office
    moved from .0531 to .0614 between two runs of seed 42 before)."""
    torch.set_num_threads(2)
    work = write_synthetic(tmp_path / "work", n_users=400, n_items=60, dim=128)
    data = load_adapt_data(work, split_path=work / "users_split.json")
    for name in ("sasrec", "target_only"):
        states = []
        for _ in range(3):
            cfg = TrainConfig(max_epochs=3, patience=3, batch_size=64, sasrec_grid=[{"lr": 1e-3}], id_shrink_grid=[])
            t = STRATEGIES[name](RunContext(data, ModelConfig(in_dim=128, dim=128, max_len=12), cfg, 0, 1.0))
            states.append({k: v.clone() for k, v in t.model.state_dict().items()})
        for other in states[1:]:
            assert all(torch.equal(states[0][k], other[k]) for k in states[0]), name


def test_item_rows_gather_matches_indexing_and_sums_repeated_rows_in_a_fixed_order() -> None:
    from crossrec.adaptation.trainer import _rows

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    vecs = torch.randn(500, 128, generator=gen, requires_grad=True)
    idx = torch.randint(0, 500, (64, 50), generator=gen)
    idx[:, 30:] = 0  # padding: one row repeated over a thousand times, as in a padded batch
    upstream = torch.randn(64, 50, 128, generator=gen)
    assert torch.equal(_rows(vecs, idx), vecs[idx])
    grads = []
    for _ in range(10):
        vecs.grad = None
        (_rows(vecs, idx) * upstream).sum().backward()
        grads.append(vecs.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    assert torch.allclose(grads[0], torch.zeros(500, 128).index_add_(0, idx.reshape(-1), upstream.reshape(-1, 128)), atol=1e-4)


def test_sasrec_epochs_on_a_fraction_of_users_keep_the_full_data_number_of_steps(data) -> None:
    """The fraction curve's SASRec: patience and epoch cap count steps, not passes over less data;
    a strategy not listed in full_steps_at_fractions keeps plain epochs."""
    cfg = TrainConfig(max_epochs=2, patience=2, batch_size=4, sasrec_grid=[{"lr": 1e-3}], id_shrink_grid=[])
    steps = {}
    for frac in (1.0, 0.25):
        for name in ("sasrec", "target_only"):
            ctx = RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), cfg, 0, frac)
            t = STRATEGIES[name](ctx)
            steps[name, frac] = t.logs[-1].steps
            assert all(log.steps == t.logs[0].steps for log in t.logs if log.phase == t.logs[-1].phase)
    assert ctx.epoch_repeat("sasrec") == 4 and ctx.epoch_repeat("target_only") == 1
    assert 0.6 <= steps["sasrec", 0.25] / steps["sasrec", 1.0] <= 1.5
    assert steps["target_only", 0.25] / steps["target_only", 1.0] <= 0.5
    off = TrainConfig(**{**cfg.__dict__, "full_steps_at_fractions": []})
    t = STRATEGIES["sasrec"](RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), off, 0, 0.25))
    assert t.logs[-1].steps / steps["sasrec", 1.0] <= 0.5


def test_strategy_choice_keeps_the_baseline_inside_the_noise_and_says_how_fine_the_selection_set_resolves() -> None:
    from crossrec.adaptation.pipeline import choose_with_confidence

    rng = np.random.default_rng(0)
    base = rng.random(2000) * 0.2

    def results(other: np.ndarray) -> dict:
        per = {"target_only": base, "joint_adversarial": other}
        return {"_select_per_user": per, "select_ndcg10": {n: {"mean": float(v.mean())} for n, v in per.items()}}

    close = choose_with_confidence(results(base + rng.normal(0.002, 0.05, 2000)), ["target_only", "joint_adversarial"], "target_only")
    ci = close["ci_vs_baseline"]
    assert close["best_on_selection"] == "joint_adversarial" and close["chosen"] == "target_only" and ci["includes_zero"]
    assert f"2000 selection users (they resolve about ±{ci['resolution_rel']:.1%})" in close["reason"]
    clear = choose_with_confidence(results(base + 0.02), ["target_only", "joint_adversarial"], "target_only")
    assert clear["chosen"] == "joint_adversarial" and "excludes zero" in clear["reason"]
