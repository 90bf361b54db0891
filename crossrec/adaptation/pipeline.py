"""The full comparison run behind `crossrec adapt` and `jobs/adapt.py`.

One call: load the contracts, train every requested strategy for every seed, evaluate on the test
users (full ranking, history masked), the constructed cold-start view, the data-fraction curve and
optionally a second encoder; register the best text model (selected on validation only), let the
gate decide promotion, and write metrics.json + the HTML report.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from crossrec.adaptation.artifacts import write_artifact
from crossrec.adaptation.data import AdaptData, load_adapt_data
from crossrec.adaptation.model import ModelConfig
from crossrec.adaptation.strategies import STRATEGIES, TRANSFER, RunContext, Trained, resolve
from crossrec.adaptation.trainer import TrainConfig
from crossrec.evaluation import HEADLINE, ITEM_SEGMENTS, TAIL_SEGMENTS, USER_SEGMENTS, compute_metrics, item_segment_of, paired_bootstrap, per_user, pooled, segment_metrics, user_segment_of
from crossrec.registry import ModelRegistry

if TYPE_CHECKING:
    from crossrec.adaptation.routing import RoutingTable
    from crossrec.adaptation.scorers import TrainingFreeScorers

TEXT_STRATEGIES = ("target_only", *TRANSFER)


@dataclass
class AdaptOptions:
    input_dir: Path
    output_dir: Path
    strategies: list[str] = field(default_factory=lambda: ["all"])
    seeds: list[int] = field(default_factory=lambda: [0])
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 1.0])
    fraction_strategies: list[str] = field(default_factory=lambda: ["target_only", "best", "popularity", "item_knn", "sasrec"])
    encoder: str = "minilm"
    extra_encoders: list[str] = field(default_factory=list)
    source_domain: str = "art"
    target_domain: str = "office"
    split_path: Path | None = None
    registry_dir: Path | None = None
    promote_margin: float = 0.0
    promote: bool = True
    routing: bool = True  # fit + store the routed model for the registered strategy
    # Train the chosen model again on every training event (the selection events included) before
    # it is registered (crossrec/adaptation/refit.py); off: the model the choices were made on is served.
    refit: bool = True
    diagnose: bool = True  # training-free transfer diagnosis in the report (crossrec diagnose)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threads: int = 2
    run_key: str | None = None  # e.g. "nightly-2026-01-01": recorded in the manifest (one model per key)
    # Called with the results so far once the main comparison, routing and diagnosis are done (before
    # the fraction curve): a caller under a time limit keeps them even if the curve is cut off.
    on_partial: Callable[[dict], None] | None = None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _mean_sd(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "values": [float(v) for v in arr]}


def _epoch_seconds(t: Trained) -> float | None:
    secs = [log.seconds for log in t.logs]
    return float(np.mean(secs)) if secs else None


def segment_report(ctx: RunContext, trained: Trained, ranks: np.ndarray, ev, cold_ranks: np.ndarray) -> dict[str, dict]:
    """Every metric per user segment and per item segment of the held-out item, with user counts.

    User segments: the constructed cold view (target history hidden), natural cold users (none
    before the held-out event; often empty), 1-2 and 3+ target events. Item segments: the held-out
    item's interactions in what this run trained on (0 / 1-4 / 5+): the tail where IDs fail.
    """
    users = segment_metrics(ranks, user_segment_of(ev.n_target_hist), USER_SEGMENTS)
    users[USER_SEGMENTS[0]] = compute_metrics(cold_ranks)
    counts = ctx.item_train_counts()[ev.targets]
    return {"user": users, "item": segment_metrics(ranks, item_segment_of(counts), ITEM_SEGMENTS)}


def _mean_segments(per_seed: list[dict]) -> dict:
    """Mean over seeds of each segment's metrics (n_users from the first seed: the same users)."""
    out: dict = {}
    for kind in ("user", "item"):
        out[kind] = {}
        for seg in per_seed[0][kind]:
            vals = [s[kind][seg] for s in per_seed]
            out[kind][seg] = {k: float(np.mean([v[k] for v in vals])) for k in vals[0] if k != "n_users"} | {"n_users": int(vals[0]["n_users"])}
    return out


