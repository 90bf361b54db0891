"""The demo's closing report: what each stage produced, as tables on the terminal and a Markdown
file (``{work_dir}/demo/report.md``) next to the adaptation job's HTML report with its plots."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from crossrec.console import console
from crossrec.demo import DemoResult, snapshot_lists
from crossrec.settings import Settings

HEADLINE_METRICS = ("NDCG@10", "Recall@10", "Recall@50", "MRR")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _table(title: str, columns: list[str], rows: list[list[str]]) -> tuple[Table, str]:
    """A rich table for the terminal and the same rows as Markdown for the file."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    md = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    return table, "\n".join(md) + "\n"


def adaptation_rows(metrics: dict) -> list[list[str]]:
    """One row per strategy/baseline of metrics.json (strategy -> metric -> test-user value)."""
    rows = []
    for name, values in metrics.items():
        if not isinstance(values, dict):
            continue
        cells = []
        for metric in HEADLINE_METRICS:
            value = values.get(metric)
            if isinstance(value, dict):  # {"mean": .., "std": ..}
                value = value.get("mean")
            cells.append(f"{value:.4f}" if isinstance(value, (int, float)) else "-")
        rows.append([name, *cells])
    return rows


def write_report(settings: Settings, result: DemoResult) -> Path:
    work = settings.work_dir.resolve()
    sections: list[str] = ["# crossrec demo report", ""]

    def show(title: str, columns: list[str], rows: list[list[str]]) -> None:
        table, md = _table(title, columns, rows)
        console.print(table)
        sections.append(md)

    show("stages", ["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in result.stages.items()])
    show("data", ["what", "count"], [
        ["events for the nightly pipeline", f"{result.events_nightly:,}"],
        ["newest events replayed live", f"{result.events_live:,}"],
    ])
    clean = _read_json(work / "clean" / "summary.json")
    if clean:
        rows = [["rows in", str(clean.get("rows_in"))], ["rows kept", str(clean.get("rows_kept"))]]
        rows += [[f"rejected: {k}", str(v)] for k, v in (clean.get("rejected_by_reason") or {}).items()]
        show("cleaning", ["what", "count"], rows)
    nightly = work / "nightly" / "runs" / result.ds if result.ds else None
    summary = _read_json(nightly / "summary.json") if nightly else None
    if summary:
        show("nightly decision", ["what", "value"], [
            ["decision", str(summary.get("decision"))], ["why", str(summary.get("why"))],
            ["current model", str(summary.get("current_model"))],
            ["strategy", f"{summary.get('strategy')} ({summary.get('strategy_from')})"],
            ["embedding dtype", f"{(summary.get('embedding') or {}).get('dtype')} ({(summary.get('embedding') or {}).get('dtype_reason')})"],
            *[[f"time: {task}", f"{secs:.0f} s"] for task, secs in (summary.get("times_s") or {}).items()],
        ])
    adapt_dir = nightly / "adapt" if nightly and (nightly / "adapt" / "metrics.json").is_file() else work / "adapt"
    metrics = _read_json(adapt_dir / "metrics.json")
    if metrics:
        show("cross-domain adaptation (test users)", ["model", *HEADLINE_METRICS], adaptation_rows(metrics))
    if result.consumer:
        show("streaming consumer", ["counter", "value"], [[k, json.dumps(v)] for k, v in result.consumer.items()])
    after = snapshot_lists(settings, result.live_users)
    rows = [[user, "; ".join(result.lists_before.get(user, [])), "; ".join(after.get(user, []))] for user in result.live_users]
    show("live users: top-5 before and after their live events", ["user", "after nightly", "after stream"], rows)

    html = adapt_dir / "report.html"
    if html.is_file():
        sections.append(f"Plots and the full comparison: `{html}`\n")
        console.print(f"adaptation report with plots: {html}")
    out = work / "demo" / "report.md"
    out.write_text("\n".join(sections))
    console.print(f"report written to {out}")
    return out
