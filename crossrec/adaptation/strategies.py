"""Transfer strategies, registered by name so a run can compare any subset.

Each strategy turns (data, configs, seed, fraction of target training users) into a trained
``Trained`` object that knows which history view it reads ('mixed' = both domains, 'target' =
target only) and how to rank an EvalSet. Source pretraining is shared (cached per seed) by the
strategies that start from it, so the full comparison pays for it once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from crossrec.adaptation.baselines import ItemKNN, Popularity, sasrec_model
from crossrec.adaptation.data import SOURCE, TARGET, AdaptData, EvalSet, UserSeq, make_eval_set, make_eval_set_at, selection_positions, truncate_at, SPLIT_CODES
from crossrec.adaptation.model import CrossDomainModel, ModelConfig
from crossrec.adaptation.shrinkage import choose_id_shrink, has_id_offsets, item_event_counts
from crossrec.evaluation import compute_metrics, per_user
from crossrec.adaptation.trainer import EpochLog, Phase, TrainConfig, ndcg10, resolve_device, score_eval_set, train_phase


@dataclass
class Trained:
    """A trained scorer plus what it needs at evaluation time."""

    name: str
    view: str
    model: CrossDomainModel | None = None
    baseline: Popularity | ItemKNN | None = None  # a training-free scorer instead of a model
    logs: list[EpochLog] = field(default_factory=list)
    best_valid: float | None = None
    choice: dict | None = None  # a hyper-parameter search's candidates and what was kept (SASRec)

    @property
    def kind(self) -> str:
        if self.baseline is not None:
            return self.name
        return self.model.cfg.item_tower  # type: ignore[union-attr]

    def ranks(self, data: AdaptData, ev: EvalSet) -> np.ndarray:
        if self.baseline is not None:
            return self.baseline.ranks(data, ev)
        return score_eval_set(self.model, data, ev)  # type: ignore[arg-type]


@dataclass
class RunContext:
    data: AdaptData
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    seed: int
    fraction: float = 1.0
    progress: Callable[[str], None] | None = None
    cache: dict = field(default_factory=dict)

    # ---- data views -------------------------------------------------------------------------
    def eval_set(self, split: str, view: str, cold: bool = False) -> EvalSet:
        """'valid' (early stopping), 'test' (reporting) or 'select' (choices; falls back to 'valid'
        when the selection set is disabled or empty)."""
        if split == "select" and not self.selection():
            split = "valid"
        key = ("eval", split, view, cold)
        if key not in self.cache:
            if split == "select":
                self.cache[key] = make_eval_set_at(self.data, self.selection(), view, self.model_cfg.max_len, drop_target_history=cold)
            else:
                users = self.data.split_users[split]
                self.cache[key] = make_eval_set(self.data, users, SPLIT_CODES[split if split != "train" else "test"], view, self.model_cfg.max_len, drop_target_history=cold)
        return self.cache[key]

    def selection(self) -> dict[str, int]:
        """Held-out positions of the selection set (same users for every seed and fraction)."""
        key = ("selection", self.train_cfg.selection_users)
        if key not in self.cache:
            self.cache[key] = selection_positions(self.data, self.train_cfg.selection_users)
        return self.cache[key]

    def item_event_counts(self) -> np.ndarray:
        """Training interactions per catalogue index, both domains, in what this run trains on."""
        key = ("item_event_counts", self.seed, self.fraction)
        if key not in self.cache:
            self.cache[key] = item_event_counts(self.data.catalog.n_items, self.train_seqs("mixed"))
        return self.cache[key]

    def item_train_counts(self) -> np.ndarray:
        """Training interactions per target item (local index) in what this run trains on: the
        target slice of ``item_event_counts`` (the run's target events are the same in either view)."""
        cat = self.data.catalog
        return self.item_event_counts()[cat.target_offset : cat.target_offset + cat.n_target]

    def target_users(self) -> set[str]:
        """The fraction of training users whose target-domain events may be trained on."""
        key = ("target_users", self.seed, self.fraction)
        if key not in self.cache:
            users = [u for u in self.data.split_users["train"] if u in self.data.users and (self.data.users[u].dom == TARGET).any()]
            n = max(1, math.ceil(self.fraction * len(users)))
            rng = np.random.default_rng(self.seed)
            self.cache[key] = {users[i] for i in rng.permutation(len(users))[:n]}
        return self.cache[key]

    def epoch_repeat(self, strategy: str) -> int:
        """Passes per epoch for ``strategy`` (``TrainConfig.full_steps_at_fractions``): 1/fraction,
        so an epoch on a fraction of the users has the steps of an epoch on all of them."""
        if strategy not in self.train_cfg.full_steps_at_fractions or self.fraction >= 1.0:
            return 1
        return max(1, round(1.0 / self.fraction))

    def train_seqs(self, view: str) -> list[UserSeq]:
        """Training sequences in ``view``; users outside the target fraction keep only source events."""
        keep = self.target_users()
        held = self.selection()
        out = []
        for u in self.data.split_users["train"]:
            s = self.data.users.get(u)
            if s is None:
                continue
            s = truncate_at(s, held.get(u))
            if u not in keep:
                s = s.view("source")
            out.append(s.view(view))
        return out

    def validator(self, view: str) -> Callable[[CrossDomainModel], float]:
        ev = self.eval_set("valid", view)
        return lambda m: ndcg10(m, self.data, ev)

    def new_model(self, whiten_on: str = "both") -> CrossDomainModel:
        """A fresh text model whose adaptor starts at the PCA whitening of the items it may use
        ('target' for the no-transfer strategy, 'both' otherwise)."""
        torch.manual_seed(self.seed)
        cat = self.data.catalog
        cfg = self.model_cfg
        if cfg.item_tower == "text+id" and cfg.n_items != cat.n_items:
            cfg = ModelConfig(**{**cfg.to_dict(), "n_items": cat.n_items})
        model = CrossDomainModel(cfg, torch.from_numpy(cat.embeddings))
        lo = cat.target_offset if whiten_on == "target" else 1
        model.items.adaptor.init_whitening(torch.from_numpy(cat.embeddings[lo:]))
        return model.to(resolve_device(self.train_cfg.device))


STRATEGIES: dict[str, Callable[[RunContext], Trained]] = {}
TRANSFER = ("pretrain_finetune_all", "pretrain_finetune_adaptor", "joint_adversarial", "zero_shot")


def strategy(name: str) -> Callable[[Callable[[RunContext], Trained]], Callable[[RunContext], Trained]]:
    def wrap(fn: Callable[[RunContext], Trained]) -> Callable[[RunContext], Trained]:
        STRATEGIES[name] = fn
        return fn

    return wrap


def _pretrained(ctx: RunContext) -> tuple[CrossDomainModel, list[EpochLog], float | None]:
    """Source-domain pretraining (source-only sequences of all training users), cached per seed.

    Early-stopped on the zero-shot validation NDCG@10 (target valid users, in the transfer view):
    this selects on validation without any target training.
    """
    view = ctx.train_cfg.transfer_view
    key = ("pretrained", ctx.seed, view)
    if key not in ctx.cache:
        model = ctx.new_model()
        seqs = [s.view("source") for u in ctx.data.split_users["train"] if (s := ctx.data.users.get(u)) is not None]
        phase = Phase("pretrain", seqs, {SOURCE}, view=view, max_epochs=ctx.train_cfg.pretrain_epochs)
        res = train_phase(model, ctx.data, phase, ctx.train_cfg, ctx.seed, ctx.validator(view), ctx.progress)
        ctx.cache[key] = (model.state_dict(), res.logs, res.best_valid)
    state, logs, best = ctx.cache[key]
    model = ctx.new_model()
    model.load_state_dict(state)
    return model, list(logs), best


def _finetune(ctx: RunContext, name: str, trainable: str) -> Trained:
    model, logs, _ = _pretrained(ctx)
    view = ctx.train_cfg.transfer_view
    seqs = [s for s in ctx.train_seqs(view) if (s.dom == TARGET).any()]
    res = train_phase(model, ctx.data, Phase(name, seqs, {TARGET}, view, trainable=trainable), ctx.train_cfg, ctx.seed, ctx.validator(view), ctx.progress)
    return _shrink_ids(ctx, Trained(name, view, model=model, logs=logs + res.logs, best_valid=res.best_valid))


def _shrink_ids(ctx: RunContext, trained: Trained) -> Trained:
    """Choose the ID-offset shrinkage of a text+id model on the selection set and fold it in
    (``crossrec.adaptation.shrinkage``); the choice is kept in ``trained.choice``."""
    grid = ctx.train_cfg.id_shrink_grid
    if not grid or not has_id_offsets(trained.model):
        return trained
    model = trained.model
    assert model is not None
    sel = ctx.eval_set("select", trained.view)
    report = choose_id_shrink(model, ctx.item_event_counts(), lambda m: per_user(score_eval_set(m, ctx.data, sel)), grid)
    trained.choice = {"id_shrink": report}
    if ctx.progress is not None:
        ctx.progress(f"{trained.name}: ID offsets: {report['reason']}")
    return trained


@strategy("target_only")
def target_only(ctx: RunContext) -> Trained:
    """No transfer: target-domain events only, both in training and in the history at inference."""
    model = ctx.new_model(whiten_on="target")
    seqs = [s for s in ctx.train_seqs("target") if s.items.size]
    res = train_phase(model, ctx.data, Phase("target_only", seqs, {TARGET}, "target"), ctx.train_cfg, ctx.seed, ctx.validator("target"), ctx.progress)
    return _shrink_ids(ctx, Trained("target_only", "target", model=model, logs=res.logs, best_valid=res.best_valid))


@strategy("pretrain_finetune_all")
def pretrain_finetune_all(ctx: RunContext) -> Trained:
    return _finetune(ctx, "pretrain_finetune_all", "all")


@strategy("pretrain_finetune_adaptor")
def pretrain_finetune_adaptor(ctx: RunContext) -> Trained:
    """Keep the source-trained sequence encoder; adapt only the item adaptor and scorer."""
    return _finetune(ctx, "pretrain_finetune_adaptor", "adaptor")


@strategy("joint_adversarial")
def joint_adversarial(ctx: RunContext) -> Trained:
    """Both domains' next-item losses at once, plus a gradient-reversed domain discriminator on f_i.

    In the 'target' transfer view each domain's events are their own sequences (what is shared is
    the adaptor and the encoder, as in multi-domain pretraining); in the 'mixed' view the encoder
    reads each user's interleaved history.
    """
    model = ctx.new_model()
    view = ctx.train_cfg.transfer_view
    if view == "mixed":
        seqs = ctx.train_seqs("mixed")
    else:
        seqs = [s.view("source") for s in ctx.train_seqs("mixed")] + [s for s in ctx.train_seqs("target") if s.items.size]
    phase = Phase("joint_adversarial", seqs, {SOURCE, TARGET}, view, adversarial=True)
    res = train_phase(model, ctx.data, phase, ctx.train_cfg, ctx.seed, ctx.validator(view), ctx.progress)
    return _shrink_ids(ctx, Trained("joint_adversarial", view, model=model, logs=res.logs, best_valid=res.best_valid))


@strategy("zero_shot")
def zero_shot(ctx: RunContext) -> Trained:
    """Source-trained model applied to target users with no target training at all."""
    model, logs, best = _pretrained(ctx)
    return Trained("zero_shot", ctx.train_cfg.transfer_view, model=model, logs=logs, best_valid=best)


@strategy("popularity")
def popularity(ctx: RunContext) -> Trained:
    return _baseline(ctx, "popularity", Popularity.fit(ctx.data, ctx.train_seqs("target")))


@strategy("item_knn")
def item_knn(ctx: RunContext) -> Trained:
    """Co-occurrence item-KNN on the target domain (no training, no text, no transfer)."""
    return _baseline(ctx, "item_knn", ItemKNN.fit(ctx.data, ctx.train_seqs("target")))


def _baseline(ctx: RunContext, name: str, scorer: Popularity | ItemKNN) -> Trained:
    t = Trained(name, "target", baseline=scorer)
    t.best_valid = compute_metrics(t.ranks(ctx.data, ctx.eval_set("valid", "target")))["NDCG@10"]
    return t


def _split_overrides(over: dict) -> tuple[dict, dict]:
    model_keys, train_keys = set(ModelConfig.__dataclass_fields__), set(TrainConfig.__dataclass_fields__)
    unknown = set(over) - model_keys - train_keys
    if unknown:
        raise ValueError(f"sasrec_grid: unknown hyper-parameters {sorted(unknown)}")
    return {k: v for k, v in over.items() if k in model_keys}, {k: v for k, v in over.items() if k in train_keys}


@strategy("sasrec")
def sasrec(ctx: RunContext) -> Trained:
    """SASRec (Kang & McAuley 2018): causal self-attention over free item-ID embeddings, target only.

    Its own hyper-parameters: every entry of ``train_cfg.sasrec_grid`` is trained (early stopping on
    the validation users) and the one with the best selection-set NDCG@10 is kept, so it is not
    handicapped by the text model's learning rate and dropout. The choice is made once (first call,
    full data) and reused by the fraction curve, which would otherwise pay for the grid per point.
    On a fraction of the users an epoch passes over the data ``ctx.epoch_repeat`` times, so the
    entry's patience and epoch cap count about the steps they count on the full data.
    """
    seqs = [s for s in ctx.train_seqs("target") if s.items.size]
    sel = ctx.eval_set("select", "target")
    fixed = ctx.cache.get(("sasrec_params",))
    grid = [fixed] if fixed is not None else list(ctx.train_cfg.sasrec_grid) or [{}]
    best: tuple[float, CrossDomainModel, list, float | None, dict] | None = None
    tried = []
    for over in grid:
        m_over, t_over = _split_overrides(over)
        mcfg = ModelConfig(**{**ctx.model_cfg.to_dict(), "encoder": "transformer", **m_over})
        tcfg = TrainConfig(**{**ctx.train_cfg.__dict__, **t_over})
        torch.manual_seed(ctx.seed)
        model = sasrec_model(mcfg, ctx.data.catalog.n_items)
        res = train_phase(model, ctx.data, Phase("sasrec", seqs, {TARGET}, "target", repeat=ctx.epoch_repeat("sasrec")), tcfg, ctx.seed, ctx.validator("target"), ctx.progress)
        score = compute_metrics(score_eval_set(model, ctx.data, sel))["NDCG@10"]
        tried.append({"params": over, "select_ndcg10": score, "valid_ndcg10": res.best_valid, "epochs": len(res.logs)})
        if best is None or score > best[0]:
            best = (score, model, res.logs, res.best_valid, over)
    assert best is not None
    ctx.cache.setdefault(("sasrec_params",), best[4])
    return Trained("sasrec", "target", model=best[1], logs=best[2], best_valid=best[3], choice={"tried": tried, "kept": best[4]})


ALL = ("target_only", *TRANSFER, "popularity", "item_knn", "sasrec")


def resolve(names: str | list[str]) -> list[str]:
    """'all' or a comma list -> validated strategy names (unknown names: clear error)."""
    items = ALL if names in ("all", ["all"]) else ([n.strip() for n in names.split(",")] if isinstance(names, str) else names)
    unknown = [n for n in items if n not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {sorted(STRATEGIES)}")
    return list(items)
