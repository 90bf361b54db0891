"""Select, then refit: choices are made on held-out selection events, the registered model is
trained again on every training event with those choices (crossrec/adaptation/refit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossrec.adaptation.data import TARGET, load_adapt_data
from crossrec.adaptation.model import ModelConfig
from crossrec.adaptation.pipeline import AdaptOptions, run_adapt
from crossrec.adaptation.refit import full_data_context, refit_chosen
from crossrec.adaptation.shrinkage import shrink_factors
from crossrec.adaptation.strategies import STRATEGIES, RunContext, Trained
from crossrec.adaptation.synthetic import write_synthetic
from crossrec.adaptation.trainer import TrainConfig
from crossrec.registry import ModelRegistry


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("refit") / "work", n_users=60, n_items=30, dim=16)


@pytest.fixture(scope="module")
def data(work: Path):
    return load_adapt_data(work, split_path=work / "users_split.json")


def _target_events(seqs) -> int:
    return int(sum((s.dom == TARGET).sum() for s in seqs))


def _ctx(data) -> RunContext:
    torch.set_num_threads(2)
    return RunContext(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(max_epochs=2, patience=1, selection_users=15, id_shrink_grid=[3.0]), 0)


def test_the_refit_context_trains_on_the_selection_events_and_chooses_nothing(data) -> None:
    ctx = _ctx(data)
    held = ctx.selection()
    assert len(held) == 15
    cut = ctx.train_seqs("mixed")
    ctx.item_event_counts()  # cached under a key that must not leak into the refit
    ctx.cache[("pretrained", 0, "target")] = "source pretraining"
    full = full_data_context(data, ctx.model_cfg, ctx.train_cfg, 0, ctx.cache)
    assert list(full.cache) == [("pretrained", 0, "target")]  # pretraining never read the selection events; the rest did
    assert full.selection() == {} and full.train_cfg.id_shrink_grid == [] and ctx.train_cfg.selection_users == 15
    # every held-out event (and whatever the cut removed after it) is back in training
    assert _target_events(full.train_seqs("mixed")) >= _target_events(cut) + len(held)
    assert full.item_event_counts().sum() > ctx.item_event_counts().sum()


def test_refit_folds_in_the_shrinkage_the_selection_set_kept_instead_of_choosing_again(data) -> None:
    ctx = _ctx(data)
    chosen = Trained("target_only", "target", choice={"id_shrink": {"kept": 3.0}})
    refit = refit_chosen(full_data_context(data, ctx.model_cfg, ctx.train_cfg, 0, {}), chosen, say=lambda s: None)
    plain_ctx = full_data_context(data, ctx.model_cfg, ctx.train_cfg, 0, {})
    plain = STRATEGIES["target_only"](plain_ctx)  # the same training, nothing folded in (training reproduces bit for bit)
    factors = shrink_factors(plain_ctx.item_event_counts(), 3.0)
    assert torch.equal(refit.model.items.ids.weight, plain.model.items.ids.weight * factors[:, None])
    assert not torch.equal(refit.model.items.ids.weight, plain.model.items.ids.weight)
    assert refit.choice == {"refit_of": "target_only", "id_shrink_kept": 3.0}


def _adapt(work: Path, tmp: Path, refit: bool) -> tuple[dict, Path]:
    torch.set_num_threads(2)
    opts = AdaptOptions(
        input_dir=work, output_dir=tmp / "out", strategies=["target_only", "popularity"], seeds=[0], fractions=[], split_path=work / "users_split.json",
        registry_dir=tmp / "reg", diagnose=False, refit=refit, model=ModelConfig(dim=16, max_len=12),
        train=TrainConfig(max_epochs=2, patience=1, selection_users=15),
    )
    res = run_adapt(opts, say=lambda s: None)
    reg = ModelRegistry(tmp / "reg")
    return res, reg.path(reg.versions()[-1])


def test_adapt_registers_the_refitted_model_with_its_routing_refitted_on_every_event(work: Path, data, tmp_path: Path) -> None:
    res, path = _adapt(work, tmp_path / "on", refit=True)
    served = res["served"]
    assert served["strategy"] == res["strategy_choice"]["chosen"] == "target_only"
    assert set(served["test"]) == {"target_only", "routed"} and set(served["segments"]["routed"]) == {"user", "item"}
    manifest = json.loads((path / "manifest.json").read_text())  # the first (only) version: promoted, so also current
    assert manifest["refit"] is True
    assert manifest["test_metrics"]["NDCG@10"] == pytest.approx(served["test"]["target_only"]["NDCG@10"])
    # the routing stored with it counts every training user's target events, the selection ones too
    ctx = full_data_context(data, ModelConfig(in_dim=16, dim=16, max_len=12), TrainConfig(selection_users=15), 0, {})
    assert np.load(path / "routing" / "popularity.npy").sum() == _target_events(ctx.train_seqs("mixed"))
    assert json.loads((path / "routing" / "routing.json").read_text())["routes"] == res["routing"]["routes"]
    assert "Served model (target_only trained again on every training event" in (tmp_path / "on" / "out" / "report.html").read_text()

    off, off_path = _adapt(work, tmp_path / "off", refit=False)
    assert "served" not in off and json.loads((off_path / "manifest.json").read_text())["refit"] is False
    assert np.load(off_path / "routing" / "popularity.npy").sum() < np.load(path / "routing" / "popularity.npy").sum()
