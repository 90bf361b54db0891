"""The batched top-k that the publisher and the consumer share (pure logic, no model needed)."""

from __future__ import annotations

import numpy as np

from crossrec.adaptation.inference import Recommender


def _recommender(n_items: int) -> Recommender:
    rec = object.__new__(Recommender)  # _top_many reads only the target ids
    rec._target_ids = [f"i{j}" for j in range(n_items)]
    return rec


def test_batched_top_k_equals_a_per_row_sort_with_masks_ties_and_short_rows() -> None:
    rng = np.random.default_rng(3)
    n, m, k = 40, 300, 7
    logits = rng.normal(size=(n, m)).astype(np.float32)
    logits[:, :20] = np.round(logits[:, :20])  # many equal scores
    logits[5] = 0.0  # a row of ties only
    masks = [np.unique(rng.integers(0, m, size=rng.integers(0, 30))) for _ in range(n)]
    masks[7] = np.arange(m - 3)  # only three items left
    got = _recommender(m)._top_many(logits.copy(), masks, k)
    for row, mask, top in zip(logits, masks, got):
        allowed = np.setdiff1d(np.arange(m), mask)
        ranked = sorted(allowed.tolist(), key=lambda j: (-row[j], j))[:k]  # best first, ties: lower position
        assert [item for item, _ in top] == [f"i{j}" for j in ranked]
        assert [p for _, p in top] == [float(1 / (1 + np.exp(-np.float64(row[j])))) for j in ranked]
    assert len(got[7]) == 3 and [i for i, _ in got[5]] == [f"i{j}" for j in range(k) if j not in set(masks[5])][: len(got[5])]


def test_batched_top_k_of_an_empty_batch_or_catalogue() -> None:
    assert _recommender(5)._top_many(np.zeros((0, 5), np.float32), [], 3) == []
    assert _recommender(0)._top_many(np.zeros((2, 0), np.float32), [np.zeros(0, np.int64)] * 2, 3) == [[], []]


# -- the scoring path on a small real model (random weights; pure computation, no services) -------
import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from crossrec.adaptation.model import CrossDomainModel, ModelConfig  # noqa: E402
from crossrec.publish import explain  # noqa: E402
from crossrec.recommend import explained, explained_many, recommend_many  # noqa: E402


def _small_model_recommender(n_source: int = 150, n_target: int = 400, seed: int = 0) -> Recommender:
    torch.manual_seed(seed)
    cfg = ModelConfig(in_dim=8, dim=16, max_len=12, item_tower="text")
    model = CrossDomainModel(cfg).eval()
    with torch.no_grad():
        model.b.fill_(0.37)  # a trained model's bias is not 0
        model.encoder.dom.weight.normal_()  # nor are its domain embeddings
    keys = [("", "")] + [("art", f"a{i}") for i in range(n_source)] + [("office", f"o{i}") for i in range(n_target)]
    vecs = torch.nn.functional.normalize(torch.randn(len(keys), cfg.dim), dim=-1).numpy()
    vecs[5] = vecs[7]  # two source items alike (rows 5 and 7: a4 and a6): explanation ties
    vecs[n_source + 3] = vecs[n_source + 9]  # two target items alike: score ties
    rec = object.__new__(Recommender)
    rec._init_parts("t1", model, {"view": "mixed", "source_domain": "art", "target_domain": "office"}, keys, vecs)
    return rec


