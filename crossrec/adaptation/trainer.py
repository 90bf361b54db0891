"""Training and full-rank evaluation loops shared by every strategy.

A strategy is a sequence of ``Phase``s (what the model sees, what it predicts, which parameters
move); this module runs one phase with early stopping on validation NDCG@10 and evaluates a model
on an EvalSet with one matmul per user batch against all target items.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from crossrec.adaptation.data import BOS_DOMAIN_ID, SOURCE, TARGET, AdaptData, EvalSet, TrainExample, UserSeq, make_train_examples, pad_batch
from crossrec.adaptation.model import CrossDomainModel, DomainDiscriminator
from crossrec.evaluation import compute_metrics, rank_batch
from crossrec.settings import AdaptSettings


@dataclass
class TrainConfig:
    lr: float = 5e-3
    weight_decay: float = 1e-4
    batch_size: int = 64  # many small steps: the sparse target data needs steps more than throughput
    n_negatives: int = 1024  # shared uniform negatives per domain per batch (0 = full softmax)
    max_epochs: int = 15
    patience: int = 3
    pretrain_epochs: int = 8
    adv_weight: float = 0.1
    grl_lambda: float = 1.0
    adv_sample: int = 1024
    eval_every: int = 1
    max_seconds: float | None = None  # hard wall-clock cap per phase (nightly window)
    # What the transfer strategies' encoder reads: 'target' = the user's target-domain history
    # (transfer is through the shared adaptor + encoder weights, as in UniSRec), 'mixed' = both
    # domains interleaved (transfer also through the user's source history). On Art-Office the
    # source history barely predicts office items (item-KNN from it: NDCG@10 ~0.003, below
    # popularity; benchmarks/bench_transfer_signal.py), and the mixed view measured worse
    # (finetune-all test NDCG@10 0.042-0.059 mixed, by residual variant, vs 0.064 target; seed 42).
    transfer_view: str = "target"
    # Selection set (data.selection_positions): how many training users lend their last target event
    # to strategy / route / hyper-parameter choice, kept out of their training sequences (the chosen
    # model is then trained again on everything: adaptation/refit.py). 0 = choose on the validation
    # users (the early-stopping set) as before. The default is settings.adapt.selection_users'.
    selection_users: int = AdaptSettings().selection_users
    # Tail slots of the routed model: the overall loss accepted for them (settings.adapt's default;
    # routing.fit_routing, tail_slots.choose_tail_slots). 0 = no slots.
    tail_slot_margin: float = AdaptSettings().tail_slot_margin
    # The SASRec baseline's own hyper-parameters: each entry overrides ModelConfig/TrainConfig fields;
    # the entry with the best selection-set NDCG@10 is kept (early stopping on validation as usual).
    # Probed on Art -> Office (seed 42, validation NDCG@10 at the best epoch): lr 1e-3 with dropout
    # 0.2 .060 (epoch 8), 0.5 .067 (epoch 12, hence the longer cap); the full softmax
    # (n_negatives=0) .060 at three times the cost per epoch, so it is not in the default grid.
    sasrec_grid: list[dict] = field(
        default_factory=lambda: [
            {"lr": 1e-3, "dropout": 0.2},
            {"lr": 1e-3, "dropout": 0.5, "max_epochs": 30, "patience": 4},
        ]
    )
    # The shrinkage of each item's ID offset toward its text vector, c / (c + k) with c its training
    # interactions (crossrec/adaptation/shrinkage.py): the k values tried on the selection set after
    # training (the best is kept only when its CI against no shrinkage excludes zero); empty = off.
    id_shrink_grid: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0, 100.0])
    # Strategies whose epochs keep a full-data epoch's number of steps when trained on a fraction f
    # of the target users (Phase.repeat = round(1/f)). SASRec: at 25 % of the users (seed 42) it
    # sat near its first epoch's validation score for several epochs, so patience 4 stopped it at
    # epoch 5 (validation .021) where patience 30 reached .051 at epoch 27. The text models are not
    # listed: target_only at 10 % gave the same model with patience 15 and 60 epochs.
    full_steps_at_fractions: list[str] = field(default_factory=lambda: ["sasrec"])
    # Where training runs: "cpu" (default, the path every test and the nightly take), "cuda", or
    # "auto" (cuda when torch sees one). Evaluation follows the model's device.
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.transfer_view not in ("target", "mixed"):
            raise ValueError(f"unknown transfer view {self.transfer_view!r} (target | mixed)")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"unknown device {self.device!r} (cpu | cuda | cuda:N | auto)")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given, once checked to exist.

    Why check here: asked for a GPU it does not have, torch fails only when the model moves,
    with an assertion about how torch was compiled; this says what was asked and what to use.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch sees no CUDA device (torch.cuda.is_available() is False); use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Phase:
    name: str
    seqs: list[UserSeq]
    predict: set[int]
    view: str  # what the encoder sees at evaluation: 'mixed' | 'target' | 'source'
    trainable: str = "all"  # 'all' | 'adaptor' | 'encoder' (everything but the text adaptor)
    adversarial: bool = False
    max_epochs: int | None = None
    early_stop: bool = True
    # Passes over the examples per epoch (each in its own order): an epoch of a model trained on
    # a fraction f of the users can then carry the steps of a full-data epoch (repeat = 1/f), so
    # its patience and epoch cap mean the same amount of training at every fraction.
    repeat: int = 1


@dataclass
class EpochLog:
    phase: str
    epoch: int
    loss: float
    seconds: float
    valid_ndcg10: float | None = None
    adv_loss: float | None = None
    steps: int = 0  # optimizer steps in this epoch


@dataclass
class PhaseResult:
    logs: list[EpochLog] = field(default_factory=list)
    best_valid: float | None = None
    best_epoch: int = 0


def _token_domains(data: AdaptData, tok: torch.Tensor) -> torch.Tensor:
    dom = torch.as_tensor(data.catalog.domain, dtype=torch.int64, device=tok.device)[tok]
    dom[:, 0] = BOS_DOMAIN_ID
    return dom.clamp(min=0)


def _candidates(data: AdaptData, lab: torch.Tensor, d: int, n_neg: int, gen: torch.Generator | None) -> torch.Tensor:
    """Items the softmax runs over for domain ``d``: all of them, or uniform negatives shared by the batch.

    Sampled softmax (own positive + shared uniform negatives): the adaptor runs over ~1k items per
    step instead of the whole catalogue. Uniform (not in-batch) negatives on purpose: in-batch
    negatives are popularity-sampled and teach the model to *discount* popular items, which loses
    to plain popularity under full ranking. Evaluation always ranks against ALL target items.
    """
    cat = data.catalog
    lo, n = cat.offset(d), cat.count(d)
    if n_neg <= 0 or n_neg >= n:
        return torch.arange(lo, lo + n)
    return lo + torch.randint(n, (n_neg,), generator=gen)


def _rows(vecs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``vecs[idx]`` through ``index_select``, whose backward sums repeated indices in a fixed order.

    The backward of advanced indexing (``index_put_`` with accumulation) adds the gradients of
    repeated rows in thread order on a multi-threaded CPU, so two runs of the same seed drifted
    apart (SASRec seed 42: test NDCG@10 .0531 in one run, .0614 in another). ``index_select``
    gives bit-identical weights run after run and was as fast in a micro-benchmark.
    """
    return vecs.index_select(0, idx.reshape(-1)).reshape(*idx.shape, vecs.shape[-1])


