"""Entry point of the replay producer (same as `crossrec replay --input FILE ...`)."""

import sys

from crossrec.cli import app

if __name__ == "__main__":
    app(["replay", *sys.argv[1:]])
