"""New domain: can a source-only (zero-shot) model beat the training-free text scorers, and if not, why?

    python benchmarks/bench_zero_shot.py --input WORK --split users_split.json --output OUT \\
        --stages signals,variants,references,report [--variants base,frozen_adaptor] [--registered WORK/registry/v0001]
    python benchmarks/bench_zero_shot.py --quick --output /tmp/zs        # synthetic fixture, a minute

Issue 14 point 4 ("new domain"): zero-shot >= 1.5x the best training-free scorer that reads the
same histories. Every stage writes its JSON under OUTPUT and is skipped when that file exists, so
the work splits into short commands (2 shared CPU cores) and resumes after an interruption.

- ``signals``: the comparators (text cosine to the last / recent items of either domain, text of the
  source history, source co-occurrence) on the selection set (training users' held-out last target
  event, never trained on by a zero-shot model) and test users, per user segment; the comparator is
  the one best on the selection set. Also the *text ceiling*: per user, the best rank any single
  history item's text cosine gives the held-out item (an oracle choosing the query item).
- ``variants``: each zero-shot lever (``crossrec.adaptation.zero_shot.VARIANTS``: item tower, frozen
  adaptor, target re-centring, learning rate, pretraining length, the view the encoder reads),
  early-stopped on the validation users (epoch 0 = the untrained whitened model included), then
  plain and with a text-cosine residual whose weight is chosen on the selection set; test per
  segment; and the same model on its own (source) domain against text cosine there.
- ``references``: what target interactions buy (not zero-shot): the registered target-trained model,
  the same with its ID offsets removed, and a target-trained text-only tower (``--text-reference``).
- ``report``: the best zero-shot configuration on the selection set, its test NDCG@10 against the
  comparator's with a paired bootstrap CI, the 1.5x verdict, and the tables.

Test users appear in tables only; every choice (epoch, variant, residual weight, comparator) is made
on validation or selection users.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crossrec.adaptation.data import SPLIT_CODES, SOURCE, TARGET, AdaptData, EvalSet, load_adapt_data, make_eval_set, make_eval_set_at  # noqa: E402
from crossrec.adaptation.model import ModelConfig  # noqa: E402
from crossrec.adaptation.scorers import TrainingFreeScorers, rank_scores  # noqa: E402
from crossrec.adaptation.strategies import STRATEGIES, RunContext  # noqa: E402
from crossrec.adaptation.trainer import TrainConfig, logits_eval_set  # noqa: E402
from crossrec.adaptation.zero_shot import VARIANTS, in_domain_ndcg, mix_weight, mixed, oracle_text_ceiling, source_eval_set, train_variant, without_ids  # noqa: E402
from crossrec.diagnose import training_sequences  # noqa: E402
from crossrec.evaluation import paired_bootstrap, per_user  # noqa: E402

console = Console(width=230)
# The comparators: training-free scorers of the same histories that need no target interactions.
COMPARATORS = ("text_last_target", "text_recent_target", "text_last_any", "text_recent_any", "text_source", "source_cooc")
REFERENCE_ONLY = ("popularity", "item_knn")  # need target interactions: shown, never a comparator
SEGS = ("cold (target history hidden)", "1-2 target events", "3+ target events")


def say(msg: str) -> None:
    console.log(escape(msg))


class Bench:
    """The data, the selection set and the eval sets every stage shares (built once per process)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data: AdaptData = load_adapt_data(args.input, args.encoder, args.source, args.target, args.split if args.split and Path(args.split).is_file() else None)
        self.ctx = RunContext(self.data, ModelConfig(in_dim=int(self.data.catalog.embeddings.shape[1]), dim=args.dim, max_len=args.max_len),
                              TrainConfig(selection_users=args.selection_users, patience=args.patience, max_epochs=args.max_epochs), args.seed)
        self.scorers = TrainingFreeScorers.fit(self.data, training_sequences(self.data, self.ctx.selection()))
        test_users = self.data.split_users["test"]
        # full mixed histories for the training-free scorers (they pick their domain themselves)
        self.free = {
            "select": make_eval_set_at(self.data, self.ctx.selection(), "mixed", None),
            "test": make_eval_set(self.data, test_users, SPLIT_CODES["test"], "mixed", None),
            "test_cold": make_eval_set(self.data, test_users, SPLIT_CODES["test"], "mixed", None, drop_target_history=True),
        }
        nt = self.free["test"].n_target_hist
        self.test_rows = {SEGS[1]: np.flatnonzero((nt >= 1) & (nt <= 2)), SEGS[2]: np.flatnonzero(nt >= 3), "natural (0 target events)": np.flatnonzero(nt == 0)}

    def free_scores(self, name: str, key: str) -> np.ndarray:
        return self.scorers.score(name, self.free[key].histories)

    def model_ev(self, split: str, view: str, cold: bool = False) -> EvalSet:
        return self.ctx.eval_set(split, view, cold)

    def per_segment(self, test_ndcg: np.ndarray, cold_ndcg: np.ndarray) -> dict[str, dict]:
        """Per-user NDCG@10 of the natural test users and of the same users with their target
        history hidden -> mean per user segment."""
        out = {SEGS[0]: {"NDCG@10": float(cold_ndcg.mean()), "n_users": int(cold_ndcg.size)}}
        for seg, rows in self.test_rows.items():
            out[seg] = {"NDCG@10": float(test_ndcg[rows].mean()) if rows.size else float("nan"), "n_users": int(rows.size)}
        return out