def _batch_loss(
    model: CrossDomainModel,
    data: AdaptData,
    examples: list[TrainExample],
    predict: set[int],
    n_neg: int = 0,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    cat = data.catalog
    tok_np, lab_np, len_np = pad_batch(examples)
    dev = _model_device(model)
    tok, lab, lengths = torch.from_numpy(tok_np).to(dev), torch.from_numpy(lab_np).to(dev), torch.from_numpy(len_np).to(dev)
    ranges = [_candidates(data, lab, d, n_neg, gen).to(dev) for d in sorted(predict)]
    needed = torch.unique(torch.cat([tok[tok > 0], lab[lab > 0]] + ranges))
    lookup = torch.zeros(cat.n_items, dtype=torch.int64, device=dev)
    lookup[needed] = torch.arange(len(needed), device=dev)
    vecs = model.item_vecs(needed)
    tok_vecs = _rows(vecs, lookup[tok])
    h = model.user_states(tok_vecs, _token_domains(data, tok), lengths)
    dom_of_lab = torch.as_tensor(cat.domain, dtype=torch.int64, device=dev)[lab]
    losses, count = [], 0
    for d, rng in zip(sorted(predict), ranges):
        sel = (lab > 0) & (dom_of_lab == d)
        if not sel.any():
            continue
        if n_neg <= 0 or n_neg >= cat.count(d):  # full softmax
            logits = model.logits(h[sel], _rows(vecs, lookup[rng]))
            losses.append(F.cross_entropy(logits, lab[sel] - cat.offset(d), reduction="sum"))
        else:
            q = model.query(h[sel])
            pos = (q * _rows(vecs, lookup[lab[sel]])).sum(-1, keepdim=True)
            neg = q @ _rows(vecs, lookup[rng]).T
            neg = neg.masked_fill(rng[None, :] == lab[sel][:, None], float("-inf"))  # accidental hits
            logits = torch.cat([pos, neg], dim=1) + model.b
            losses.append(F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.int64, device=dev), reduction="sum"))
        count += int(sel.sum())
    return torch.stack(losses).sum() / max(count, 1)