def run_comparison(
    data: AdaptData, opts: AdaptOptions, names: list[str], say: Callable[[str], None], first_seed_cache: dict | None = None
) -> tuple[dict, dict[str, Trained]]:
    """Train + evaluate ``names`` for every seed; returns (results, seed-0 trained models)."""
    per_seed: dict[str, dict[str, list[float]]] = {}
    valid: dict[str, list[float]] = {}
    cold: dict[str, dict[str, list[float]]] = {}
    natural_cold: dict[str, dict] = {}
    timing: dict[str, dict] = {}
    training: dict[str, list] = {}
    keep: dict[str, Trained] = {}
    segments: dict[str, list[dict]] = {}
    select: dict[str, list[float]] = {}
    select_users: dict[str, np.ndarray] = {}  # per-user selection NDCG@10, mean over seeds (bootstrap)
    choices: dict[str, dict] = {}
    for seed in opts.seeds:
        cache = first_seed_cache if (first_seed_cache is not None and seed == opts.seeds[0]) else {}
        ctx = RunContext(data, opts.model, opts.train, seed, 1.0, progress=say, cache=cache)
        for name in names:
            say(f"[seed {seed}] training {name}")
            t0 = time.perf_counter()
            trained = STRATEGIES[name](ctx)
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            test_ev = ctx.eval_set("test", trained.view)
            ranks = trained.ranks(data, test_ev)
            m = compute_metrics(ranks)
            eval_s = time.perf_counter() - t1
            for k, v in m.items():
                per_seed.setdefault(name, {}).setdefault(k, []).append(v)
            if test_ev.cold.any():
                natural_cold[name] = compute_metrics(ranks[test_ev.cold])
            cold_ranks = trained.ranks(data, ctx.eval_set("test", trained.view, cold=True))
            cm = compute_metrics(cold_ranks)
            for k, v in cm.items():
                cold.setdefault(name, {}).setdefault(k, []).append(v)
            segments.setdefault(name, []).append(segment_report(ctx, trained, ranks, test_ev, cold_ranks))
            vm = compute_metrics(trained.ranks(data, ctx.eval_set("valid", trained.view)))
            valid.setdefault(name, []).append(vm["NDCG@10"])
            sel_vals = per_user(trained.ranks(data, ctx.eval_set("select", trained.view)))
            select.setdefault(name, []).append(float(sel_vals.mean()) if sel_vals.size else float("nan"))
            select_users[name] = select_users.get(name, 0) + sel_vals / len(opts.seeds)
            if trained.choice is not None and seed == opts.seeds[0]:
                choices[name] = trained.choice
            timing.setdefault(name, {"train_s": [], "eval_s": [], "epochs": [], "s_per_epoch": []})
            timing[name]["train_s"].append(train_s)
            timing[name]["eval_s"].append(eval_s)
            timing[name]["epochs"].append(len(trained.logs))
            timing[name]["s_per_epoch"].append(_epoch_seconds(trained))
            say(f"[seed {seed}] {name}: test NDCG@10={m['NDCG@10']:.4f} valid={vm['NDCG@10']:.4f} select={select[name][-1]:.4f} ({train_s:.0f}s train)")
            if seed == opts.seeds[0]:
                keep[name] = trained
                training[name] = [asdict(log) for log in trained.logs]
        if cache is not first_seed_cache:
            cache.clear()
    results = {
        "test": {n: {k: _mean_sd(v) for k, v in ms.items() if k != "n_users"} | {"n_users": int(ms["n_users"][0])} for n, ms in per_seed.items()},
        "valid_ndcg10": {n: _mean_sd(v) for n, v in valid.items()},
        "cold_start_constructed": {n: {k: _mean_sd(v) for k, v in ms.items() if k != "n_users"} | {"n_users": int(ms["n_users"][0])} for n, ms in cold.items()},
        "cold_start_natural": natural_cold,
        "segments": {n: _mean_segments(v) for n, v in segments.items()},
        "select_ndcg10": {n: _mean_sd(v) for n, v in select.items()},
        "hyper_parameter_search": choices,
        "timing": timing,
        "training_curves": training,
    }
    results["_select_per_user"] = select_users  # popped before writing; used by the bootstrap choices
    return results, keep


def _positions_for_choices(ctx: RunContext) -> dict[str, int]:
    """The selection set, or the validation users' held-out events when it is disabled."""
    sel = ctx.selection()
    if sel:
        return sel
    from crossrec.adaptation.data import SPLIT_CODES

    out = {}
    for u in ctx.data.split_users["valid"]:
        s = ctx.data.users.get(u)
        if s is None:
            continue
        p = s.heldout(SPLIT_CODES["valid"])
        p = s.heldout(SPLIT_CODES["test"]) if p is None else p
        if p is not None:
            out[u] = p
    return out