def _dump(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def stage_signals(b: Bench) -> dict:
    out: dict = {"signals": {}, "n_select": len(b.free["select"].targets), "n_test": len(b.free["test"].targets)}
    for name in (*COMPARATORS, *REFERENCE_ONLY):
        sel = per_user(rank_scores(b.free_scores(name, "select"), b.free["select"]))
        test = per_user(rank_scores(b.free_scores(name, "test"), b.free["test"]))
        cold = per_user(rank_scores(b.free_scores(name, "test_cold"), b.free["test_cold"]))
        out["signals"][name] = {"select": float(sel.mean()), "test": float(test.mean()), "segments": b.per_segment(test, cold),
                                "test_per_user": test.tolist()}
        say(f"{name}: selection {sel.mean():.4f}, test {test.mean():.4f}")
    out["comparator"] = max(COMPARATORS, key=lambda n: out["signals"][n]["select"])
    t0 = time.perf_counter()
    out["text_ceiling"] = {
        "last target item (the scorer)": {"NDCG@10": out["signals"]["text_last_target"]["test"]},
        "oracle: best single target-history item": oracle_text_ceiling(b.scorers, b.free["test"], TARGET),
        "oracle: best single history item, either domain": oracle_text_ceiling(b.scorers, b.free["test"], None),
    }
    ranks = rank_scores(b.free_scores("text_last_target", "test"), b.free["test"])
    out["text_ceiling"]["last target item (the scorer)"] |= {"Recall@10": float((ranks <= 10).mean()), "median rank": float(np.median(ranks)),
                                                             "n_target_items": int(b.data.catalog.n_target)}
    say(f"text ceiling in {time.perf_counter() - t0:.0f}s: {out['text_ceiling']}")
    return out


def evaluate_model(b: Bench, m, view: str, comparator: str) -> dict:  # type: ignore[no-untyped-def]
    """One zero-shot model: plain and with the text residual (weight chosen on the selection set),
    selection / test / per segment, and the same model ranking its own (source) domain."""
    evs = {"select": b.model_ev("select", view), "test": b.model_ev("test", view), "test_cold": b.model_ev("test", view, cold=True)}
    logits = {k: logits_eval_set(m, b.data, ev) for k, ev in evs.items()}
    text = {k: b.free_scores(comparator, k) for k in logits}
    obj = lambda s: float(per_user(rank_scores(s, evs["select"])).mean())  # noqa: E731
    alpha, _, trials = mix_weight(logits["select"], text["select"], obj)
    res: dict = {"alpha": alpha, "alpha_trials_select": trials}
    for kind, a in (("plain", 0.0), ("residual", alpha)):
        pu = {k: per_user(rank_scores(mixed(logits[k], text[k], a) if a else logits[k], evs[k])) for k in logits}
        res[kind] = {"select": float(pu["select"].mean()), "test": float(pu["test"].mean()), "segments": b.per_segment(pu["test"], pu["test_cold"]),
                     "test_per_user": pu["test"].tolist()}
    res["in_domain_source"] = in_domain_ndcg(m, b.scorers, source_eval_set(b.data, b.data.split_users["valid"], b.ctx.model_cfg.max_len), SOURCE)
    return res


def stage_variant(b: Bench, name: str, comparator: str) -> dict:
    v = VARIANTS[name]
    if b.args.epochs is not None and v.epochs > 0:
        v = replace(v, epochs=min(v.epochs, b.args.epochs))
    t0 = time.perf_counter()
    run = train_variant(b.ctx, v, say)
    res: dict = {"variant": v.__dict__, "best_epoch": run.best_epoch, "epoch0_valid": run.epoch0_valid, "best_valid": run.best_valid, "residual_signal": comparator,
                 "epochs": [{"epoch": lg.epoch, "loss": lg.loss, "valid": lg.valid_ndcg10, "s": lg.seconds} for lg in run.logs]}
    res["models"] = {"kept": evaluate_model(b, run.model, v.view, comparator)}
    if run.trained is not None:  # the trained epochs lost to epoch 0: measured too (the registered rule keeps them)
        res["models"]["trained"] = evaluate_model(b, run.trained, v.view, comparator) | {"valid": run.trained_valid}
    res["seconds"] = time.perf_counter() - t0
    for k, r in res["models"].items():
        say(f"{name} [{k}]: best epoch {run.best_epoch}; plain sel {r['plain']['select']:.4f} test {r['plain']['test']:.4f}; "
            f"residual a={r['alpha']} sel {r['residual']['select']:.4f} test {r['residual']['test']:.4f}; on source: {r['in_domain_source']}")
    return res


def stage_references(b: Bench) -> dict:
    out: dict = {}
    test_ev, cold_ev = b.model_ev("test", "target"), b.model_ev("test", "target", cold=True)

    def row(model) -> dict:  # type: ignore[no-untyped-def]
        t = per_user(rank_scores(logits_eval_set(model, b.data, test_ev), test_ev))
        c = per_user(rank_scores(logits_eval_set(model, b.data, cold_ev), cold_ev))
        return {"test": float(t.mean()), "segments": b.per_segment(t, c)}

    if b.args.registered:
        from crossrec.adaptation.artifacts import load_with_embeddings

        model, config = load_with_embeddings(Path(b.args.registered), b.data)
        out[f"registered {config['strategy']} (text+ID, target-trained)"] = row(model) | {"seed": config.get("seed")}
        if config["model"].get("item_tower") == "text+id":
            out[f"registered {config['strategy']} with ID offsets removed"] = row(without_ids(model))
        if config["view"] != "target":
            raise SystemExit(f"the registered model reads the {config['view']} view; this reference expects target")
    if b.args.text_reference:
        ctx = RunContext(b.data, ModelConfig(**{**b.ctx.model_cfg.to_dict(), "item_tower": "text"}), b.ctx.train_cfg, b.args.seed, progress=say, cache=b.ctx.cache)
        t0 = time.perf_counter()
        trained = STRATEGIES["target_only"](ctx)
        assert trained.model is not None
        out["target-trained text-only tower (no IDs)"] = row(trained.model) | {"epochs": len(trained.logs), "seconds": time.perf_counter() - t0}
        src_ev = source_eval_set(b.data, b.data.split_users["valid"], b.ctx.model_cfg.max_len)
        out["target-trained text-only tower (no IDs)"]["in_domain_source"] = in_domain_ndcg(trained.model, b.scorers, src_ev, SOURCE)
    for k, v in out.items():
        say(f"{k}: test {v['test']:.4f}")
    return out


def report(outdir: Path) -> dict:
    sig = json.loads((outdir / "signals.json").read_text())
    variants = {p.stem.removeprefix("variant_"): json.loads(p.read_text()) for p in sorted(outdir.glob("variant_*.json"))}
    refs = json.loads((outdir / "references.json").read_text()) if (outdir / "references.json").is_file() else {}
    comp = sig["comparator"]
    comp_test = np.asarray(sig["signals"][comp]["test_per_user"])
    # a configuration = (variant, which model: early-stopping choice or best trained epoch, plain / residual)
    configs = {(n + ("" if which == "kept" else "@trained"), k): (r, r[k], v["best_epoch"] if which == "kept" else max((e["epoch"] for e in v["epochs"] if e["valid"] == r["valid"]), default=-1))
               for n, v in variants.items() for which, r in v["models"].items() for k in ("plain", "residual")}
    summary: dict = {"comparator": comp, "comparator_select": sig["signals"][comp]["select"], "comparator_test": float(comp_test.mean()), "configs": {}}
    for (n, k), (m, r, epoch) in configs.items():
        ci = paired_bootstrap(np.asarray(r["test_per_user"]), comp_test)
        summary["configs"][f"{n} {k}"] = {"select": r["select"], "test": r["test"], "ratio_select": r["select"] / summary["comparator_select"],
                                          "ratio_test": r["test"] / summary["comparator_test"], "ci_ratio_test": [1 + ci["lo"] / comp_test.mean(), 1 + ci["hi"] / comp_test.mean()],
                                          "alpha": m["alpha"] if k == "residual" else 0.0, "best_epoch": epoch,
                                          "segments": r["segments"], "on_source": m["in_domain_source"]}
    if configs:
        chosen = max(summary["configs"], key=lambda c: summary["configs"][c]["select"])
        c = summary["configs"][chosen]
        summary["chosen"] = chosen
        summary["verdict"] = (f"chosen on the selection set: zero-shot '{chosen}' (a={c['alpha']}, best epoch {c['best_epoch']}); test NDCG@10 {c['test']:.4f} "
                              f"= {c['ratio_test']:.2f}x {comp} ({summary['comparator_test']:.4f}; 95% CI {c['ci_ratio_test'][0]:.2f}-{c['ci_ratio_test'][1]:.2f}x); "
                              f"target 1.5x: {'met' if c['ratio_test'] >= 1.5 and c['ratio_select'] >= 1.5 else 'NOT met'}")
    _dump(outdir / "summary.json", summary)

    n_seg = {g: sig["signals"][comp]["segments"][g]["n_users"] for g in SEGS}
    seg_cols = [f"{g} (n={n_seg[g]})" for g in SEGS]
    tables = [
        (f"zero-shot configurations (chosen on {sig['n_select']} selection users; test = {sig['n_test']} test users; ratio vs {comp})",
         ["configuration", "best epoch", "a (text)", "selection", "test", "test ratio [95% CI]", *seg_cols, "on Art: model / text"],
         [[("* " if name == summary.get("chosen") else "") + name, str(c["best_epoch"]), f"{c['alpha']:.2f}", f"{c['select']:.4f}", f"{c['test']:.4f}",
           f"{c['ratio_test']:.2f} [{c['ci_ratio_test'][0]:.2f}, {c['ci_ratio_test'][1]:.2f}]", *[f"{c['segments'][g]['NDCG@10']:.4f}" for g in SEGS],
           f"{c['on_source']['model']:.4f} / {c['on_source']['text_last']:.4f}"]
          for name, c in sorted(summary["configs"].items(), key=lambda kv: -kv[1]["select"])]),
        ("training-free scorers (comparators; popularity / item-KNN need target interactions: reference only)",
         ["scorer", "selection", "test", *seg_cols],
         [[("* " if name == comp else "") + name, f"{s['select']:.4f}", f"{s['test']:.4f}", *[f"{s['segments'][g]['NDCG@10']:.4f}" for g in SEGS]]
          for name, s in sorted(sig["signals"].items(), key=lambda kv: -kv[1]["select"])]),
        ("why: where the next-target-item signal lives (test users)", ["measurement", "NDCG@10", "x comparator", "note"], why_rows(sig, refs, summary["comparator_test"])),
        ("pretraining length: target validation NDCG@10 after each source epoch (0 = untrained, whitened)", ["variant", "by epoch"],
         [[n, " ".join(f"{e}:{x:.4f}" for e, x in [(0, v["epoch0_valid"])] + [(lg["epoch"], lg["valid"]) for lg in v["epochs"]])] for n, v in variants.items()]),
    ]
    md = []
    for title, cols, rows in tables:
        t = Table(title=title)
        for i, col in enumerate(cols):
            t.add_column(col, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        md += [f"**{title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
    if "verdict" in summary:
        console.print(summary["verdict"])
        md.append(summary["verdict"])
    (outdir / "summary.md").write_text("\n".join(md) + "\n")
    return summary


def why_rows(sig: dict, refs: dict, base: float) -> list[list[str]]:
    rows = [["1.5x the comparator (the target)", f"{1.5 * base:.4f}", "1.50", ""]]
    for k, v in sig["text_ceiling"].items():
        note = f"Recall@10 {v['Recall@10']:.3f}" + (f", median rank {v['median rank']:.0f} of {v['n_target_items']}" if "median rank" in v else "")
        rows.append([f"text: {k}", f"{v['NDCG@10']:.4f}", f"{v['NDCG@10'] / base:.2f}", note])
    for k, v in refs.items():
        src = v.get("in_domain_source")
        rows.append([f"target-trained: {k}", f"{v['test']:.4f}", f"{v['test'] / base:.2f}", "uses target interactions" + (f"; on Art {src['model']:.4f}" if src else "")])
    for k in REFERENCE_ONLY:
        rows.append([f"target-trained: {k}", f"{sig['signals'][k]['test']:.4f}", f"{sig['signals'][k]['test'] / base:.2f}", "uses target interactions"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, default=Path("var"))
    ap.add_argument("--split", type=Path, default=Path("data/amazon-art-office/users_split.json"))
    ap.add_argument("--output", type=Path, default=Path("var/zero_shot"))
    ap.add_argument("--stages", default="signals,variants,references,report")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=None, help="cap every variant's pretraining epochs (a short run)")
    ap.add_argument("--registered", type=Path, default=None, help="a registered target-trained artifact (reference row)")
    ap.add_argument("--text-reference", action="store_true", help="also train a target-only text tower (reference row)")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--source", default="art")
    ap.add_argument("--target", default="office")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--selection-users", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="synthetic fixture, tiny model, 2 epochs (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        import tempfile

        from crossrec.adaptation.synthetic import write_synthetic

        work = write_synthetic(Path(tempfile.mkdtemp(prefix="bench_zs_")) / "work", n_users=300, n_items=80, dim=16, domains=("books", "garden"))
        args.input, args.split, args.source, args.target = work, work / "users_split.json", "books", "garden"
        args.dim, args.max_len, args.epochs, args.max_epochs, args.patience, args.selection_users = 16, 20, 2, 2, 1, 60
        args.text_reference = True
    args.output.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    load0, t0 = os.getloadavg(), time.perf_counter()
    bench = Bench(args) if set(stages) - {"report"} else None
    if bench is not None:
        say(f"{bench.data.source_domain} -> {bench.data.target_domain}: {bench.data.catalog.n_target} target items, {len(bench.ctx.selection())} selection users, "
            f"{len(bench.free['test'].targets)} test users ({time.perf_counter() - t0:.0f}s to load)")
    sig_path = args.output / "signals.json"
    if "signals" in stages and not sig_path.is_file():
        _dump(sig_path, stage_signals(bench))  # type: ignore[arg-type]
    if "variants" in stages:
        comparator = json.loads(sig_path.read_text())["comparator"]
        for name in [n for n in args.variants.split(",") if n]:
            if name not in VARIANTS:
                raise SystemExit(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
            path = args.output / f"variant_{name}.json"
            if not path.is_file():
                _dump(path, stage_variant(bench, name, comparator))  # type: ignore[arg-type]
    ref_path = args.output / "references.json"
    if "references" in stages and not ref_path.is_file() and (args.registered or args.text_reference):
        _dump(ref_path, stage_references(bench))  # type: ignore[arg-type]
    if "report" in stages:
        report(args.output)
    say(f"{time.perf_counter() - t0:.0f}s; load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
