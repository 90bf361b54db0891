"""Spark clean job: ``python jobs/clean_logs.py --input DIR --output DIR [--near-dup-window-s S] [--kcore K]``.

A thin main over ``crossrec.cleaning`` (the same code ``crossrec clean`` runs); see
``crossrec/cleaning/pipeline.py`` for what it does and ``reasons.py`` for the quarantine reasons.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=None,
                        help="raw-log directory (default: settings.data_dir)")
    parser.add_argument("--output", type=Path, default=None,
                        help="output directory (default: settings.work_dir/clean)")
    parser.add_argument("--near-dup-window-s", type=float, default=None,
                        help="near-duplicate window in seconds (default 60; negative = off)")
    parser.add_argument("--kcore", type=int, default=None,
                        help="per-domain k-core on kept events (default off)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from crossrec.cleaning.job import clean_main

    return clean_main(args.input, args.output, args.near_dup_window_s, args.kcore)


if __name__ == "__main__":
    sys.exit(main())
