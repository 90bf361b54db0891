"""Embed item texts (Spark + transformers), incrementally.

    python jobs/embed_items.py --input var/clean/items --output var/embeddings --encoder minilm

Thin main over :func:`crossrec.embedding.cli_run.run_embed` (the same code as `crossrec embed`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--encoder", choices=["minilm", "smollm2"], default=None)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default="fp32")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--batch-size", type=int, default=None, help="cap on texts per forward batch")
    parser.add_argument("--rows-per-partition", type=int, default=4096, help="items per Spark task")
    parser.add_argument("--local-max-items", type=int, default=None,
                        help="largest delta embedded in the driver (default 2000; 0 = always on Spark)")
    args = parser.parse_args(argv)

    from crossrec.embedding.cli_run import run_embed

    stats = run_embed(
        input=args.input, output=args.output, encoder=args.encoder, dtype=args.dtype, full=args.full,
        batch_size=args.batch_size, rows_per_partition=args.rows_per_partition,
        local_max_items=args.local_max_items,
    )
    return 0 if stats is not None else 1


if __name__ == "__main__":
    sys.exit(main())
