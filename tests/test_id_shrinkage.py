"""ID-offset shrinkage: the factor per item, the choice on a selection score, the folded table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossrec.adaptation.data import UserSeq
from crossrec.adaptation.model import CrossDomainModel, ModelConfig
from crossrec.adaptation.shrinkage import choose_id_shrink, has_id_offsets, item_event_counts, shrink_factors


def _model(n_items: int = 5) -> tuple[CrossDomainModel, torch.Tensor]:
    torch.manual_seed(0)
    model = CrossDomainModel(ModelConfig(in_dim=8, dim=4, n_items=n_items, item_tower="text+id"), torch.randn(n_items, 8))
    with torch.no_grad():
        model.items.ids.weight.copy_(torch.randn(n_items, 4))
    return model, model.items.ids.weight.detach().clone()


def test_factor_is_count_over_count_plus_k_and_none_for_k_zero() -> None:
    counts = np.array([0, 1, 3, 9])
    assert torch.equal(shrink_factors(counts, 0), torch.ones(4))
    assert torch.allclose(shrink_factors(counts, 3), torch.tensor([0.0, 0.25, 0.5, 0.75]))


def test_counts_are_per_catalogue_index_over_both_domains() -> None:
    seqs = [UserSeq(np.array([1, 3, 3]), np.array([0, 1, 1]), np.zeros(3)), UserSeq(np.array([3, 4]), np.array([1, 1]), np.zeros(2))]
    assert item_event_counts(6, seqs).tolist() == [0, 1, 0, 3, 1, 0]


def test_the_best_k_is_folded_into_the_id_table_and_unseen_items_keep_their_text_alone() -> None:
    model, trained = _model()
    counts = np.array([0, 0, 1, 10, 100])

    def score(m: CrossDomainModel) -> np.ndarray:  # best when item 3's offset is half its trained value: k = 10
        return np.array([-abs(float(m.items.ids.weight[3, 0]) - 0.5 * float(trained[3, 0]))] * 4)

    report = choose_id_shrink(model, counts, score, [1, 10, 100])
    assert report["kept"] == 10.0
    assert set(report["select_ndcg10"]) == {"0", "1", "10", "100"}
    table = model.items.ids.weight.detach()
    assert torch.allclose(table, trained * torch.tensor([0.0, 0.0, 1 / 11, 0.5, 100 / 110])[:, None])
    assert torch.equal(table[:2], torch.zeros(2, 4))  # never seen: the text vector alone
    assert "k=10" in report["reason"] and report["ci_best_vs_none"]["n_users"] == 4


def test_a_gain_whose_interval_includes_zero_keeps_the_model_as_trained() -> None:
    model, trained = _model()
    counts = np.array([0, 0, 1, 10, 100])
    noisy = np.array([1.0, -1.0, 1.0, -1.0])  # shrinkage helps some users and hurts as many

    def score(m: CrossDomainModel) -> np.ndarray:
        shrunk = float(m.items.ids.weight[0].abs().sum()) == 0.0
        return 0.5 + (0.2 * noisy + 0.01 if shrunk else 0.0 * noisy)

    report = choose_id_shrink(model, counts, score, [10])
    assert report["best"] == 10.0 and report["ci_best_vs_none"]["includes_zero"]
    assert report["kept"] == 0.0 and "includes zero" in report["reason"]
    assert f"resolves about ±{report['ci_best_vs_none']['resolution_rel']:.1%}" in report["reason"]
    assert torch.equal(model.items.ids.weight.detach(), trained)


def test_a_tie_keeps_the_model_as_trained() -> None:
    model, trained = _model()
    report = choose_id_shrink(model, np.array([0, 1, 2, 3, 4]), lambda m: np.zeros(3), [1, 10])
    assert report["kept"] == 0.0 and "no shrinkage" in report["reason"]
    assert torch.equal(model.items.ids.weight.detach(), trained)


def test_only_the_text_plus_id_tower_has_offsets_to_shrink() -> None:
    assert has_id_offsets(_model()[0])
    text_only = CrossDomainModel(ModelConfig(in_dim=8, dim=4, item_tower="text"), torch.randn(3, 8))
    assert not has_id_offsets(text_only)
    assert not has_id_offsets(None)
    with pytest.raises(TypeError, match="text\\+id"):
        choose_id_shrink(text_only, np.array([1, 2, 3]), lambda m: np.zeros(2), [1.0])
