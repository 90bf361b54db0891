"""Train the chosen model again, on every training event, before it is served.

Why: every choice of a run (the strategy, the ID-offset shrinkage, the routes and blend weights) is
made on the selection set, the last target event of up to ``TrainConfig.selection_users`` training
users, held out of training so that choices are judged on events no model learned from. The more
users that set holds, the finer the differences it can separate, but each held-out event is one
the models learn nothing from; it is the last target event of its user, the most recent one.
So the choices are made on the held-out events, and the model that is registered and served is
then trained again with those choices on every training event: the usual select-then-refit.

What is kept from the choices: the strategy and every hyper-parameter, the shrinkage ``k`` (folded
in as chosen, not chosen again), the routing table (routes and blend weights). What is fitted
again on the full sequences: the model itself (early-stopped on the validation users, as before)
and the training-free scorers behind the routes (popularity, item-KNN, source co-occurrence).
Source pretraining never read the selection events, so a cached one is reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from crossrec.adaptation.data import AdaptData
from crossrec.adaptation.model import HybridItemTower, ModelConfig
from crossrec.adaptation.shrinkage import shrink_factors
from crossrec.adaptation.strategies import STRATEGIES, RunContext, Trained
from crossrec.adaptation.trainer import TrainConfig


def full_data_context(data: AdaptData, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, cache: dict) -> RunContext:
    """A run context whose training sequences keep every target event (no selection set) and that
    chooses nothing (no shrinkage grid). Only source pretraining is taken from ``cache``: every
    other cached entry (item counts, eval sets) belongs to the sequences with the selection cut."""
    kept = {k: v for k, v in cache.items() if isinstance(k, tuple) and k and k[0] == "pretrained"}
    return RunContext(data, model_cfg, replace(train_cfg, selection_users=0, id_shrink_grid=[]), seed, 1.0, cache=kept)


def kept_shrinkage(chosen: Trained) -> float:
    """The shrinkage ``k`` the selection set kept for ``chosen`` (0: none, or none was tried)."""
    return float(((chosen.choice or {}).get("id_shrink") or {}).get("kept", 0.0))


def refit_chosen(ctx: RunContext, chosen: Trained, say: Callable[[str], None] = print) -> Trained:
    """``chosen``'s strategy trained again in ``ctx`` (see ``full_data_context``) with its kept
    shrinkage folded into the ID table; ``choice`` records what was carried over."""
    say(f"refit: training {chosen.name} again on every training event (the selection events included)")
    refit = STRATEGIES[chosen.name](ctx)
    k = kept_shrinkage(chosen)
    items = refit.model.items if refit.model is not None else None
    if k > 0 and isinstance(items, HybridItemTower):
        with torch.no_grad():
            table = items.ids.weight
            table.mul_(shrink_factors(ctx.item_event_counts(), k).to(table.device)[:, None])
    refit.choice = {"refit_of": chosen.name, "id_shrink_kept": k}
    return refit