def build_routing(data: AdaptData, opts: AdaptOptions, trained: Trained, cache: dict, say: Callable[[str], None], fraction: float = 1.0):
    """Fit the routing table for ``trained`` on the selection set and evaluate it on the test users.

    Returns (table, scorers, results-dict with test metrics overall / per segment)."""
    from crossrec.adaptation.routing import fit_routing
    from crossrec.adaptation.trainer import logits_eval_set

    if trained.model is None:
        raise ValueError("routing needs a trained model")
    model = trained.model
    ctx = RunContext(data, opts.model, opts.train, opts.seeds[0], fraction, cache=cache)
    scorers, segments = routing_selection(ctx, trained.view)
    table = fit_routing(data, scorers, lambda ev: logits_eval_set(model, data, ev), segments, trained.name, say, opts.train.tail_slot_margin)
    return table, scorers, evaluate_routing(ctx, table, scorers, lambda ev: logits_eval_set(model, data, ev), trained.view)


def routing_selection(ctx: RunContext, view: str) -> tuple["TrainingFreeScorers", dict[str, tuple]]:
    """The training-free scorers (fitted on ``ctx``'s training sequences) and the selection
    segments ``fit_routing`` chooses on: seg -> (mixed-view set, ``view`` set, rows)."""
    from crossrec.adaptation.data import make_eval_set_at
    from crossrec.adaptation.routing import segment_of
    from crossrec.adaptation.scorers import TrainingFreeScorers

    data, max_len = ctx.data, ctx.model_cfg.max_len
    scorers = TrainingFreeScorers.fit(data, ctx.train_seqs("mixed"), ctx.cache.get(("text_neighbours",)))
    ctx.cache[("text_neighbours",)] = scorers.text_neighbours()  # the next fraction's routing reuses it
    pos = _positions_for_choices(ctx)
    sel_m, sel_v = make_eval_set_at(data, pos, "mixed", None), make_eval_set_at(data, pos, view, max_len)
    cold_m, cold_v = make_eval_set_at(data, pos, "mixed", None, True), make_eval_set_at(data, pos, view, max_len, True)
    seg = segment_of(sel_m.n_target_hist)
    segments = {
        "cold": (cold_m, cold_v, np.arange(len(cold_m.targets))),
        "1-2": (sel_m, sel_v, np.flatnonzero(seg == "1-2")),
        "3+": (sel_m, sel_v, np.flatnonzero(seg == "3+")),
    }
    return scorers, segments


def evaluate_routing(ctx: RunContext, table: "RoutingTable", scorers: "TrainingFreeScorers", model_logits: Callable[..., np.ndarray], view: str) -> dict:
    """Test metrics of a routing table, overall and per segment: natural histories routed by their
    segment, the constructed cold view (target history hidden) routed as cold."""
    from crossrec.adaptation.data import SPLIT_CODES, make_eval_set
    from crossrec.adaptation.routing import route_ranks, segment_of

    data, max_len = ctx.data, ctx.model_cfg.max_len
    users = data.split_users["test"]
    t_m = make_eval_set(data, users, SPLIT_CODES["test"], "mixed", None)
    t_v = make_eval_set(data, users, SPLIT_CODES["test"], view, max_len)
    tc_m = make_eval_set(data, users, SPLIT_CODES["test"], "mixed", None, drop_target_history=True)
    tc_v = make_eval_set(data, users, SPLIT_CODES["test"], view, max_len, drop_target_history=True)
    logits, cold_logits = model_logits(t_v), model_logits(tc_v)
    ranks = np.zeros(len(t_m.targets), np.int64)
    t_seg = segment_of(t_m.n_target_hist)
    routes_used: dict[str, int] = {}
    for name in ("cold", "1-2", "3+"):
        rows = np.flatnonzero(t_seg == name)
        if rows.size:
            ranks[rows] = route_ranks(table.routes.get(name), scorers, t_m, logits[rows], rows)
            routes_used[name] = int(rows.size)
    all_rows = np.arange(len(tc_m.targets))
    cold_ranks = route_ranks(table.routes.get("cold"), scorers, tc_m, cold_logits, all_rows) if all_rows.size else np.zeros(0, np.int64)
    users_seg = segment_metrics(ranks, user_segment_of(t_m.n_target_hist), USER_SEGMENTS)
    users_seg[USER_SEGMENTS[0]] = compute_metrics(cold_ranks)
    counts = ctx.item_train_counts()[t_m.targets]
    return {
        "test": compute_metrics(ranks),
        "cold": compute_metrics(cold_ranks),
        "segments": {"user": users_seg, "item": segment_metrics(ranks, item_segment_of(counts), ITEM_SEGMENTS)},
        "routes_used": routes_used,
    }


