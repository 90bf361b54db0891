"""Shared terminal output: one rich console so that tables and progress bars look alike."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)
