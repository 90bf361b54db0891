"""`crossrec diagnose`: will transfer pay on this domain pair? Training-free, per user segment.

Before anyone trains a transfer model, measure how much a user's source-domain history adds to the
best signal computable from their target history alone. Both sides are training-free scorers
(crossrec/adaptation/scorers.py) on the same split and full-ranking protocol as `crossrec adapt`:

- target-only: a blend of popularity, item-KNN over the target history and text cosine to the last
  target item, weights fitted on the selection set;
- with source: the same blend plus source-history co-occurrence and text cosine to the source
  history, weights fitted on the same selection set.

The gain G of the second over the first is measured on the test users with a paired bootstrap CI;
the verdict says "transfer is expected to pay" only when that CI excludes zero on the positive side.
Segments: users whose target history is hidden (constructed cold start), natural cold users,
1-2 and 3+ target events. Every choice (weights) is made on the selection set (training users'
held-out last target event), never on test users.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrec.adaptation.data import SPLIT_CODES, AdaptData, EvalSet, load_adapt_data, make_eval_set, make_eval_set_at, selection_positions, truncate_at
from crossrec.adaptation.scorers import SOURCE_SIGNALS, TARGET_ONLY_SIGNALS, TrainingFreeScorers, blend, fit_blend, ndcg_objective, normalise_rows, rank_scores
from crossrec.evaluation import USER_SEGMENTS, compute_metrics, paired_bootstrap, per_user
from crossrec.settings import AdaptSettings

ALL_SIGNALS = (*TARGET_ONLY_SIGNALS, *SOURCE_SIGNALS, "text_last_any")


@dataclass
class DiagnoseOptions:
    input_dir: Path
    output_dir: Path
    source_domain: str
    target_domain: str
    encoder: str = "minilm"
    split_path: Path | None = None
    selection_users: int = AdaptSettings().selection_users


def training_sequences(data: AdaptData, selection: dict[str, int]) -> list:
    """Training users' sequences with their selection event (and what follows) cut off."""
    return [truncate_at(data.users[u], selection.get(u)) for u in data.split_users["train"] if u in data.users]


def _segments(sel: EvalSet, sel_cold: EvalSet, test: EvalSet, test_cold: EvalSet) -> dict[str, tuple[EvalSet, np.ndarray, EvalSet, np.ndarray]]:
    """segment -> (selection eval set, its rows, test eval set, its rows)."""
    nt, ns = test.n_target_hist, sel.n_target_hist
    return {
        USER_SEGMENTS[0]: (sel_cold, np.arange(len(sel_cold.targets)), test_cold, np.arange(len(test_cold.targets))),
        USER_SEGMENTS[1]: (sel_cold, np.arange(len(sel_cold.targets)), test, np.flatnonzero(nt == 0)),
        USER_SEGMENTS[2]: (sel, np.flatnonzero((ns >= 1) & (ns <= 2)), test, np.flatnonzero((nt >= 1) & (nt <= 2))),
        USER_SEGMENTS[3]: (sel, np.flatnonzero(ns >= 3), test, np.flatnonzero(nt >= 3)),
    }