def run_fraction_curve(
    data: AdaptData, opts: AdaptOptions, names: list[str], full: dict, say: Callable[[str], None], cache: dict | None = None, routed_strategy: str | None = None
) -> dict:
    """NDCG@10 etc. when only a fraction of the target training users is available (seed 0).

    Source pretraining is cached once and shared by every fraction; fraction 1.0 reuses the main run.
    With ``routed_strategy``, the routed model is rebuilt at every fraction on top of that strategy
    (its scorers and routes fitted on the same fraction of target training users).
    """
    seed = opts.seeds[0]
    curve: dict[str, dict[str, dict]] = {n: {} for n in names}
    if routed_strategy:
        curve["routed"] = {}
    cache = {} if cache is None else cache  # shares seed-0 source pretraining with the main run
    for frac in opts.fractions:
        trained_here: dict[str, Trained] = {}
        for name in names + ([routed_strategy] if routed_strategy and routed_strategy not in names else []):
            if frac >= 1.0 and name in full["test"]:
                if name in curve:
                    curve[name][str(frac)] = {k: v["values"][0] for k, v in full["test"][name].items() if k != "n_users"}
                continue
            ctx = RunContext(data, opts.model, opts.train, seed, frac, progress=None, cache=cache)
            t0 = time.perf_counter()
            trained = trained_here[name] = STRATEGIES[name](ctx)
            if name in curve:
                m = compute_metrics(trained.ranks(data, ctx.eval_set("test", trained.view)))
                curve[name][str(frac)] = {**m, "n_target_users": len(ctx.target_users())}
                say(f"[fraction {frac:g}] {name}: test NDCG@10={m['NDCG@10']:.4f} ({time.perf_counter() - t0:.0f}s)")
        if routed_strategy:
            if frac >= 1.0 and "routed" in full["test"]:
                curve["routed"][str(frac)] = {k: v["values"][0] for k, v in full["test"]["routed"].items() if k != "n_users"}
            elif routed_strategy in trained_here:
                _, _, r = build_routing(data, opts, trained_here[routed_strategy], cache, lambda s: say(f"[fraction {frac:g}] {s}"), fraction=frac)
                curve["routed"][str(frac)] = r["test"]
                say(f"[fraction {frac:g}] routed ({routed_strategy}): test NDCG@10={r['test']['NDCG@10']:.4f}")
    return curve


def best_by_validation(results: dict, candidates: tuple[str, ...] | list[str]) -> str | None:
    """Highest mean selection-set NDCG@10 (the validation users when no selection set exists)."""
    key = "select_ndcg10" if results.get("select_ndcg10") else "valid_ndcg10"
    have = [n for n in candidates if n in results[key]]
    return max(have, key=lambda n: results[key][n]["mean"]) if have else None


def choose_with_confidence(results: dict, candidates: list[str], baseline: str) -> dict:
    """Pick the best of ``candidates`` on the selection set, but keep ``baseline`` unless the paired
    bootstrap CI of the difference (selection users) excludes zero. Says which and why."""
    per = results.get("_select_per_user", {})
    best = best_by_validation(results, candidates)
    out: dict = {"best_on_selection": best, "baseline": baseline, "chosen": baseline}
    if best is None or baseline not in per or best not in per:
        out["chosen"] = best or baseline
        out["reason"] = "no paired comparison possible"
        return out
    if best == baseline:
        out["reason"] = f"{baseline} is itself the best on the selection set"
        return out
    ci = paired_bootstrap(per[best], per[baseline])
    out["ci_vs_baseline"] = ci
    head = f"{best} vs {baseline}: {ci['rel']:+.1%} on {ci['n_users']} selection users (they resolve about ±{ci['resolution_rel']:.1%}), 95% CI [{ci['lo']:+.4f}, {ci['hi']:+.4f}]"
    if ci["includes_zero"]:
        out["reason"] = f"{head} includes zero: keeping {baseline}"
    else:
        out["chosen"] = best if ci["lo"] > 0 else baseline
        out["reason"] = f"{head} excludes zero: {out['chosen']}"
    return out


def check_targets(results: dict, best: str | None) -> dict:
    """The issue's three targets, on test NDCG@10 of the best transfer strategy (chosen on validation)."""
    out: dict = {"best_transfer_strategy": best}
    test = results["test"]
    if best is None:
        return out
    b = test[best]["NDCG@10"]["mean"]
    if "target_only" in test:
        t = test["target_only"]["NDCG@10"]["mean"]
        gain = (b - t) / t if t > 0 else float("inf")
        out["vs_target_only"] = {"best": b, "target_only": t, "relative_gain": gain, "target": 0.25, "met": gain >= 0.25}
    if "popularity" in test:
        p = test["popularity"]["NDCG@10"]["mean"]
        ratio = b / p if p > 0 else float("inf")
        out["vs_popularity"] = {"best": b, "popularity": p, "ratio": ratio, "target": 3.0, "met": ratio >= 3.0}
    curve = results.get("fractions", {})
    if best in curve and "0.1" in curve[best] and "target_only" in test:
        at10 = curve[best]["0.1"]["NDCG@10"]
        t100 = test["target_only"]["NDCG@10"]["values"][0]
        out["ten_percent_vs_target_only_full"] = {"best_at_10pct": at10, "target_only_at_100pct_seed0": t100, "met": at10 >= t100}
    return out