def _adversarial_loss(model: CrossDomainModel, disc: DomainDiscriminator, data: AdaptData, n: int, lam: float, gen: torch.Generator) -> torch.Tensor:
    cat = data.catalog
    src = cat.source_offset + torch.randint(cat.n_source, (n,), generator=gen)
    tgt = cat.target_offset + torch.randint(cat.n_target, (n,), generator=gen)
    dev = _model_device(model)
    v = model.item_vecs(torch.cat([src, tgt]).to(dev))
    y = torch.cat([torch.zeros(n), torch.ones(n)]).to(dev)
    return F.binary_cross_entropy_with_logits(disc(v, lam), y)


def train_phase(
    model: CrossDomainModel,
    data: AdaptData,
    phase: Phase,
    cfg: TrainConfig,
    seed: int,
    validate: Callable[[CrossDomainModel], float] | None,
    progress: Callable[[str], None] | None = None,
) -> PhaseResult:
    """Run one phase; keep the weights of the best validation epoch (restored at the end)."""
    examples = make_train_examples(phase.seqs, phase.predict, model.cfg.max_len)
    result = PhaseResult()
    if not examples:
        return result
    model.to(resolve_device(cfg.device))
    for p in model.parameters():
        p.requires_grad_(phase.trainable == "all")
    if phase.trainable == "adaptor":
        for p in model.adaptor_parameters():
            p.requires_grad_(True)
    elif phase.trainable == "encoder":
        adaptor = {id(p) for p in (model.items.adaptor.parameters() if getattr(model.items, "adaptor", None) is not None else ())}
        for p in model.parameters():
            p.requires_grad_(id(p) not in adaptor)
    elif phase.trainable != "all":
        raise ValueError(f"unknown trainable set {phase.trainable!r} (all | adaptor | encoder)")
    params = [p for p in model.parameters() if p.requires_grad]
    disc = DomainDiscriminator(model.cfg.dim).to(_model_device(model)) if phase.adversarial else None
    if disc is not None:
        params += list(disc.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    best_state, bad, t_phase = None, 0, time.perf_counter()
    max_epochs = phase.max_epochs or cfg.max_epochs
    for epoch in range(1, max_epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = np.concatenate([rng.permutation(len(examples)) for _ in range(max(1, phase.repeat))])
        total, adv_total, nb = 0.0, 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            batch = [examples[i] for i in order[s : s + cfg.batch_size]]
            loss = _batch_loss(model, data, batch, phase.predict, cfg.n_negatives, gen)
            if disc is not None:
                adv = _adversarial_loss(model, disc, data, cfg.adv_sample, cfg.grl_lambda, gen)
                adv_total += float(adv.detach())
                loss = loss + cfg.adv_weight * adv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            total += float(loss.detach())
            nb += 1
        log = EpochLog(phase.name, epoch, total / nb, time.perf_counter() - t0, adv_loss=(adv_total / nb) if disc else None, steps=nb)
        if validate is not None and phase.early_stop:
            log.valid_ndcg10 = validate(model)
            if result.best_valid is None or log.valid_ndcg10 > result.best_valid:
                result.best_valid, result.best_epoch, bad = log.valid_ndcg10, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        result.logs.append(log)
        if progress:
            v = f" valid NDCG@10={log.valid_ndcg10:.4f}" if log.valid_ndcg10 is not None else ""
            progress(f"{phase.name} epoch {epoch}: loss={log.loss:.4f} ({log.seconds:.1f}s){v}")
        if validate is not None and phase.early_stop and bad >= cfg.patience:
            break
        if cfg.max_seconds and time.perf_counter() - t_phase > cfg.max_seconds:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    return result


@torch.no_grad()
def _logit_batches(model: CrossDomainModel, data: AdaptData, ev: EvalSet, batch_size: int, dom: int = TARGET) -> Iterator[tuple[int, np.ndarray]]:
    """(first user of the batch, its (users, n_target) logits of every target item, unmasked):
    batches, so a caller that only needs ranks never holds the whole score matrix. ``dom=SOURCE``
    scores the source catalogue instead (how well a source-trained model ranks its own domain)."""
    model.eval()
    cat = data.catalog
    dev = _model_device(model)
    lo = cat.offset(dom)
    target_vecs = model.item_vecs(torch.arange(lo, lo + cat.count(dom), device=dev))
    for s in range(0, len(ev.targets), batch_size):
        hists = ev.histories[s : s + batch_size]
        L = max(len(h) for h in hists) + 1
        tok = torch.zeros(len(hists), L, dtype=torch.int64)
        for i, h in enumerate(hists):
            tok[i, 1 : len(h) + 1] = torch.as_tensor(h)
        tok = tok.to(dev)
        lengths = torch.as_tensor([len(h) + 1 for h in hists], device=dev)
        needed = torch.unique(tok[tok > 0])
        vecs = torch.zeros(cat.n_items, model.cfg.dim, device=dev)
        if needed.numel():
            vecs[needed] = model.item_vecs(needed)
        h = model.user_states(vecs[tok], _token_domains(data, tok), lengths)
        last = h[torch.arange(len(hists), device=dev), lengths - 1]
        yield s, model.logits(last, target_vecs).cpu().numpy()


def logits_eval_set(model: CrossDomainModel, data: AdaptData, ev: EvalSet, batch_size: int = 256, dom: int = TARGET) -> np.ndarray:
    """(users, n_target) float32 logits of every target item (unmasked): what blends and routes mix
    (``dom=SOURCE``: of every source item)."""
    out = [scores.astype(np.float32) for _, scores in _logit_batches(model, data, ev, batch_size, dom)]
    return np.concatenate(out) if out else np.zeros((0, data.catalog.count(dom)), np.float32)


def score_eval_set(model: CrossDomainModel, data: AdaptData, ev: EvalSet, batch_size: int = 256) -> np.ndarray:
    """1-based ranks of each held-out item among ALL target items, history masked."""
    ranks = [
        rank_batch(scores, ev.targets[s : s + batch_size], ev.masks[s : s + batch_size])
        for s, scores in _logit_batches(model, data, ev, batch_size)
    ]
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def evaluate(model: CrossDomainModel, data: AdaptData, ev: EvalSet) -> dict[str, float]:
    return compute_metrics(score_eval_set(model, data, ev))


def ndcg10(model: CrossDomainModel, data: AdaptData, ev: EvalSet) -> float:
    return evaluate(model, data, ev)["NDCG@10"]


__all__ = ["resolve_device", "TrainConfig", "Phase", "PhaseResult", "EpochLog", "train_phase", "score_eval_set", "evaluate", "ndcg10", "SOURCE", "TARGET"]
