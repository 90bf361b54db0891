"""New-domain (zero-shot) levers and the measurements that explain where they stop.

A zero-shot model is trained on source-domain sequences only and ranks target items for target
users; what it must beat is the best training-free scorer over the same histories (text cosine to
the last / recent items of either domain, source co-occurrence; ``scorers.py``). This module holds
what ``benchmarks/bench_zero_shot.py`` varies and measures, so the logic is testable and shared:

- ``ZeroShotVariant`` / ``train_variant``: source-only training with one lever changed (item tower,
  a frozen text adaptor, pretraining length, learning rate, target-side re-centring of the frozen
  embeddings). Early stopping on the validation users considers epoch 0 too (the untrained,
  whitened model), because source training can make target ranking *worse* from the first epoch.
- ``mix_weight``: the text-cosine residual, ``(1 - a) * model + a * text`` on row-normalised scores,
  with ``a`` chosen on a selection set.
- ``oracle_text_ceiling``: the best any "cosine to one history item" scorer could do per user
  (the query item chosen by an oracle), i.e. how much of the next-item signal lives in text
  similarity at all.
- ``source_eval_set`` / ``in_domain_ndcg``: the same model on its own (source) domain against text
  cosine there, to tell "the model learned nothing" from "what it learned does not carry over".
- ``without_ids``: a hybrid text+ID model with its learned ID offsets removed, to measure how much of
  a target-trained model's lead over text comes from item identities a new domain cannot have.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import torch

from crossrec.adaptation.data import SOURCE, AdaptData, EvalSet
from crossrec.adaptation.model import CrossDomainModel, HybridItemTower, ModelConfig, TextItemTower
from crossrec.adaptation.scorers import TrainingFreeScorers, normalise_rows, rank_scores
from crossrec.adaptation.strategies import RunContext
from crossrec.adaptation.trainer import EpochLog, Phase, logits_eval_set, train_phase
from crossrec.evaluation import per_user, rank_batch

ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))


@dataclass(frozen=True)
class ZeroShotVariant:
    """One zero-shot lever setting (defaults = the ``zero_shot`` strategy as registered)."""

    name: str
    item_tower: str = "text+id"
    trainable: str = "all"  # 'all' | 'encoder' (the text adaptor stays at its whitening init)
    epochs: int = 8
    lr: float | None = None
    recentre_target: bool = False
    view: str = "target"  # the history the encoder reads (early stopping and evaluation)


VARIANTS: dict[str, ZeroShotVariant] = {
    v.name: v
    for v in (
        ZeroShotVariant("base"),  # the registered zero_shot strategy (plus the epoch-0 candidate)
        ZeroShotVariant("base_mixed", view="mixed"),
        ZeroShotVariant("frozen_adaptor", trainable="encoder"),
        ZeroShotVariant("frozen_mixed", trainable="encoder", view="mixed"),
        ZeroShotVariant("recentred", recentre_target=True),
        ZeroShotVariant("frozen_recentred", trainable="encoder", recentre_target=True),
        ZeroShotVariant("text_tower", item_tower="text"),
        ZeroShotVariant("text_frozen", item_tower="text", trainable="encoder"),  # only source dynamics learned
        ZeroShotVariant("low_lr", lr=1e-3),
        ZeroShotVariant("long", epochs=20),
        ZeroShotVariant("untrained", epochs=0),
    )
}


@torch.no_grad()
def recentre_target(model: CrossDomainModel, data: AdaptData) -> None:
    """Shift the frozen embeddings of target items so their mean is the source items' mean.

    Why: sentence embeddings of two domains sit in different regions; an adaptor fitted on source
    items then sees target items off its training distribution. Moving the target cloud onto the
    source mean uses item texts only (no target interaction), so it is allowed in a new domain.
    """
    cat = data.catalog
    tower = model.items
    if not isinstance(tower, TextItemTower):
        raise TypeError("recentre_target needs a text item tower (text | text+id)")
    emb = cast(torch.Tensor, tower.emb).clone()  # the buffer shares memory with the catalogue: never shift that
    src = emb[cat.source_offset : cat.target_offset]
    tgt = emb[cat.target_offset :]
    emb[cat.target_offset :] = tgt - tgt.mean(0) + src.mean(0)
    tower.emb = emb


@dataclass
class VariantRun:
    model: CrossDomainModel
    logs: list[EpochLog]
    epoch0_valid: float
    best_valid: float
    best_epoch: int  # 0 = the untrained (whitened) model was kept
    # the best *trained* epoch (what the registered zero_shot strategy keeps, it never considers
    # epoch 0); None when nothing was trained or it is the kept model already
    trained: CrossDomainModel | None = None
    trained_valid: float | None = None


def train_variant(ctx: RunContext, v: ZeroShotVariant, say: Callable[[str], None] | None = None) -> VariantRun:
    """Source-only training of one variant, early-stopped on the validation users (epoch 0 included)."""
    mcfg = ModelConfig(**{**ctx.model_cfg.to_dict(), "item_tower": v.item_tower})
    tcfg = replace(ctx.train_cfg, pretrain_epochs=max(v.epochs, 1), transfer_view=v.view, lr=v.lr or ctx.train_cfg.lr)
    vctx = RunContext(ctx.data, mcfg, tcfg, ctx.seed, progress=ctx.progress, cache=ctx.cache)
    model = vctx.new_model()
    if v.recentre_target:
        recentre_target(model, ctx.data)
    validate = vctx.validator(v.view)
    v0 = validate(model)
    start = copy.deepcopy(model.state_dict())
    if say:
        say(f"{v.name}: epoch 0 (untrained) valid NDCG@10={v0:.4f}")
    if v.epochs <= 0:
        return VariantRun(model, [], v0, v0, 0)
    seqs = [s.view("source") for u in ctx.data.split_users["train"] if (s := ctx.data.users.get(u)) is not None]
    phase = Phase(f"zero_shot:{v.name}", seqs, {SOURCE}, v.view, trainable=v.trainable, max_epochs=v.epochs)
    res = train_phase(model, ctx.data, phase, tcfg, ctx.seed, validate, say)
    if res.best_valid is not None and res.best_valid > v0:
        return VariantRun(model, res.logs, v0, res.best_valid, res.best_epoch)
    trained = copy.deepcopy(model)
    model.load_state_dict(start)
    return VariantRun(model, res.logs, v0, v0, 0, trained=trained, trained_valid=res.best_valid)


def mix_weight(model_scores: np.ndarray, text_scores: np.ndarray, objective: Callable[[np.ndarray], float], alphas: Sequence[float] = ALPHAS) -> tuple[float, float, dict[float, float]]:
    """The text-residual weight ``a`` maximising ``objective((1 - a) * model + a * text)``.

    Both inputs are row-normalised first (logits and cosines live on different scales). Ties keep
    the smaller ``a`` (less of the training-free scorer). Returns (a, its objective, every trial).
    """
    m, t = normalise_rows(model_scores), normalise_rows(text_scores)
    trials = {float(a): objective((1.0 - a) * m + a * t) for a in alphas}
    best = max(trials.values())
    a = min(k for k, val in trials.items() if val >= best - 1e-12)
    return a, trials[a], trials


def mixed(model_scores: np.ndarray, text_scores: np.ndarray, a: float) -> np.ndarray:
    return (1.0 - a) * normalise_rows(model_scores) + a * normalise_rows(text_scores)


def oracle_text_ceiling(scorers: TrainingFreeScorers, ev: EvalSet, dom: int | None, rows: np.ndarray | None = None, batch: int = 2048) -> dict[str, float]:
    """Per user, the best rank of the held-out item under text cosine to any *single* history item
    (of domain ``dom``; None = either domain): an upper bound for every scorer that ranks by
    similarity to one history item, however cleverly it picks which.
    Returns the oracle's NDCG@10 and Recall@10 and the share of users with a usable history item.
    """
    cat = scorers.data.catalog
    rows = np.arange(len(ev.targets)) if rows is None else rows
    queries, owner = [], []
    for r in rows:
        h = ev.histories[r]
        items = np.unique(h if dom is None else h[cat.domain[h] == dom])
        queries += [np.asarray([i]) for i in items]
        owner += [r] * len(items)
    best = np.full(len(ev.targets), np.iinfo(np.int64).max // 2, np.int64)
    owner_a = np.asarray(owner, np.int64)
    for s in range(0, len(queries), batch):
        sc = scorers.text_cosine(queries[s : s + batch], None, None)
        o = owner_a[s : s + batch]
        r_ = rank_batch(sc, ev.targets[o].tolist(), [ev.masks[i] for i in o])
        np.minimum.at(best, o, r_)
    b = best[rows]
    return {
        "NDCG@10": float(per_user(b).mean()) if b.size else float("nan"),
        "Recall@10": float((b <= 10).mean()) if b.size else float("nan"),
        "users_with_query": float(np.isin(rows, owner_a).mean()) if rows.size else float("nan"),
    }


def source_eval_set(data: AdaptData, users: Sequence[str], max_len: int) -> EvalSet:
    """Each user's last source event held out, the source history before it as input; targets and
    masks are local *source* indices (for ``in_domain_ndcg``). Users with < 2 source events skip."""
    cat = data.catalog
    ids, hists, masks, targets = [], [], [], []
    for u in users:
        s = data.users.get(u)
        if s is None:
            continue
        pos = np.flatnonzero(s.dom == SOURCE)
        if pos.size < 2:
            continue
        p = int(pos[-1])
        hist = s.items[:p][s.dom[:p] == SOURCE]
        ids.append(u)
        hists.append(hist[-(max_len - 1) :])
        masks.append(np.unique(hist) - cat.source_offset)
        targets.append(int(s.items[p]) - cat.source_offset)
    n = len(ids)
    return EvalSet(ids, hists, masks, np.asarray(targets, np.int64), np.zeros(n, bool), np.zeros(n, np.int64))


def in_domain_ndcg(model: CrossDomainModel, scorers: TrainingFreeScorers, ev: EvalSet, dom: int) -> dict[str, float]:
    """NDCG@10 of the model and of text cosine to the last item, ranking domain ``dom``'s items."""
    model_ranks = rank_scores(logits_eval_set(model, scorers.data, ev, dom=dom), ev)
    text_ranks = rank_scores(scorers.text_onto(ev.histories, dom), ev)
    m, t = float(per_user(model_ranks).mean()), float(per_user(text_ranks).mean())
    return {"model": m, "text_last": t, "ratio": m / t if t > 0 else float("nan"), "n_users": len(ev.targets)}


def without_ids(model: CrossDomainModel) -> CrossDomainModel:
    """A copy of a text+ID model with every learned ID offset set to zero (text path only)."""
    if not isinstance(model.items, HybridItemTower):
        raise TypeError("without_ids needs a text+id model (item_tower='text+id')")
    out = copy.deepcopy(model)
    tower = out.items
    assert isinstance(tower, HybridItemTower)
    with torch.no_grad():
        tower.ids.weight.zero_()
    return out


__all__ = ["VARIANTS", "ZeroShotVariant", "VariantRun", "train_variant", "mix_weight", "mixed", "recentre_target", "oracle_text_ceiling",
           "source_eval_set", "in_domain_ndcg", "without_ids"]