def _times_sasrec(value: float, sasrec: float, target: float = 3.0) -> dict:
    """Ratio to SASRec on the tail items and whether it reaches ``target`` (any score beats a SASRec of 0)."""
    return {"ratio": value / sasrec if sasrec > 0 else float("inf"), "target": target,
            "met": bool(sasrec == 0 and value > 0 or (sasrec > 0 and value / sasrec >= target))}


def check_language(results: dict) -> dict:
    """Issue 14 point 4/5 targets, from this run's numbers (test users; every choice made on selection users)."""
    test, seg = results["test"], results.get("segments", {})
    chosen = results.get("strategy_choice", {}).get("chosen")
    out: dict = {}
    if chosen in seg and "sasrec" in seg:
        t, n = pooled(seg[chosen]["item"], TAIL_SEGMENTS)
        sr, _ = pooled(seg["sasrec"]["item"], TAIL_SEGMENTS)
        out["tail_items_text_vs_sasrec"] = {"text_model": chosen, "text": t, "sasrec": sr, "n_test_events": n} | _times_sasrec(t, sr)
        if "routed" in seg:
            r, _ = pooled(seg["routed"]["item"], TAIL_SEGMENTS)
            out["tail_items_routed_vs_sasrec"] = {"routed": r, "sasrec": sr, "n_test_events": n} | _times_sasrec(r, sr)
    if "sasrec" in test:
        s_ = test["sasrec"]["NDCG@10"]["mean"]
        for name in (chosen, "routed"):
            if name in test and s_ > 0:
                g = test[name]["NDCG@10"]["mean"] / s_ - 1
                out[f"{name}_vs_sasrec" if name == "routed" else "text_vs_sasrec"] = {"model": name, "gain": g, "target": 0.30, "met": g >= 0.30}
    diag = results.get("diagnose", {})
    if "zero_shot" in test and "segments" in diag:
        natural = [k for k in USER_SEGMENTS[1:] if diag["segments"].get(k, {}).get("n_users")]
        tot = sum(diag["segments"][k]["n_users"] for k in natural)
        best_name, best_val = None, -1.0
        for sig in ("text_last_any", "text_last_target", "text_source", "source_cooc"):
            v = sum(diag["segments"][k]["signals_test_ndcg10"][sig] * diag["segments"][k]["n_users"] for k in natural) / max(tot, 1)
            if v > best_val:
                best_name, best_val = sig, v
        z = test["zero_shot"]["NDCG@10"]["mean"]
        out["new_domain_zero_shot_vs_training_free"] = {"zero_shot": z, "best_training_free": best_name, "training_free": best_val,
                                                       "ratio": z / best_val if best_val > 0 else float("inf"), "target": 1.5, "met": best_val > 0 and z / best_val >= 1.5}
    curve = results.get("fractions", {})
    if "routed" in curve and "0.1" in curve["routed"] and "target_only" in test:
        r10, t100 = curve["routed"]["0.1"]["NDCG@10"], test["target_only"]["NDCG@10"]["values"][0]
        out["routed_at_10pct_vs_target_only_full"] = {"routed_10pct": r10, "target_only_100pct": t100, "ratio": r10 / t100 if t100 > 0 else float("inf"), "target": 0.85, "met": t100 > 0 and r10 / t100 >= 0.85}
    if "routed" in test and "target_only" in test and "overall" in diag:
        g_diag = diag["overall"]["gain"]["rel"]
        t = test["target_only"]["NDCG@10"]["mean"]
        g = test["routed"]["NDCG@10"]["mean"] / t - 1 if t > 0 else float("nan")
        out["signal_capture"] = {"diagnose_gain": g_diag, "routed_gain_over_target_only": g, "met": bool(g >= max(g_diag, 0.0))}
    return out


def check_routed(results: dict) -> dict:
    """The issue's routing targets on test users: routed >= every single scorer overall, and >=
    popularity in every user segment (the constructed cold one included)."""
    test, seg = results["test"], results.get("segments", {})
    if "routed" not in test:
        return {}
    r = test["routed"]["NDCG@10"]["mean"]
    singles = {n: v["NDCG@10"]["mean"] for n, v in test.items() if n != "routed"}
    out: dict = {"routed": r, "best_single": max(singles, key=lambda n: singles[n]) if singles else None}
    out["routed_ge_every_single"] = all(r >= v for v in singles.values())
    if "popularity" in seg:
        per = {}
        for s_name, m in seg["routed"]["user"].items():
            p = seg["popularity"]["user"][s_name]
            if m["n_users"]:
                per[s_name] = {"routed": m["NDCG@10"], "popularity": p["NDCG@10"], "met": m["NDCG@10"] >= p["NDCG@10"]}
        out["ge_popularity_per_segment"] = per
    return out


