"""Which numeric precision the encoder runs in: ``--dtype auto`` and the bf16 warning.

Why a probe: bf16 was 1.9x faster than fp32 on a CPU with native bf16 instructions and 0.15x
(nearly seven times slower) on an AVX2-only CPU, where torch emulates it. So ``auto`` times both
precisions on a short sample of real texts, in this process, and picks bf16 only where it is
faster *and* its vectors stay within the agreed mean cosine (>= 0.995) of the fp32 ones. The
result is cached per (encoder, CPU model, torch version) in the model cache, so a nightly run pays
the probe once per machine, not every night. An explicit bf16 on a CPU without native bf16 is
honoured but warned about loudly.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("crossrec.precision")

MIN_COSINE = 0.995  # the agreed mean cosine of bf16 vectors to fp32 ones
MIN_SPEEDUP = 1.05  # bf16 must be clearly faster, not equal within noise
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PROBE_TEXTS = [
    f"{thing} {detail} | {category} supplies brand {k % 7}"
    for k, (thing, detail, category) in enumerate(
        (t, d, c)
        for t in ("acrylic paint set", "stapler", "canvas panel", "gel pen", "yarn bundle", "file folder", "tape dispenser", "sketchbook")
        for d in ("24 colours, non-toxic", "heavy duty, 20 sheets", "pack of 12", "refillable, black ink")
        for c in ("art", "office")
    )
]


@dataclass
class DtypeChoice:
    dtype: str  # what runs: fp32 | bf16
    requested: str  # what was asked: fp32 | bf16 | auto
    reason: str
    native_bf16: bool
    fp32_s: float | None = None
    bf16_s: float | None = None
    cosine_mean: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.fp32_s and self.bf16_s:
            return self.fp32_s / self.bf16_s
        return None

    def to_dict(self) -> dict:
        return asdict(self) | {"speedup": self.speedup}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def decide(fp32_s: float, bf16_s: float, cosine_mean: float, native_bf16: bool,
           min_cosine: float = MIN_COSINE, min_speedup: float = MIN_SPEEDUP) -> DtypeChoice:
    """Pure decision from the probe's numbers."""
    speedup = fp32_s / bf16_s if bf16_s > 0 else 0.0
    if cosine_mean < min_cosine:
        why = f"bf16 vectors drift from fp32 (mean cosine {cosine_mean:.4f} < {min_cosine})"
        return DtypeChoice("fp32", "auto", why, native_bf16, fp32_s, bf16_s, cosine_mean)
    if speedup < min_speedup:
        why = f"bf16 is not faster here ({speedup:.2f}x fp32; needs >= {min_speedup:.2f}x)"
        return DtypeChoice("fp32", "auto", why, native_bf16, fp32_s, bf16_s, cosine_mean)
    why = f"bf16 is {speedup:.2f}x faster than fp32 at mean cosine {cosine_mean:.4f}"
    return DtypeChoice("bf16", "auto", why, native_bf16, fp32_s, bf16_s, cosine_mean)


def _timed_encode(enc, texts: list[str], repeats: int = 2) -> tuple[float, np.ndarray]:
    enc.encode(texts[:8])  # warm-up: first-call allocations and oneDNN primitive creation
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = enc.encode(texts)
        best = min(best, time.perf_counter() - t0)
    return best, out  # type: ignore[return-value]


def probe(encoder: str, cache_dir: Path, threads: int = 1) -> DtypeChoice:
    """Time fp32 and bf16 on PROBE_TEXTS with ``threads`` torch threads (one = a Spark worker)."""
    from crossrec.encoders.registry import get_encoder

    fp32 = get_encoder(encoder, "fp32", threads=threads, cache_dir=cache_dir)
    bf16 = get_encoder(encoder, "bf16", threads=threads, cache_dir=cache_dir)
    texts = list(PROBE_TEXTS)
    t_fp32, v_fp32 = _timed_encode(fp32, texts)
    t_bf16, v_bf16 = _timed_encode(bf16, texts)
    t_fp32 = min(t_fp32, _timed_encode(fp32, texts, repeats=1)[0])  # interleaved: load drifts
    cos = float(np.mean(np.sum(v_fp32 * v_bf16, axis=1)))  # both L2-normalised
    return decide(t_fp32, t_bf16, cos, has_native_bf16())


def _cache_key(encoder: str) -> str:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")), platform.machine())
    return f"{encoder}|{model}|{sorted(cpu_flags() & set(NATIVE_BF16_FLAGS))}|torch {torch.__version__}"


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def resolve_dtype(requested: str, encoder: str, cache_dir: Path, warn=None) -> DtypeChoice:
    """The dtype to run for ``requested`` (fp32 | bf16 | auto). ``warn(text)`` shows the bf16 warning."""
    native = has_native_bf16()
    if requested == "fp32":
        return DtypeChoice("fp32", "fp32", "requested", native)
    if requested == "bf16":
        if not native:
            text = ("bf16 requested on a CPU without native bf16 (no avx512_bf16/amx_bf16): torch emulates it, "
                    "measured ~7x SLOWER than fp32 on such a CPU. Use --dtype auto or fp32.")
            log.warning(text)
            if warn is not None:
                warn(text)
        return DtypeChoice("bf16", "bf16", "requested" + ("" if native else " (no native bf16: slow)"), native)
    if requested != "auto":
        raise ValueError(f"dtype must be fp32, bf16 or auto, got {requested!r}")
    cache_file = Path(cache_dir) / "dtype_probe.json"
    key = _cache_key(encoder)
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        hit = cached[key]
        hit.pop("speedup", None)
        return DtypeChoice(**{**hit, "requested": "auto", "reason": hit["reason"] + " (cached probe)"})
    choice = probe(encoder, Path(cache_dir))
    cached[key] = choice.to_dict()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(cached, indent=2))
    return choice
