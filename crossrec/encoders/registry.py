"""Encoders by name, with one loaded instance per (name, dtype, cache dir) per process.

The per-process cache is what makes "model loaded once per Spark worker" true: a reused Python
worker calls :func:`get_encoder` for every Arrow batch and gets the same object back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from crossrec.encoders.base import DTYPES, Dtype, TextEncoder

ENCODER_NAMES = ("minilm", "smollm2")

_CACHE: dict[tuple[str, str, str], TextEncoder] = {}
_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    """``{work_dir}/cache/models`` from the process settings (only read when not given)."""
    from crossrec.settings import get_settings

    return Path(get_settings().work_dir) / "cache" / "models"


def _loaders() -> dict[str, Callable[[Dtype, int | None, Path], TextEncoder]]:
    from crossrec.encoders.minilm import load_minilm
    from crossrec.encoders.smollm2 import load_smollm2

    return {"minilm": load_minilm, "smollm2": load_smollm2}


def encoder_version(name: str, dtype: Dtype = "fp32", cache_dir: str | Path | None = None) -> str:
    """The ``version`` string :func:`get_encoder` would give, without loading the model (for
    the Spark driver, which only needs it to decide what to re-embed)."""
    from crossrec.encoders.minilm import minilm_version
    from crossrec.encoders.smollm2 import smollm2_version

    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODER_NAMES)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return {"minilm": minilm_version, "smollm2": smollm2_version}[name](dtype, cache)


def get_encoder(
    name: str, dtype: Dtype = "fp32", threads: int | None = 1, cache_dir: str | Path | None = None
) -> TextEncoder:
    """The encoder ``name`` (``minilm`` | ``smollm2``), loaded once per process and dtype.

    ``threads`` is how many cores encoding uses: 1 inside Spark workers (the parallelism comes
    from the workers), n > 1 = n forward batches at a time, each on one torch thread (see
    ``TextEncoder.encode_raw``), ``None`` = one batch at a time with torch's own threads. ``cache_dir`` is where
    converted models and derived artefacts (SmolLM2's centre) are kept.
    """
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODER_NAMES)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = (name, dtype, str(cache.resolve()))
    with _LOCK:
        enc = _CACHE.get(key)
        if enc is None:
            enc = _loaders()[name](dtype, threads, cache)
            _CACHE[key] = enc
    enc.threads = threads
    return enc