def refit_for_serving(data: AdaptData, opts: AdaptOptions, chosen: Trained, routing: tuple | None, cache: dict, say: Callable[[str], None]) -> tuple[Trained, tuple | None, dict]:
    """The chosen strategy trained again on every training event, its routing table kept and the
    table's training-free scorers refitted on the same sequences; returns (model, routing,
    ``results["served"]``: its test metrics and segments, the routed model's too)."""
    from crossrec.adaptation.refit import full_data_context, kept_shrinkage, refit_chosen
    from crossrec.adaptation.scorers import TrainingFreeScorers
    from crossrec.adaptation.trainer import logits_eval_set

    t0 = time.perf_counter()
    ctx = full_data_context(data, opts.model, opts.train, opts.seeds[0], cache)
    trained = refit_chosen(ctx, chosen, say)
    test_ev = ctx.eval_set("test", trained.view)
    ranks = trained.ranks(data, test_ev)
    cold_ranks = trained.ranks(data, ctx.eval_set("test", trained.view, cold=True))
    out: dict = {
        "strategy": chosen.name,
        "seed": opts.seeds[0],
        "id_shrink_kept": kept_shrinkage(chosen),
        "best_valid_ndcg10": trained.best_valid,
        "epochs": len(trained.logs),
        "test": {chosen.name: compute_metrics(ranks)},
        "cold_start_constructed": {chosen.name: compute_metrics(cold_ranks)},
        "segments": {chosen.name: segment_report(ctx, trained, ranks, test_ev, cold_ranks)},
    }
    served_routing = None
    if routing is not None and routing[0].strategy == chosen.name:
        table = routing[0]
        scorers = TrainingFreeScorers.fit(data, ctx.train_seqs("mixed"), cache.get(("text_neighbours",)))
        model = trained.model
        assert model is not None
        routed = evaluate_routing(ctx, table, scorers, lambda ev: logits_eval_set(model, data, ev), trained.view)
        out["test"]["routed"], out["cold_start_constructed"]["routed"], out["segments"]["routed"] = routed["test"], routed["cold"], routed["segments"]
        served_routing = (table, scorers)
    out["seconds"] = time.perf_counter() - t0
    shown = ", ".join(f"{n} {m['NDCG@10']:.4f}" for n, m in out["test"].items())
    say(f"refit for serving ({out['seconds']:.0f}s): test NDCG@10 {shown}")
    return trained, served_routing, out


