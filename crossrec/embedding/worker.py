"""What runs inside each Spark Python worker: shard paths in, Arrow batches of vectors out.

A task's input row is the path of a parquet shard of texts written by the driver (see
``job._embed_spark``: the texts stay out of the serialised tasks); the worker reads it itself.

Why ``mapInArrow`` and not a pandas UDF: vectors go back as one flat float32 buffer plus offsets
(zero-copy into an Arrow ``ListArray``) instead of a pandas column of numpy arrays, which measured
at half the throughput. The encoder comes from :func:`crossrec.encoders.get_encoder`, which caches
per process: with Spark's Python worker reuse the model is loaded once per worker, not per task.
One torch thread per worker, because Spark already runs one worker per core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from crossrec.encoders.base import TextEncoder

OUTPUT_FIELDS = ("domain", "item_id", "embedding", "text_hash", "encoder", "encoder_version")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build its encoder (pickled into the closure)."""

    encoder: str
    dtype: str
    cache_dir: str
    batch_size: int | None
    version: str


def vectors_to_arrow(vecs: np.ndarray) -> pa.ListArray:
    """(n, dim) float32 -> list<float32> without copying the values."""
    n, dim = vecs.shape
    flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def load_encoder(spec: WorkerSpec, threads: int) -> TextEncoder:
    """The spec's encoder, refused unless it is the version the driver planned with (else the
    content hashes in the output would describe vectors of another encoder)."""
    from crossrec.encoders import get_encoder

    enc = get_encoder(spec.encoder, dtype=spec.dtype, threads=threads, cache_dir=spec.cache_dir)  # type: ignore[arg-type]
    if enc.version != spec.version:
        raise RuntimeError(f"encoder version {enc.version} here != {spec.version} planned by the driver")
    return enc


def embedded_batch(rows: pa.Table, vecs: np.ndarray, spec: WorkerSpec) -> pa.RecordBatch:
    """The output rows (``OUTPUT_FIELDS``) for ``rows`` (domain, item_id, text_hash, ...) and
    their vectors, as the Spark tasks and the driver both write them."""
    n = rows.num_rows
    return pa.RecordBatch.from_arrays(
        [
            rows.column("domain").combine_chunks(),
            rows.column("item_id").combine_chunks(),
            vectors_to_arrow(vecs),
            rows.column("text_hash").combine_chunks(),
            pa.array([spec.encoder] * n, pa.string()),
            pa.array([spec.version] * n, pa.string()),
        ],
        names=list(OUTPUT_FIELDS),
    )


def make_embed_fn(spec: WorkerSpec) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def embed_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        torch.set_num_threads(1)
        enc = load_encoder(spec, threads=1)
        for batch in batches:
            for path in batch.column("path").to_pylist():
                shard = pq.read_table(path)
                if shard.num_rows:
                    yield embedded_batch(shard, enc.encode(shard.column("text").to_pylist(), spec.batch_size), spec)

    return embed_batches
