"""What the clean job did, as numbers: ``summary.json`` and the table the job prints.

The invariant the job guarantees (and checks) is per source: rows_in = rows_kept + rejected.
``rows_in`` is counted from the labelled input rows, ``rows_kept`` from the output frames and the
rejections from the quarantine frame, so a row lost anywhere in between shows up as imbalance.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

NO_DOMAIN = "(none)"


@dataclass
class SourceCounts:
    """Counts for one source (events or items)."""

    rows_in: int = 0
    rows_kept: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_kept + self.rejected


@dataclass
class DomainCounts:
    events_in: int = 0
    events_kept: int = 0
    items_in: int = 0
    items_kept: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class CleanSummary:
    """Totals, per-source and per-domain counts of one clean run (see module doc)."""

    events: SourceCounts
    items: SourceCounts
    per_domain: dict[str, DomainCounts]
    users: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    near_dup_window_s: float | None = None
    kcore: int | None = None
    elapsed_s: float = 0.0
    inputs: list[str] = field(default_factory=list)
    output_dir: str = ""

    @property
    def rows_in(self) -> int:
        return self.events.rows_in + self.items.rows_in

    @property
    def rows_kept(self) -> int:
        return self.events.rows_kept + self.items.rows_kept

    @property
    def rejected(self) -> int:
        return self.events.rejected + self.items.rejected

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        combined: dict[str, int] = {}
        for source in (self.events, self.items):
            for reason, n in source.rejected_by_reason.items():
                combined[reason] = combined.get(reason, 0) + n
        return dict(sorted(combined.items()))

    @property
    def balanced(self) -> bool:
        return self.events.balanced and self.items.balanced

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data = {
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "rejected": self.rejected,
            "rejected_by_reason": self.rejected_by_reason,
            "balanced": self.balanced,
            **data,
        }
        for source in ("events", "items"):
            counts: SourceCounts = getattr(self, source)
            data[source]["rejected"] = counts.rejected
        return data

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CleanSummary:
        """Read back a ``summary.json`` (derived totals are recomputed, not trusted)."""
        def source(d: dict[str, Any]) -> SourceCounts:
            return SourceCounts(d["rows_in"], d["rows_kept"], dict(d["rejected_by_reason"]))

        return cls(
            events=source(data["events"]),
            items=source(data["items"]),
            per_domain={k: DomainCounts(**v) for k, v in data["per_domain"].items()},
            users=data.get("users", 0),
            splits=data.get("splits", {}),
            near_dup_window_s=data.get("near_dup_window_s"),
            kcore=data.get("kcore"),
            elapsed_s=data.get("elapsed_s", 0.0),
            inputs=data.get("inputs", []),
            output_dir=data.get("output_dir", ""),
        )


def render(summary: CleanSummary, console: Console) -> None:
    """Print the per-domain and per-reason tables and the accounting line."""
    domains = Table(title="crossrec clean: rows per domain", title_justify="left")
    for name in ("domain", "events in", "events kept", "items in", "items kept", "rejected"):
        domains.add_column(name, justify="left" if name == "domain" else "right")
    for name, d in sorted(summary.per_domain.items()):
        domains.add_row(
            name, f"{d.events_in:,}", f"{d.events_kept:,}", f"{d.items_in:,}", f"{d.items_kept:,}",
            f"{sum(d.rejected_by_reason.values()):,}",
        )
    domains.add_row(
        "[bold]total", f"[bold]{summary.events.rows_in:,}", f"[bold]{summary.events.rows_kept:,}",
        f"[bold]{summary.items.rows_in:,}", f"[bold]{summary.items.rows_kept:,}",
        f"[bold]{summary.rejected:,}",
    )
    console.print(domains)
    if summary.rejected:
        reasons = Table(title="rejected rows by reason (see quarantine/)", title_justify="left")
        for name in ("reason", "events", "items"):
            reasons.add_column(name, justify="left" if name == "reason" else "right")
        for reason in summary.rejected_by_reason:
            reasons.add_row(
                reason,
                f"{summary.events.rejected_by_reason.get(reason, 0):,}",
                f"{summary.items.rejected_by_reason.get(reason, 0):,}",
            )
        console.print(reasons)
    mark = "[green]balanced[/]" if summary.balanced else "[red bold]NOT BALANCED: rows lost[/]"
    console.print(
        f"rows_in {summary.rows_in:,} = rows_kept {summary.rows_kept:,} + rejected "
        f"{summary.rejected:,}  {mark}   users {summary.users:,}, splits "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.splits.items()))
        + f"   ({summary.elapsed_s:.1f} s)"
    )