def _register_and_gate(data: AdaptData, opts: AdaptOptions, results: dict, keep: dict[str, Trained], registry: ModelRegistry, say: Callable[[str], None], routing=None) -> dict:
    """Register the text model chosen on the selection set (with its CI) and let the gate decide promotion.

    The gate itself compares mean validation NDCG@10 (registry.gate); before it runs, a paired
    bootstrap over the validation users of candidate vs the re-scored current model decides whether
    the difference is signal at all: when its CI includes zero the current model is kept, and the
    decision says so.
    """
    from crossrec.adaptation.data import SPLIT_CODES, make_eval_set, valid_key_histories
    from crossrec.adaptation.inference import Recommender

    cand_name = results.get("strategy_choice", {}).get("chosen")
    if cand_name not in keep or cand_name not in TEXT_STRATEGIES:
        cand_name = best_by_validation(results, [n for n in TEXT_STRATEGIES if n in keep])
    if cand_name is None:
        return {"registered": None, "reason": "no text-based strategy was trained"}
    trained = keep[cand_name]
    ev = make_eval_set(data, data.split_users["valid"], SPLIT_CODES["valid"], trained.view, opts.model.max_len)
    cand_ranks = trained.ranks(data, ev)
    valid_m = compute_metrics(cand_ranks)
    served = results.get("served", {})
    if served.get("strategy") == cand_name:  # the refitted model is what is registered
        test_m = {k: v for k, v in served["test"][cand_name].items() if k != "n_users"}
    else:
        test_m = {k: v["values"][0] for k, v in results["test"][cand_name].items() if k != "n_users"}
    manifest = {
        "strategy": cand_name,
        "encoder": data.encoder,
        "data_fingerprint": data.fingerprint,
        "valid_metrics": valid_m,
        "test_metrics": test_m,
        "seed": opts.seeds[0],
        "train_config": asdict(opts.train),
        "model_config": opts.model.to_dict(),
        "run_key": opts.run_key,
        "refit": served.get("strategy") == cand_name,
    }

    def write(tmp: Path) -> None:
        if trained.model is not None:
            trained.model.cpu()  # artifacts are read on CPU (serving); training may have run on cuda
        write_artifact(tmp, trained.model, data, cand_name, trained.view, extra={"seed": opts.seeds[0], "routed": routing is not None and routing[0].strategy == cand_name})  # type: ignore[arg-type]
        if routing is not None and routing[0].strategy == cand_name:
            from crossrec.adaptation.routing import write_routing

            write_routing(tmp / "routing", *routing)
        (tmp / "metrics.json").write_text(json.dumps({"valid": valid_m, "test": test_m}, indent=2))

    version = registry.register(write, manifest)
    say(f"registered {version} ({cand_name}, valid NDCG@10={valid_m['NDCG@10']:.4f})")
    if not opts.promote:  # the gate below is not run: neither is its re-scoring of the current model
        return {"registered": version, "strategy": cand_name, "promoted": False, "reason": "--no-promote"}
    current_metric, rescored, ci = None, False, None
    cur = registry.current()
    if cur is not None:
        try:  # re-score the serving model on today's validation data: a fair comparison
            rec = Recommender(cur, registry.path(cur))
            cur_ranks = rec.ranks(*valid_key_histories(data))
            current_metric = compute_metrics(cur_ranks)["NDCG@10"]
            rescored = True
            if len(cur_ranks) == len(cand_ranks):
                ci = paired_bootstrap(per_user(cand_ranks), per_user(cur_ranks))
        except Exception as exc:  # noqa: BLE001 - an unreadable old artifact falls back to its stored number
            say(f"could not re-score current model {cur} ({exc}); using its stored validation metric")
    if ci is not None and ci["includes_zero"] and valid_m["NDCG@10"] > (current_metric or 0.0) + opts.promote_margin:
        why = (f"validation NDCG@10 {valid_m['NDCG@10']:.4f} vs current {cur} {current_metric:.4f}: paired 95% CI of the difference "
               f"[{ci['lo']:+.4f}, {ci['hi']:+.4f}] over {ci['n_users']} users (they resolve about ±{ci['resolution_rel']:.1%}) includes zero; keeping {cur}")
        say(why)
        return {"registered": version, "strategy": cand_name, "promoted": False, "candidate": version, "current": cur, "reason": why,
                "ci_vs_current": ci, "current_rescored_on_today_valid": rescored}
    decision = registry.gate(version, opts.promote_margin, current_metric)
    say(decision.reason)
    return {"registered": version, "strategy": cand_name, **asdict(decision), "ci_vs_current": ci, "current_rescored_on_today_valid": rescored}


