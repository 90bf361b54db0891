"""Write the adaptation results: metrics.json (machine-readable) and report.html (for people).

metrics.json is exactly ``strategy -> metric -> value`` (test users, mean over seeds) so a DAG or a
dashboard can read it without knowing the rest; results.json holds everything (spreads, per-seed
values, cold-start, fraction curve, timings, gate decision). The HTML embeds its PNG plots as
base64 so the single file can be mailed or opened from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from crossrec.evaluation import HEADLINE  # noqa: E402


def metrics_table(results: dict) -> dict[str, dict[str, float]]:
    """strategy -> metric -> mean value on the test users."""
    return {n: {k: v["mean"] for k, v in ms.items() if isinstance(v, dict)} for n, ms in results.get("test", {}).items()}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plot_comparison(results: dict) -> str:
    test = results["test"]
    names = list(test)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.38
    for j, metric in enumerate(("NDCG@10", "Recall@10")):
        means = [test[n][metric]["mean"] for n in names]
        sds = [test[n][metric]["sd"] for n in names]
        ax.bar([i + (j - 0.5) * width for i in range(len(names))], means, width, yerr=sds, capsize=3, label=metric)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylabel("test users, full ranking")
    ax.set_title("Strategy comparison (mean ± sd over seeds)")
    ax.legend()
    return _png(fig)


def _plot_fractions(results: dict) -> str | None:
    curve = results.get("fractions") or {}
    if not curve:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in curve.items():
        xs = sorted(pts, key=float)
        ax.plot([100 * float(x) for x in xs], [pts[x]["NDCG@10"] for x in xs], marker="o", label=name)
    if "popularity" in results["test"]:
        ax.axhline(results["test"]["popularity"]["NDCG@10"]["mean"], color="grey", ls=":", label="popularity")
    ax.set_xscale("log")
    ax.set_xlabel("% of target-domain training users")
    ax.set_ylabel("test NDCG@10")
    ax.set_title("Data-fraction curve")
    ax.legend()
    return _png(fig)


def _plot_training(results: dict) -> str | None:
    curves = results.get("training_curves") or {}
    curves = {n: c for n, c in curves.items() if c}
    if not curves:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, logs in curves.items():
        xs = list(range(1, len(logs) + 1))
        a1.plot(xs, [log["loss"] for log in logs], label=name)
        v = [(x, log["valid_ndcg10"]) for x, log in zip(xs, logs) if log.get("valid_ndcg10") is not None]
        if v:
            a2.plot([p[0] for p in v], [p[1] for p in v], marker=".", label=name)
    a1.set_title("training loss per epoch (all phases)")
    a2.set_title("validation NDCG@10 per epoch")
    a1.set_xlabel("epoch")
    a2.set_xlabel("epoch")
    a2.legend(fontsize=7)
    return _png(fig)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def segment_tables(results: dict, metric: str = "NDCG@10") -> list[str]:
    """HTML tables: ``metric`` per user segment and per item segment (n = users in the segment)."""
    seg = results.get("segments") or {}
    if not seg:
        return []
    out = []
    for kind, title in (("user", "user segment (target events before the held-out one)"), ("item", "item segment of the held-out item (training interactions)")):
        names = list(seg)
        labels = list(seg[names[0]][kind])
        heads = [f"{lab} (n={seg[names[0]][kind][lab]['n_users']})" for lab in labels]
        out.append(f"<h2>Test {metric} per {html.escape(title)}</h2>")
        out.append(_table(["strategy", *heads], [[n] + [seg[n][kind][lab][metric] for lab in labels] for n in names]))
    return out


def render_html(results: dict) -> str:
    test = results["test"]
    run = results.get("run", {})
    rows = [[n] + [f"{test[n][m]['mean']:.4f} ± {test[n][m]['sd']:.4f}" for m in HEADLINE] + [_fmt(results.get("valid_ndcg10", {}).get(n, {}).get("mean", float("nan")))] for n in test]
    parts = [
        "<html><head><meta charset='utf-8'><title>crossrec adaptation report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}</style></head><body>",
        f"<h1>crossrec cross-domain adaptation</h1><p>encoder <b>{html.escape(str(run.get('encoder')))}</b>, seeds {run.get('seeds')}, users {run.get('n_users')}, items {run.get('n_items')}, data fingerprint {run.get('data_fingerprint')}</p>",
        "<h2>Test users: full ranking against all target items, history masked</h2>",
        _table(["strategy", *HEADLINE, "valid NDCG@10"], rows),
        f"<img src='data:image/png;base64,{_plot_comparison(results)}'>",
    ]
    cold = results.get("cold_start_constructed", {})
    if cold:
        parts.append("<h2>Cold-start (constructed: test users' target history removed)</h2>")
        parts.append(_table(["strategy", "NDCG@10", "Recall@10", "Recall@50", "MRR"], [[n] + [c[m]["mean"] for m in ("NDCG@10", "Recall@10", "Recall@50", "MRR")] for n, c in cold.items()]))
    nat = results.get("cold_start_natural", {})
    nat_txt = ", ".join(f"{n}: n={int(c['n_users'])}, NDCG@10={c['NDCG@10']:.4f}" for n, c in nat.items()) or "none in this split"
    parts.append(f"<p>Natural cold-start test users (no target event before the held-out one): {nat_txt}.</p>")
    parts.extend(segment_tables(results))
    choice = results.get("strategy_choice")
    if choice:
        parts.append("<h2>Strategy choice (selection set, paired bootstrap)</h2><p>" + html.escape(str(choice.get("reason"))) + f"; chosen: <b>{html.escape(str(choice.get('chosen')))}</b></p>")
    served = results.get("served")
    if served:
        parts.append(f"<h2>Served model ({html.escape(str(served['strategy']))} trained again on every training event, the selection events included)</h2>")
        parts.append("<p>The choices above were made on the selection set; the registered model is the chosen strategy trained again with them "
                     "(its ID shrinkage folded in as chosen, its routing table kept, the routes' counts refitted). Test users:</p>")
        parts.append(_table(["model", "as chosen (selection events held out)", "served (refitted)"],
                            [[n, results.get("test", {}).get(n, {}).get("NDCG@10", {}).get("mean", float("nan")), m["NDCG@10"]] for n, m in served["test"].items()]))
    sel = results.get("select_ndcg10", {})
    if sel:
        parts.append("<p>" + html.escape(str(run.get("selection_note", ""))) + "</p>")
        parts.append(_table(["strategy", "selection NDCG@10", "valid NDCG@10 (early stopping)"], [[n, v["mean"], results.get("valid_ndcg10", {}).get(n, {}).get("mean", float("nan"))] for n, v in sel.items()]))
    hp = results.get("hyper_parameter_search", {})
    for name, c in hp.items():
        if "tried" in c:
            parts.append(f"<h3>{html.escape(name)}: own hyper-parameters chosen on the selection set</h3>")
            parts.append(_table(["params", "selection NDCG@10", "best valid NDCG@10", "epochs"], [[json.dumps(t["params"]), t["select_ndcg10"], t["valid_ndcg10"] if t["valid_ndcg10"] is not None else float("nan"), t["epochs"]] for t in c["tried"]]))
        if "id_shrink" in c:
            shrink = c["id_shrink"]
            parts.append(f"<h3>{html.escape(name)}: ID offsets shrunk by c/(c+k), k chosen on the selection set</h3><p>{html.escape(str(shrink['reason']))}</p>")
            parts.append(_table(["k (0: as trained)", "selection NDCG@10"], [[k, v] for k, v in shrink["select_ndcg10"].items()]))
    routing = results.get("routing")
    if routing:
        parts.append(f"<h2>Routed model ({html.escape(str(routing.get('strategy')))} + training-free routes, chosen per segment on the selection set)</h2>")
        parts.append("<p>Each segment keeps its fallback unless a challenger's paired bootstrap CI against it excludes zero.</p>")
        parts.append(_table(
            ["segment", "route", "fallback (why)", "selection users", "selection NDCG@10 per candidate", "why this route", "tail slots (why)"],
            [[seg, c["route"], f"{c.get('fallback', 'model')} ({c.get('fallback_reason') or 'tables fitted before fallbacks: always the model'})", c["n_users"],
              ", ".join(f"{k} {v:.4f}" for k, v in c["selection_ndcg10"].items()), c["reason"],
              f"{c.get('tail_slots', 0)} ({c.get('tail_slot_reason') or 'not tried'})"] for seg, c in routing["routes"].items()],
        ))
    diag = results.get("diagnose")
    if diag and "segments" in diag:
        from crossrec.diagnose import render_section

        parts.append(render_section(diag))
    frac = _plot_fractions(results)
    if frac:
        curve = results["fractions"]
        fr = sorted({f for pts in curve.values() for f in pts}, key=float)
        parts.append("<h2>Fraction of target training users</h2>")
        parts.append(_table(["strategy", *[f"{100 * float(f):g}%" for f in fr]], [[n] + [pts.get(f, {}).get("NDCG@10", float("nan")) for f in fr] for n, pts in curve.items()]))
        parts.append(f"<img src='data:image/png;base64,{frac}'>")
    enc = results.get("encoders", {})
    if len(enc) > 1:
        names = sorted({n for v in enc.values() if isinstance(v, dict) for n in v if n != "skipped"})
        parts.append("<h2>Encoder comparison (test NDCG@10)</h2>")
        parts.append(_table(["encoder", *names], [[e] + [v.get(n, v.get("skipped", "")) if isinstance(v, dict) else v for n in names] for e, v in enc.items()]))
    tr = _plot_training(results)
    if tr:
        parts.append(f"<h2>Training curves (seed {run.get('seeds', [0])[0]})</h2><img src='data:image/png;base64,{tr}'>")
    timing = results.get("timing", {})
    if timing:
        parts.append("<h2>Runtime</h2>")
        parts.append(_table(["strategy", "train s (mean)", "eval s", "epochs", "s/epoch"], [[n, sum(t["train_s"]) / len(t["train_s"]), sum(t["eval_s"]) / len(t["eval_s"]), t["epochs"][0], t["s_per_epoch"][0] if t["s_per_epoch"][0] is not None else "-"] for n, t in timing.items()]))
        parts.append(f"<p>load {_fmt(run.get('load_s', float('nan')))} s, main comparison {_fmt(run.get('main_comparison_s', float('nan')))} s, fraction curve {_fmt(run.get('fraction_curve_s', float('nan')))} s, total {_fmt(run.get('total_s', float('nan')))} s, peak RSS {_fmt(run.get('peak_rss_mb', float('nan')))} MB, {run.get('threads')} threads.</p>")
    parts.append("<h2>Targets</h2><pre>" + html.escape(json.dumps(results.get("targets", {}), indent=2)) + "</pre>")
    parts.append("<h2>Registry gate</h2><pre>" + html.escape(json.dumps(results.get("gate", {}), indent=2, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics_table(results), indent=2))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(results))
    return out_dir / "metrics.json", html_path