def _histories(rec: Recommender, n: int, seed: int = 1) -> dict[str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    keys = rec._keys[1:]
    out = {}
    for u in range(n):
        h = [rng.choice(keys) for _ in range(rng.choice([0, 1, 2, 5, 11, 12, 20]))]
        if h and u % 3 == 0:
            h += h[:2]  # repeated items
        if u % 7 == 0:
            h.append(("office", "unknown-item"))
        out[f"u{u}"] = h
    out["twins"] = [("art", "a4"), ("art", "a6")]
    return out


def _reference_top_k(rec: Recommender, histories: list, k: int) -> list[list[tuple[str, float]]]:
    """The pre-blocking path: the model's own logits for the whole batch, then the batched top-k."""
    states, target_mat = rec._user_states(histories)
    with torch.no_grad():
        logits = rec.model.logits(states, target_mat).numpy()
    return rec._top_many(logits, rec._masks(histories, None), k)


@pytest.mark.parametrize("rows", [1, 2, 7, 65])
def test_logits_into_a_buffer_equal_the_models_logits_bit_for_bit(rows: int) -> None:
    rec = _small_model_recommender()
    states, target_mat = rec._user_states(list(_histories(rec, rows).values())[:rows])
    with torch.no_grad():
        expected = rec.model.logits(states, target_mat)
        out = torch.full((rows, target_mat.shape[0]), 7.0)  # stale values must not leak through
        assert torch.equal(rec.model.logits(states, target_mat, out), expected)


def test_top_k_through_the_reused_buffer_equals_fresh_logits() -> None:
    """Batches of several sizes, and a catalogue that grows in between (the buffer is re-shaped)."""
    rec = _small_model_recommender()
    histories = _histories(rec, 150)
    users = list(histories)
    for batch in (users, users[:3], users[40:41], users):
        hs = [histories[u] for u in batch]
        assert rec.top_k_for_users({u: histories[u] for u in batch}, 10) == dict(zip(batch, _reference_top_k(rec, hs, 10)))
    rec.add_item("office", "o-new", np.ones(8, np.float32))
    assert rec.top_k_for_users(histories, 10) == dict(zip(users, _reference_top_k(rec, list(histories.values()), 10)))
    assert rec.score_history(histories[users[4]], 10) == _reference_top_k(rec, [histories[users[4]]], 10)[0]


def test_batched_explanations_equal_the_per_user_ones() -> None:
    rec = _small_model_recommender()
    histories = _histories(rec, 120)
    histories["empty"] = []
    histories["unknown-only"] = [("office", "nope")]
    got = recommend_many(rec, histories, 10)
    tops = rec.top_k_for_users(histories, 10)
    assert got == {u: explained(rec, histories[u], tops[u]) for u in histories}
    assert explained_many(rec, histories, tops, block=7) == got  # blocks of users, one ending on a short one
    assert got["empty"] and all(item.because is None for item in got["empty"] + got["unknown-only"])
    # the twins tie on every recommendation: the later (more recent) history item explains it
    assert {item.because for item in got["twins"]} == {"a6"}
    assert explain(rec.vectors_for([("office", "o1")]), rec.vectors_for(histories["twins"]), ["a4", "a6"]) == ["a6"]


def _reference_rows(rec: Recommender, history: list[tuple[str, str]]) -> tuple[list[int], int]:
    """A plain per-event build of the model's input: the view's known items, the last max_len - 1;
    and how many of the view's items were unknown."""
    rows, unknown = [], 0
    for domain, item_id in history:
        if rec.view == "target" and domain != rec.target_domain:
            continue
        if (domain, item_id) not in rec._index:
            unknown += 1
            continue
        rows.append(rec._index[(domain, item_id)])
    return rows[-(rec.max_len - 1) :], unknown


@pytest.mark.parametrize("view", ["mixed", "target"])
def test_user_states_read_each_history_as_bos_then_its_items_with_their_domains(view: str) -> None:
    """The vectorised build of the batch's token and domain matrices, against a plain per-row build."""
    from crossrec.adaptation.data import BOS_DOMAIN_ID

    rec = _small_model_recommender()
    rec.view = view
    hs = list(_histories(rec, 40).values())
    hs.append([("art", "gone")] * 3 + [("office", f"o{i}") for i in range(30)])  # truncated, unknown first
    built = [_reference_rows(rec, h) for h in hs]
    rows = [r for r, _ in built]
    L = max(len(r) for r in rows) + 1
    tok = torch.zeros(len(rows), L, dtype=torch.int64)
    dom = torch.zeros(len(rows), L, dtype=torch.int64)
    for i, r in enumerate(rows):
        for j, row in enumerate(r, start=1):
            tok[i, j] = row
            dom[i, j] = 1 if rec._keys[row][0] == "office" else 0
    dom[:, 0] = BOS_DOMAIN_ID
    lengths = torch.as_tensor([len(r) + 1 for r in rows])
    with torch.no_grad():
        expected = rec.model.user_states(rec._vecs[tok], dom, lengths)[torch.arange(len(rows)), lengths - 1]
    rec.unknown_items = 0
    states, _ = rec._user_states(hs)
    assert torch.equal(states, expected)
    assert rec.unknown_items == sum(u for _, u in built) > 0
    assert any(len(r) == 0 for r in rows) and any(len(r) == rec.max_len - 1 for r in rows)  # empty and truncated
    read_domains = {rec._keys[row][0] for r in rows for row in r}
    assert read_domains == ({"office"} if view == "target" else {"art", "office"})  # the view decides what is read
