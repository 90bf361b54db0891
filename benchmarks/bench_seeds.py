"""Issue 14's measured points over several seeds: every strategy, segments, CIs, fraction curve, verdicts.

    python benchmarks/bench_seeds.py --input var --output var/seeds --seeds 42,43,44 --device auto --parallel
    python benchmarks/bench_seeds.py --quick --output /tmp/seeds          # synthetic fixture, a minute

One ``run_adapt`` per seed (every strategy, SASRec with its own grid chosen on the selection set,
the routed model, the diagnosis with the training-free text-cosine scorers, the fraction curve with
the routed model and the baselines). With ``--parallel`` each seed runs in its own process (a GPU
or many cores are shared); every finished seed writes ``seed{S}.json`` and rewrites
``summary.json`` / ``summary.md`` from the seeds finished so far, so a run cut short by a time
limit still leaves the seeds that finished. Every choice inside a seed is made on the selection
set; test users only appear in the tables. ``--variant NAME=JSON`` adds a run with changed
ModelConfig/TrainConfig fields (a lever, e.g. longer training), reported under its own name.
Variants skip the fraction curve. ``--defaults`` also re-decides the GRU residual and transfer_view on the selection set
(benchmarks/bench_defaults.py) for the first seed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crossrec.adaptation.model import ModelConfig  # noqa: E402
from crossrec.adaptation.pipeline import AdaptOptions, run_adapt  # noqa: E402
from crossrec.adaptation.trainer import TrainConfig  # noqa: E402
from crossrec.evaluation import ITEM_SEGMENTS, TAIL_SEGMENTS, USER_SEGMENTS, pooled  # noqa: E402

console = Console(width=160)
# What a new-domain (zero-shot) model is held against: training-free scorers of the same histories
# through text or the source domain (as check_language in the pipeline); item-KNN / popularity need
# target interactions, which a new domain does not have.
SIGNALS = ("text_last_target", "text_last_any", "text_source", "source_cooc")


def _mean_sd(vals: list[float]) -> dict:
    a = np.asarray([v for v in vals if v is not None and not (isinstance(v, float) and np.isnan(v))], np.float64)
    return {"mean": float(a.mean()) if a.size else float("nan"), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n_seeds": int(a.size)}


def _ndcg(res: dict, name: str) -> float:
    return res["test"][name]["NDCG@10"]["mean"]


def _tail(seg: dict) -> tuple[float, int]:
    """NDCG@10 over test events whose item had < 5 training interactions (segments 0 and 1-4 pooled)."""
    return pooled(seg["item"], TAIL_SEGMENTS)


def _best_training_free(diag: dict) -> tuple[str | None, float]:
    """The best training-free scorer over the natural test histories (diagnose's per-segment signals)."""
    segs = {k: v for k, v in diag.get("segments", {}).items() if k != USER_SEGMENTS[0] and v.get("n_users")}
    tot = sum(v["n_users"] for v in segs.values())
    best, val = None, -1.0
    for sig in SIGNALS:
        if not all(sig in v.get("signals_test_ndcg10", {}) for v in segs.values()) or not tot:
            continue
        x = sum(v["signals_test_ndcg10"][sig] * v["n_users"] for v in segs.values()) / tot
        if x > val:
            best, val = sig, x
    return best, val


def seed_verdicts(res: dict) -> dict:
    """The issue's targets on one seed's results (every model choice was made on the selection set)."""
    test, seg = res["test"], res.get("segments", {})
    chosen = res.get("strategy_choice", {}).get("chosen")
    out: dict = {"chosen_text_strategy": chosen}
    if chosen in test and "sasrec" in test:
        s = _ndcg(res, "sasrec")
        out["text_vs_sasrec"] = _ndcg(res, chosen) / s - 1 if s > 0 else float("inf")
        if "routed" in test:
            out["routed_vs_sasrec"] = _ndcg(res, "routed") / s - 1 if s > 0 else float("inf")
        t, n = _tail(seg[chosen])
        sr, _ = _tail(seg["sasrec"])
        out["tail_text"], out["tail_sasrec"], out["tail_n"] = t, sr, n
        out["tail_ratio"] = t / sr if sr > 0 else float("inf")
        if "routed" in seg:
            out["tail_routed"] = _tail(seg["routed"])[0]
            out["tail_routed_ratio"] = out["tail_routed"] / sr if sr > 0 else float("inf")
    served = res.get("served", {})
    if "sasrec" in test and _ndcg(res, "sasrec") > 0:
        s_ = _ndcg(res, "sasrec")
        sr = _tail(seg["sasrec"])[0]
        for n_, m in served.get("test", {}).items():  # the refitted model that is registered, and its routing
            label = "routed" if n_ == "routed" else "text"
            out[f"served_{label}_vs_sasrec"] = m["NDCG@10"] / s_ - 1
            out[f"served_tail_{label}"] = t_ = _tail(served["segments"][n_])[0]
            out[f"served_tail_{label}_ratio"] = t_ / sr if sr > 0 else float("inf")
    name, val = _best_training_free(res.get("diagnose", {}))
    if "zero_shot" in test and name:
        out["best_training_free"], out["best_training_free_ndcg10"] = name, val
        out["zero_shot_vs_training_free"] = _ndcg(res, "zero_shot") / val if val > 0 else float("inf")
    curve = res.get("fractions", {})
    if "target_only" in test:
        t100 = _ndcg(res, "target_only")
        for n_ in curve:
            if "0.1" in curve[n_]:
                out[f"at10pct_over_target_only_100pct:{n_}"] = curve[n_]["0.1"]["NDCG@10"] / t100 if t100 > 0 else float("nan")
    if "routed" in test:
        r = _ndcg(res, "routed")
        singles = {n_: _ndcg(res, n_) for n_ in test if n_ != "routed"}
        out["routed_minus_best_single"] = r - max(singles.values())
        out["best_single"] = max(singles, key=singles.get)
        if "popularity" in seg:
            out["routed_minus_popularity_per_user_segment"] = {
                s: seg["routed"]["user"][s]["NDCG@10"] - seg["popularity"]["user"][s]["NDCG@10"] for s in USER_SEGMENTS if seg["routed"]["user"][s]["n_users"]
            }
        if "target_only" in test and "overall" in res.get("diagnose", {}):
            out["routed_gain_over_target_only"] = r / _ndcg(res, "target_only") - 1
            out["diagnose_G"] = res["diagnose"]["overall"]["gain"]["rel"]
    return out


def summarise(out_dir: Path) -> dict:
    """Mean / sd over the finished seeds of every number the issue asks for (per run label)."""
    runs: dict[str, dict[int, dict]] = {}
    for p in sorted(out_dir.glob("*seed*.json")):
        label, _, seed = p.stem.rpartition("seed")
        runs.setdefault(label.rstrip("_") or "main", {})[int(seed)] = json.loads(p.read_text())
    summary: dict = {}
    for label, by_seed in runs.items():
        seeds = sorted(by_seed)
        rs = [by_seed[s] for s in seeds]
        names = [n for n in rs[0]["test"] if all(n in r["test"] for r in rs)]
        s: dict = {"seeds": seeds, "test": {}, "segments": {}, "fractions": {}, "choices": {}, "verdicts": {}}
        for n in names:
            s["test"][n] = {m: _mean_sd([r["test"][n][m]["mean"] for r in rs]) for m in ("NDCG@10", "Recall@10", "MRR")} | {"n_users": rs[0]["test"][n]["n_users"]}
            s["segments"][n] = {
                kind: {g: {"NDCG@10": _mean_sd([r["segments"][n][kind][g].get("NDCG@10") for r in rs]), "n_users": rs[0]["segments"][n][kind][g]["n_users"]} for g in rs[0]["segments"][n][kind]}
                for kind in ("user", "item")
            }
        served = [r["served"] for r in rs if "served" in r]
        if len(served) == len(rs):  # the models registered, refitted on every training event; seeds may choose different strategies
            s["served"] = {"chosen text model": {"NDCG@10": _mean_sd([v["test"][v["strategy"]]["NDCG@10"] for v in served]), "strategies": [v["strategy"] for v in served]}}
            if all("routed" in v["test"] for v in served):
                s["served"]["routed"] = {"NDCG@10": _mean_sd([v["test"]["routed"]["NDCG@10"] for v in served])}
        curves = [r.get("fractions", {}) for r in rs]
        for n in dict.fromkeys(k for c in curves for k in c):
            fr = {}
            for f in sorted({f for c in curves for f in c.get(n, {})}, key=float):
                vals = [r["fractions"][n][f]["NDCG@10"] for r in rs if f in r.get("fractions", {}).get(n, {})]
                fr[f] = _mean_sd(vals)
            s["fractions"][n] = fr
        for seed, r in zip(seeds, rs):
            s["choices"][str(seed)] = {
                "strategy": r.get("strategy_choice", {}),
                "routes": r.get("routing", {}).get("routes"),
                "sasrec": r.get("hyper_parameter_search", {}).get("sasrec", {}).get("kept"),
                "id_shrink_k": {n: c["id_shrink"]["kept"] for n, c in r.get("hyper_parameter_search", {}).items() if "id_shrink" in c},
                "select_ndcg10": {n: v["mean"] for n, v in r.get("select_ndcg10", {}).items()},
                "run_s": r.get("run", {}).get("total_s"),
                "device": r.get("run", {}).get("train", {}).get("device"),
            }
        per = [seed_verdicts(r) for r in rs]
        keys = [k for k in per[0] if all(k in p for p in per) and isinstance(per[0][k], (int, float))]
        s["verdicts"] = {k: _mean_sd([p[k] for p in per]) | {"values": [p[k] for p in per]} for k in keys}
        s["verdicts_per_seed"] = per
        s["diagnose"] = {k: rs[0].get("diagnose", {}).get(k) for k in ("verdict", "overall")}
        s["diagnose_signals"] = {g: v.get("signals_test_ndcg10") | {"n_users": v.get("n_users")} for g, v in rs[0].get("diagnose", {}).get("segments", {}).items() if v.get("n_users")}
        summary[label] = s
    return summary


def _fmt(ms: dict) -> str:
    return f"{ms['mean']:.4f}±{ms['sd']:.4f}" if ms["n_seeds"] else "-"


def summary_markdown(summary: dict) -> str:
    lines = []
    for label, s in summary.items():
        lines.append(f"## {label}: seeds {s['seeds']} (test users, NDCG@10 mean±sd over seeds)\n")
        any_n = next(iter(s["segments"].values()))
        heads = [f"{g} ({any_n['user'][g]['n_users']})" for g in USER_SEGMENTS] + [f"{g} ({any_n['item'][g]['n_users']})" for g in ITEM_SEGMENTS]
        lines.append("| model | overall | " + " | ".join(heads) + " |")
        lines.append("|---" * (2 + len(heads)) + "|")
        for n, t in sorted(s["test"].items(), key=lambda kv: -kv[1]["NDCG@10"]["mean"]):
            seg = s["segments"][n]
            cells = [_fmt(seg["user"][g]["NDCG@10"]) for g in USER_SEGMENTS] + [_fmt(seg["item"][g]["NDCG@10"]) for g in ITEM_SEGMENTS]
            lines.append(f"| {n} | {_fmt(t['NDCG@10'])} | " + " | ".join(cells) + " |")
        if s.get("served"):
            lines.append("\n| served (refitted on every training event) | overall |\n|---|---|")
            for n, v in s["served"].items():
                lines.append(f"| {n}{' (' + ', '.join(v['strategies']) + ')' if 'strategies' in v else ''} | {_fmt(v['NDCG@10'])} |")
        if s["fractions"]:
            fracs = sorted({f for v in s["fractions"].values() for f in v}, key=float)
            lines.append("\n| fraction curve | " + " | ".join(f"{float(f):.0%}" for f in fracs) + " |")
            lines.append("|---" * (1 + len(fracs)) + "|")
            for n, v in s["fractions"].items():
                lines.append(f"| {n} | " + " | ".join(_fmt(v[f]) if f in v else "-" for f in fracs) + " |")
        lines.append("\n| verdict (per-seed mean±sd) | value | per seed |\n|---|---|---|")
        for k, v in s["verdicts"].items():
            lines.append(f"| {k} | {v['mean']:.4f}±{v['sd']:.4f} | {', '.join(f'{x:.4f}' for x in v['values'])} |")
        lines.append("\nChoices (selection set):")
        for seed, c in s["choices"].items():
            routes = "; ".join(f"{g}: {r.get('reason')}" + (f" [{r['tail_slot_reason']}]" if r.get("tail_slot_reason") else "") for g, r in (c["routes"] or {}).items())
            lines.append(f"- seed {seed}: strategy: {c['strategy'].get('reason')}. SASRec kept {c['sasrec']}. Routes: {routes}. Run {c['run_s'] or 0:.0f}s on {c['device']}.")
        d = s.get("diagnose", {})
        if d.get("verdict"):
            lines.append(f"\nDiagnose: {d['verdict']}")
        if s.get("diagnose_signals"):
            sigs = sorted({k for v in s["diagnose_signals"].values() for k in v if k != "n_users"})
            lines.append("\n| training-free (test) | " + " | ".join(sigs) + " |\n" + "|---" * (1 + len(sigs)) + "|")
            for g, v in s["diagnose_signals"].items():
                lines.append(f"| {g} ({v['n_users']}) | " + " | ".join(f"{v[k]:.4f}" for k in sigs) + " |")
        lines.append("")
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    """Write-then-rename: a run killed at its time limit never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(out_dir: Path) -> dict:
    """Rewrite summary.json / summary.md from the finished seeds (a lock: seeds finish in parallel)."""
    with open(out_dir / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = summarise(out_dir)
        _write(out_dir / "summary.json", json.dumps(summary, indent=1, default=float))
        _write(out_dir / "summary.md", summary_markdown(summary))
    return summary


def run_one(args: argparse.Namespace, seed: int, label: str, overrides: dict) -> None:
    """One seed of one configuration: run_adapt, then seed{S}.json and the refreshed summary."""
    model_keys, train_keys = set(ModelConfig.__dataclass_fields__), set(TrainConfig.__dataclass_fields__)
    m_over = {k: v for k, v in overrides.items() if k in model_keys}
    t_over = {k: v for k, v in overrides.items() if k in train_keys}
    if set(overrides) - model_keys - train_keys:
        raise SystemExit(f"unknown override fields {sorted(set(overrides) - model_keys - train_keys)}")
    grid = json.loads(args.sasrec_grid) if args.sasrec_grid else None
    base = {"max_epochs": args.max_epochs, "patience": args.patience, "pretrain_epochs": args.pretrain_epochs, "device": args.device} \
        | ({"selection_users": args.selection_users} if args.selection_users is not None else {}) | ({"sasrec_grid": grid} if grid else {})
    train = TrainConfig(**(base | t_over))
    model = ModelConfig(**({"dim": args.dim, "max_len": args.max_len} | m_over))
    work = Path(args.scratch) / f"{label}seed{seed}"
    out = Path(args.output)

    def keep(res: dict, stage: str) -> None:
        res["bench"] = {"label": label or "main", "overrides": overrides, "stage": stage, "wall_s": time.perf_counter() - t0}
        _write(out / f"{label}seed{seed}.json", json.dumps(res, indent=1, default=float))
        try:
            write_summary(out)
        except Exception as exc:  # noqa: BLE001 - the seed's own file is written; a summary bug must not stop its run
            console.log(f"summary not rewritten after {label}seed {seed} ({stage}): {exc!r}")

    opts = AdaptOptions(
        input_dir=args.input, output_dir=work / "out", strategies=args.strategies.split(","), seeds=[seed],
        fractions=[] if label else [float(x) for x in args.fractions.split(",") if x.strip()], fraction_strategies=args.fraction_strategies.split(","),
        encoder=args.encoder, source_domain=args.source, target_domain=args.target,
        split_path=args.split if args.split and Path(args.split).is_file() else None, registry_dir=work / "registry",
        promote=False, model=model, train=train, threads=args.threads, on_partial=lambda r: keep(dict(r), "before fraction curve"),
    )
    t0 = time.perf_counter()
    tag = escape(f"[{label}seed {seed}]")  # rich would take "[seed 42]" for markup and drop it
    keep(run_adapt(opts, say=lambda s: console.log(f"{tag} {escape(s)}")), "done")


def run_defaults(args: argparse.Namespace, seed: int) -> None:
    from benchmarks.bench_defaults import decide_defaults

    from crossrec.adaptation.data import load_adapt_data

    data = load_adapt_data(args.input, args.encoder, args.source, args.target, args.split if args.split and Path(args.split).is_file() else None)
    mcfg = ModelConfig(in_dim=int(data.catalog.embeddings.shape[1]), dim=args.dim, max_len=args.max_len)
    rows = decide_defaults(data, mcfg, args.max_epochs, seed, args.device, log=lambda s: console.log(escape(f"[defaults] {s}")))
    _write(Path(args.output) / "defaults.json", json.dumps(rows, indent=1, default=float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, default=Path("var"))
    ap.add_argument("--split", type=Path, default=Path("data/amazon-art-office/users_split.json"))
    ap.add_argument("--output", type=Path, default=Path("var/seeds"))
    ap.add_argument("--scratch", type=Path, default=None, help="work dirs of the runs (default: OUTPUT/runs)")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--strategies", default="all")
    ap.add_argument("--fractions", default="0.05,0.1,0.25,0.5,1.0")
    ap.add_argument("--fraction-strategies", default="target_only,best,popularity,item_knn,sasrec,routed")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--source", default="art")
    ap.add_argument("--target", default="office")
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--selection-users", type=int, default=None, help="default: settings.adapt.selection_users")
    ap.add_argument("--sasrec-grid", default="", help="JSON list of SASRec candidates (default: TrainConfig's)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", action="store_true", help="one process per seed (and per variant)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON of ModelConfig/TrainConfig overrides, run for every seed")
    ap.add_argument("--defaults", action="store_true", help="also re-decide the residual / transfer_view defaults (first seed)")
    ap.add_argument("--quick", action="store_true", help="synthetic fixture, tiny model (smoke run)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "LABEL:SEED" or "defaults:SEED"
    args = ap.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    args.scratch = args.scratch or args.output / "runs"
    if args.quick and args.child is None:
        import tempfile

        from crossrec.adaptation.synthetic import write_synthetic

        work = write_synthetic(Path(tempfile.mkdtemp(prefix="bench_seeds_")) / "work", n_users=300, n_items=80, dim=16, domains=("books", "garden"))
        sys.argv += ["--input", str(work), "--split", str(work / "users_split.json"), "--source", "books", "--target", "garden", "--dim", "16", "--max-len", "20",
                     "--max-epochs", "2", "--pretrain-epochs", "1", "--patience", "1", "--selection-users", "60"]
        args = ap.parse_args()
        args.output.mkdir(parents=True, exist_ok=True)
        args.scratch = args.scratch or args.output / "runs"
    variants = {"": {}} | {v.split("=", 1)[0] + "_": json.loads(v.split("=", 1)[1]) for v in args.variant}
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.child is not None:
        label, seed = args.child.rsplit(":", 1)
        run_defaults(args, int(seed)) if label == "defaults" else run_one(args, int(seed), label, variants[label])
        return
    jobs = [(label, s) for label in variants for s in seeds] + ([("defaults", seeds[0])] if args.defaults else [])
    t0 = time.perf_counter()
    if args.parallel:
        base = [a for a in sys.argv[1:] if a != "--parallel"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads)}
        procs = [(j, subprocess.Popen([sys.executable, __file__, *base, "--child", f"{j[0]}:{j[1]}"], env=env)) for j in jobs]
        failed = [j for j, p in procs if p.wait() != 0]
    else:
        failed = []
        for label, s in jobs:
            try:
                run_defaults(args, s) if label == "defaults" else run_one(args, s, label, variants[label])
            except Exception as exc:  # noqa: BLE001 - one failed seed must not lose the others
                console.log(f"{label}:{s} failed: {exc!r}")
                failed.append((label, s))
    summary = write_summary(args.output) if any(args.output.glob("*seed*.json")) else {}
    table = Table(title=f"test NDCG@10 over seeds ({time.perf_counter() - t0:.0f}s; failed: {failed or 'none'})")
    for col in ("run", "model", "mean ± sd", "seeds"):
        table.add_column(col)
    for label, s in summary.items():
        for n, t in sorted(s["test"].items(), key=lambda kv: -kv[1]["NDCG@10"]["mean"]):
            table.add_row(label, n, _fmt(t["NDCG@10"]), str(t["NDCG@10"]["n_seeds"]))
    console.print(table)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