def run_adapt(opts: AdaptOptions, say: Callable[[str], None] = print) -> dict:
    """Everything `crossrec adapt` does; returns the results dict also written to disk."""
    from crossrec.report import write_report

    torch.set_num_threads(opts.threads)
    t_start = time.perf_counter()
    rss0 = _peak_rss_mb()
    split_path = opts.split_path
    t0 = time.perf_counter()
    data = load_adapt_data(opts.input_dir, opts.encoder, opts.source_domain, opts.target_domain, split_path)
    load_s = time.perf_counter() - t0
    opts.model.in_dim = int(data.catalog.embeddings.shape[1])
    say(f"loaded {len(data.users)} users, {data.catalog.n_source} source + {data.catalog.n_target} target items ({load_s:.1f}s); dropped={data.dropped}")
    names = resolve(opts.strategies)
    shared: dict = {}
    results, keep = run_comparison(data, opts, names, say, first_seed_cache=shared)
    t_main = time.perf_counter() - t_start
    best = best_by_validation(results, [n for n in TRANSFER if n in results["valid_ndcg10"]])
    text_names = [n for n in TEXT_STRATEGIES if n in keep]
    if text_names:
        results["strategy_choice"] = choose_with_confidence(results, text_names, "target_only" if "target_only" in text_names else text_names[0])
        say(f"strategy choice: {results['strategy_choice'].get('reason')}")
    routing = None
    chosen = results.get("strategy_choice", {}).get("chosen")
    if opts.routing and chosen in keep and keep[chosen].model is not None:
        t_r = time.perf_counter()
        table, scorers, routed = build_routing(data, opts, keep[chosen], shared, say)
        routing = (table, scorers)
        one = lambda m: {k: {"mean": v, "sd": 0.0, "values": [v]} for k, v in m.items() if k != "n_users"} | {"n_users": int(m["n_users"])}  # noqa: E731
        results["routing"] = table.to_dict() | {"routes_used_on_test": routed["routes_used"], "seconds": time.perf_counter() - t_r}
        results["test"]["routed"] = one(routed["test"])
        results["cold_start_constructed"]["routed"] = one(routed["cold"])
        results["segments"]["routed"] = routed["segments"]
        say(f"routed ({chosen} + training-free routes): test NDCG@10={routed['test']['NDCG@10']:.4f}")
    if opts.refit and chosen in keep and keep[chosen].model is not None:
        refitted, routing, results["served"] = refit_for_serving(data, opts, keep[chosen], routing, shared, say)
        keep = keep | {chosen: refitted}
    if opts.diagnose:
        from crossrec.diagnose import diagnose_data

        try:
            results["diagnose"] = diagnose_data(data, opts.train.selection_users or TrainConfig().selection_users, say)
        except ValueError as exc:
            results["diagnose"] = {"skipped": str(exc)}
    if opts.on_partial is not None:
        opts.on_partial({k: v for k, v in results.items() if k != "_select_per_user"})
    frac_names = []
    for n in opts.fraction_strategies:
        n = best if n == "best" else n
        if n and n not in frac_names and n in STRATEGIES:
            frac_names.append(n)
    t1 = time.perf_counter()
    routed_frac = results.get("strategy_choice", {}).get("chosen") if ("routed" in opts.fraction_strategies and "routed" in results["test"]) else None
    results["fractions"] = run_fraction_curve(data, opts, frac_names, results, say, cache=shared, routed_strategy=routed_frac) if opts.fractions and (frac_names or routed_frac) else {}
    frac_s = time.perf_counter() - t1
    results["encoders"] = {opts.encoder: {n: results["test"][n]["NDCG@10"]["mean"] for n in results["test"]}}
    for enc in opts.extra_encoders:
        if enc == opts.encoder:
            continue
        try:
            other = load_adapt_data(opts.input_dir, enc, opts.source_domain, opts.target_domain, split_path)
        except Exception as exc:  # noqa: BLE001 - a missing encoder is reported, not fatal
            results["encoders"][enc] = {"skipped": str(exc)}
            say(f"encoder {enc}: skipped ({exc})")
            continue
        o = AdaptOptions(**{**opts.__dict__, "encoder": enc, "seeds": opts.seeds[:1], "model": ModelConfig(**{**opts.model.to_dict(), "in_dim": int(other.catalog.embeddings.shape[1])})})
        enc_names = [n for n in names if n in TEXT_STRATEGIES]
        r, _ = run_comparison(other, o, enc_names, lambda s: say(f"[{enc}] {s}"))
        results["encoders"][enc] = {n: r["test"][n]["NDCG@10"]["mean"] for n in r["test"]}
    results["targets"] = check_targets(results, best)
    registry = ModelRegistry(opts.registry_dir or Path(opts.input_dir) / "registry")
    results["gate"] = _register_and_gate(data, opts, results, keep, registry, say, routing)
    results["targets"]["routed"] = check_routed(results)
    results["targets"]["language_and_signal"] = check_language(results)
    results["run"] = {
        "encoder": opts.encoder,
        "seeds": opts.seeds,
        "strategies": names,
        "fraction_strategies": frac_names,
        "model": opts.model.to_dict(),  # every hyper-parameter, so a row can be reproduced
        "train": asdict(opts.train),
        "n_users": {k: len(v) for k, v in data.split_users.items()},
        "n_items": {"source": data.catalog.n_source, "target": data.catalog.n_target},
        "data_fingerprint": data.fingerprint,
        "dropped": data.dropped,
        "load_s": load_s,
        "main_comparison_s": t_main,
        "fraction_curve_s": frac_s,
        "total_s": time.perf_counter() - t_start,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_at_start_mb": rss0,
        "threads": torch.get_num_threads(),
        "metric_names": list(HEADLINE),
        "selection_note": f"strategy / hyper-parameter / route choices on the selection set: the last target event of {len(shared.get(('selection', opts.train.selection_users), {}))} training users (>= 2 target events), held out of their training sequences; early stopping on the validation users" + ("; the registered model was then trained again on every training event (served)" if "served" in results else ""),
        "cold_start_note": "constructed view: the test users' target-domain history is removed (source history only); natural cold-start users are those with no target event before the held-out one",
    }
    results.pop("_select_per_user", None)
    write_report(results, Path(opts.output_dir))
    say(f"wrote {Path(opts.output_dir) / 'metrics.json'} and report.html in {results['run']['total_s']:.0f}s")
    return results


__all__ = ["AdaptOptions", "run_adapt", "run_comparison", "check_targets", "best_by_validation", "math"]
