"""Batch publish job (same as `crossrec publish`): python jobs/publish_recs.py [--input DIR]."""

import sys

from crossrec.cli import app

if __name__ == "__main__":
    app(["publish", *sys.argv[1:]])
