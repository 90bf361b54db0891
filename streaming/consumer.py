"""Entry point of the consumer service (same as `crossrec stream`), for process managers."""

from crossrec.cli import app

if __name__ == "__main__":
    app(["stream"])