def _components(scorers: TrainingFreeScorers, ev: EvalSet, rows: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    hists = [ev.histories[i] for i in rows]
    return {n: normalise_rows(scorers.score(n, hists)) for n in names}


def diagnose_data(data: AdaptData, selection_users: int = AdaptSettings().selection_users, say: Callable[[str], None] = print) -> dict:
    """Signals, fitted blends and the verdict, per user segment and overall (the natural test users)."""
    t0 = time.perf_counter()
    selection = selection_positions(data, selection_users)
    if not selection:
        raise ValueError("diagnose needs a selection set: no training user has two target-domain events")
    scorers = TrainingFreeScorers.fit(data, training_sequences(data, selection))
    sel = make_eval_set_at(data, selection, "mixed", None)
    sel_cold = make_eval_set_at(data, selection, "mixed", None, drop_target_history=True)
    test = make_eval_set(data, data.split_users["test"], SPLIT_CODES["test"], "mixed", None)
    test_cold = make_eval_set(data, data.split_users["test"], SPLIT_CODES["test"], "mixed", None, drop_target_history=True)
    out: dict = {"segments": {}, "source_domain": data.source_domain, "target_domain": data.target_domain}
    overall_t, overall_s = np.zeros(len(test.targets)), np.zeros(len(test.targets))
    for seg, (s_ev, s_rows, t_ev, t_rows) in _segments(sel, sel_cold, test, test_cold).items():
        if t_rows.size == 0:
            out["segments"][seg] = {"n_users": 0}
            continue
        s_comp = _components(scorers, s_ev, s_rows, ALL_SIGNALS)
        t_comp = _components(scorers, t_ev, t_rows, ALL_SIGNALS)
        signals = {n: compute_metrics(rank_scores(t_comp[n], t_ev, t_rows))["NDCG@10"] for n in ALL_SIGNALS}
        obj = ndcg_objective(s_ev, s_rows)
        # anchor each blend on the segment's strongest target-only signal on the selection set
        sel_single = {n: obj(s_comp[n]) for n in TARGET_ONLY_SIGNALS}
        anchor = max(sel_single, key=lambda n: sel_single[n])
        w_t, _ = fit_blend({n: s_comp[n] for n in TARGET_ONLY_SIGNALS}, obj, anchor)
        w_s, _ = fit_blend({n: s_comp[n] for n in (*TARGET_ONLY_SIGNALS, *SOURCE_SIGNALS)}, obj, anchor)
        per_t = per_user(rank_scores(blend(t_comp, w_t), t_ev, t_rows))
        per_s = per_user(rank_scores(blend(t_comp, w_s), t_ev, t_rows))
        ci = paired_bootstrap(per_s, per_t)
        out["segments"][seg] = {
            "n_users": int(t_rows.size),
            "n_selection_users": int(s_rows.size),
            "signals_test_ndcg10": signals,
            "target_only_weights": w_t,
            "with_source_weights": w_s,
            "target_only_ndcg10": float(per_t.mean()),
            "with_source_ndcg10": float(per_s.mean()),
            "gain": ci,
            "verdict": verdict(ci, seg),
        }
        if seg not in (USER_SEGMENTS[0],):  # natural segments partition the test users
            overall_t[t_rows], overall_s[t_rows] = per_t, per_s
    ci = paired_bootstrap(overall_s, overall_t)
    out["overall"] = {
        "n_users": int(len(test.targets)),
        "target_only_ndcg10": float(overall_t.mean()),
        "with_source_ndcg10": float(overall_s.mean()),
        "gain": ci,
        "verdict": verdict(ci, "all test users"),
    }
    out["verdict"] = out["overall"]["verdict"]
    out["seconds"] = time.perf_counter() - t0
    say(out["verdict"])
    return out


def verdict(ci: dict, who: str) -> str:
    """Plain words: the relative gain, its CI, and whether transfer is expected to pay."""
    if ci.get("n_users", 0) == 0 or not np.isfinite(ci.get("rel", float("nan"))):
        return f"{who}: no measurable target-only signal; cannot say whether transfer pays"
    pays = ci["lo"] > 0
    base = ci["diff"] / ci["rel"] if ci["rel"] else 0.0
    lo, hi = (ci["lo"] / base, ci["hi"] / base) if base > 0 else (float("nan"), float("nan"))
    return (f"{who}: source history adds {ci['rel']:+.1%} over target-only signals (95% CI {lo:+.1%} to {hi:+.1%}, "
            f"{ci['n_users']} users); transfer is {'' if pays else 'not '}expected to pay")


def plot_png(diag: dict) -> str:
    """Bar chart: target-only vs with-source training-free NDCG@10 per segment (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segs = [s for s, v in diag["segments"].items() if v.get("n_users")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(segs))
    ax.bar(x - 0.2, [diag["segments"][s]["target_only_ndcg10"] for s in segs], 0.4, label="target-only signals")
    ax.bar(x + 0.2, [diag["segments"][s]["with_source_ndcg10"] for s in segs], 0.4, label="+ source history")
    ax.set_xticks(x, [f"{s}\n(n={diag['segments'][s]['n_users']})" for s in segs], fontsize=7)
    ax.set_ylabel("test NDCG@10 (training-free)")
    ax.set_title(f"diagnose {diag['source_domain']} -> {diag['target_domain']}")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_section(diag: dict) -> str:
    """The HTML block the adaptation report and diagnose.html share."""
    rows = []
    for seg, v in diag["segments"].items():
        if not v.get("n_users"):
            rows.append(f"<tr><td>{html.escape(seg)}</td><td>0</td><td colspan='4'>no users</td></tr>")
            continue
        sig = ", ".join(f"{k} {x:.4f}" for k, x in v["signals_test_ndcg10"].items())
        rows.append(f"<tr><td>{html.escape(seg)}</td><td>{v['n_users']}</td><td>{v['target_only_ndcg10']:.4f}</td><td>{v['with_source_ndcg10']:.4f}</td>"
                    f"<td>{html.escape(v['verdict'])}</td><td style='font-size:80%'>{html.escape(sig)}</td></tr>")
    return (f"<h2>Transfer diagnosis (training-free, `crossrec diagnose`)</h2><p><b>{html.escape(diag['verdict'])}</b></p>"
            "<table><tr><th>user segment</th><th>n</th><th>target-only NDCG@10</th><th>+ source</th><th>verdict</th><th>single signals (test NDCG@10)</th></tr>"
            + "".join(rows) + f"</table><img src='data:image/png;base64,{plot_png(diag)}'>")


def run_diagnose(opts: DiagnoseOptions, say: Callable[[str], None] = print) -> dict:
    data = load_adapt_data(opts.input_dir, opts.encoder, opts.source_domain, opts.target_domain, opts.split_path)
    say(f"loaded {len(data.users)} users, {data.catalog.n_source} {opts.source_domain} + {data.catalog.n_target} {opts.target_domain} items")
    diag = diagnose_data(data, opts.selection_users, say)
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnose.json").write_text(json.dumps(diag, indent=2, default=float))
    (out / "diagnose.html").write_text("<html><head><meta charset='utf-8'><title>crossrec diagnose</title></head><body>" + render_section(diag) + "</body></html>")
    return diag
