"""Batch entry point: `python jobs/adapt.py --input WORK_DIR --output OUT_DIR [options]`.

A thin main over the same function `crossrec adapt` calls (Airflow runs this file nightly).
"""

from __future__ import annotations

from crossrec.cli import app

if __name__ == "__main__":
    import sys

    app(["adapt", *sys.argv[1:]])
