"""--dtype auto: the decision from probe numbers, the CPU check, the loud bf16 warning."""

from __future__ import annotations

import pytest

from crossrec.encoders import precision


def test_bf16_only_when_faster_at_the_agreed_cosine() -> None:
    assert precision.decide(fp32_s=1.9, bf16_s=1.0, cosine_mean=0.999, native_bf16=True).dtype == "bf16"
    slow = precision.decide(fp32_s=1.0, bf16_s=6.7, cosine_mean=0.999, native_bf16=False)
    assert slow.dtype == "fp32" and "not faster" in slow.reason  # the AVX2-only case: 0.15x
    drift = precision.decide(fp32_s=2.0, bf16_s=1.0, cosine_mean=0.99, native_bf16=True)
    assert drift.dtype == "fp32" and "cosine" in drift.reason  # fast but not accurate enough
    assert precision.decide(1.0, 0.99, 0.999, True).dtype == "fp32"  # 1 % is noise, not a speed-up


def test_native_bf16_is_read_from_cpu_flags() -> None:
    assert precision.has_native_bf16({"avx2", "avx512_bf16"})
    assert precision.has_native_bf16({"amx_bf16"})
    assert not precision.has_native_bf16({"avx2", "fma", "avx512f"})


def test_explicit_bf16_without_native_support_warns_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    warnings: list[str] = []
    choice = precision.resolve_dtype("bf16", "minilm", tmp_path, warn=warnings.append)
    assert choice.dtype == "bf16" and len(warnings) == 1 and "SLOWER" in warnings[0]
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    warnings.clear()
    precision.resolve_dtype("bf16", "minilm", tmp_path, warn=warnings.append)
    assert warnings == []


def test_auto_probes_once_and_caches(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    calls = []

    def fake_probe(encoder, cache_dir, threads=1):
        calls.append(encoder)
        return precision.decide(1.0, 2.0, 0.999, False)

    monkeypatch.setattr(precision, "probe", fake_probe)
    first = precision.resolve_dtype("auto", "minilm", tmp_path)
    second = precision.resolve_dtype("auto", "minilm", tmp_path)
    assert first.dtype == second.dtype == "fp32" and calls == ["minilm"]
    assert "cached probe" in second.reason and second.fp32_s == 1.0
    with pytest.raises(ValueError):
        precision.resolve_dtype("fp16", "minilm", tmp_path)


def test_real_probe_on_minilm(tmp_path) -> None:
    """The probe with the real encoder: both dtypes run, the vectors agree, a dtype is chosen."""
    choice = precision.probe("minilm", tmp_path)
    assert choice.dtype in ("fp32", "bf16") and choice.cosine_mean > 0.99
    assert choice.fp32_s > 0 and choice.bf16_s > 0
    assert (choice.dtype == "bf16") == (choice.speedup >= precision.MIN_SPEEDUP and choice.cosine_mean >= precision.MIN_COSINE)
