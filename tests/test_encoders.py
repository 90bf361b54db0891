"""Text encoders with the real model weights (MiniLM from its package, SmolLM2 from its GGUF)."""

from __future__ import annotations

import numpy as np
import pytest

from crossrec.encoders import encoder_version, get_encoder

TEXTS = [
    "acrylic paint set 24 colors | arts crafts sewing painting",
    "watercolor paint tubes | arts crafts sewing painting",
    "heavy duty stapler 40 sheets | office products stapling",
    "ballpoint pens blue 12 pack | office products writing",
    "",  # an empty text must still give a finite unit vector
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def minilm(cache_dir):
    return get_encoder("minilm", cache_dir=cache_dir, threads=2)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_shape_norm_and_dtype(minilm):
    vecs = minilm.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 384) and minilm.dim == 384
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_minilm_deterministic_and_batching_invariant(minilm):
    together = minilm.encode(TEXTS, batch_size=2)
    # one at a time: no padding at all, so this also checks that padding is masked out of the mean
    alone = np.stack([minilm.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_array_equal(minilm.encode(TEXTS, batch_size=2), together)


def test_minilm_semantics(minilm):
    v = minilm.encode(TEXTS[:4])
    # two paints are closer to each other than a paint to a stapler
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) + 0.1
    assert _cos(v[2], v[3]) > _cos(v[2], v[0])


def test_minilm_tokenizes_and_encodes_like_the_hf_pipeline(minilm):
    """The transformers-free load gives HF's token ids (special tokens, lower-casing, accents,
    truncation at 256) and the sentence-transformers vector: HF tokenizer, ``BertModel``, mean
    pooling over the mask, L2 normalisation."""
    import torch
    from transformers import AutoTokenizer

    from crossrec.encoders.minilm import minilm_dir

    texts = [*TEXTS, "Crème brûlée TORCH &amp; naïve café", "word " * 400, "日本語 テキスト"]
    hf = AutoTokenizer.from_pretrained(minilm_dir())
    ids = hf([t if t else " " for t in texts], truncation=True, max_length=256,
             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    assert minilm.tokenize(texts) == ids
    assert max(len(x) for x in ids) == 256  # the long text really was truncated
    batch = hf([t if t else " " for t in texts], truncation=True, max_length=256, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = minilm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1).numpy()
    np.testing.assert_allclose(minilm.encode(texts), ref, atol=2e-5)


def test_minilm_encodes_without_importing_transformers(cache_dir):
    """A fresh process (a nightly task, a Spark worker) encodes with MiniLM and never imports
    transformers: that import and the HF module cost ~3.5 s of every such process."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from crossrec.encoders import get_encoder\n"
        f"enc = get_encoder('minilm', cache_dir={str(cache_dir)!r})\n"
        "assert enc.encode(['a stapler', '']).shape == (2, 384)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_registry_caches_and_validates(minilm, cache_dir):
    assert get_encoder("minilm", cache_dir=cache_dir) is minilm
    with pytest.raises(ValueError, match="unknown encoder"):
        get_encoder("word2vec", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="dtype"):
        get_encoder("minilm", dtype="fp16", cache_dir=cache_dir)  # type: ignore[arg-type]
    assert encoder_version("minilm", "fp32", cache_dir) == minilm.version


def test_bf16_is_a_different_version_close_to_fp32(minilm, cache_dir):
    bf16 = get_encoder("minilm", dtype="bf16", cache_dir=cache_dir, threads=2)
    assert bf16.version != minilm.version and bf16.version.endswith("bf16")
    a, b = minilm.encode(TEXTS[:4]), bf16.encode(TEXTS[:4])
    cos = (a * b).sum(axis=1)
    assert cos.min() > 0.98
    assert not np.array_equal(a, b)  # really a different numeric path


@pytest.fixture(scope="module")
def smollm2(cache_dir):
    return get_encoder("smollm2", cache_dir=cache_dir, threads=2)


def test_smollm2_converted_once_and_cached(smollm2, cache_dir):
    from crossrec.encoders.smollm2 import CENTRE_FILE, META_FILE, ensure_converted

    model_dir = cache_dir / "smollm2"
    assert (model_dir / META_FILE).is_file() and (model_dir / CENTRE_FILE).is_file()
    stamp = (model_dir / META_FILE).stat().st_mtime_ns
    ensure_converted(cache_dir)  # second call must reuse, not convert again
    assert (model_dir / META_FILE).stat().st_mtime_ns == stamp
    assert smollm2.version.startswith("smollm2/") and smollm2.version == encoder_version("smollm2", "fp32", cache_dir)


def test_smollm2_dims_norm_determinism(smollm2):
    vecs = smollm2.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 576) and smollm2.dim == 576
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(smollm2.encode(TEXTS), vecs, atol=1e-6)
    alone = np.stack([smollm2.encode([t])[0] for t in TEXTS[2:4]])  # unpadded: padding is masked
    np.testing.assert_allclose(vecs[2:4], alone, atol=1e-4)


def test_smollm2_centring(smollm2):
    from crossrec.encoders.smollm2 import reference_corpus

    raw_ref = smollm2.encode_raw(reference_corpus()[::8])  # every 8th: 32 texts, keeps the test quick
    assert smollm2.centre is not None and smollm2.centre.shape == (576,)
    # the centre removes the shared direction: raw cosines of unrelated texts are near 1,
    # centred ones are not, and related texts stay closer than unrelated ones
    raw = smollm2.encode_raw(TEXTS[:4])
    raw_cos = _cos(raw[0], raw[2])
    v = smollm2.encode(TEXTS[:4])
    assert raw_cos > 0.8
    assert _cos(v[0], v[2]) < raw_cos - 0.2
    assert _cos(v[0], v[1]) > _cos(v[0], v[2])
    # the centre is the reference corpus mean: a sample of that corpus, centred, averages to
    # a small vector compared with the vectors themselves (uncentred it would not)
    centred = raw_ref - smollm2.centre
    assert np.linalg.norm(centred.mean(axis=0)) < 0.3 * np.linalg.norm(centred, axis=1).mean()
    assert np.linalg.norm(raw_ref.mean(axis=0)) > 0.8 * np.linalg.norm(raw_ref, axis=1).mean()


def test_fused_forward_matches_the_hf_module(minilm):
    """MiniLM's fused oneDNN forward gives BertModel's hidden states, with and without padding."""
    import torch

    ids = minilm.tokenize(TEXTS[:4])
    longest = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [0] * (longest - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in ids])
    with torch.inference_mode():
        ref = minilm.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        got = minilm._hidden(input_ids, mask)
        np.testing.assert_allclose((got * mask[..., None]).numpy(), (ref * mask[..., None]).numpy(), atol=2e-5)
        same_len = torch.tensor([ids[0], ids[0][::-1]])  # no padding: the mask-free path
        np.testing.assert_allclose(minilm._hidden(same_len, None).numpy(),
                                   minilm.model(input_ids=same_len).last_hidden_state.numpy(), atol=2e-5)


def test_bf16_padding_is_masked(cache_dir):
    bf16 = get_encoder("minilm", dtype="bf16", cache_dir=cache_dir, threads=2)
    together = bf16.encode(TEXTS[:4], batch_size=4)
    alone = np.stack([bf16.encode([t])[0] for t in TEXTS[:4]])
    assert (together * alone).sum(axis=1).min() > 0.999


@pytest.mark.parametrize("case", ["normal", "masked", "overflow", "underflow"])
def test_bf16_attention_is_softmax_attention(minilm, case):
    """The bf16 attention (exp in place, row sums from a ones column) equals softmax attention,
    including the inputs where skipping the max shift would overflow or underflow exp."""
    import torch

    from crossrec.encoders.fused_bert import FusedBert

    fused = FusedBert.from_module(minilm.model, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    B, H, T, d = 3, 2, 7, 8
    q, k, v = (torch.randn(B, H, T, d, generator=g) for _ in range(3))
    mask = None
    if case == "masked":
        mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
        mask[0, ..., 4:] = False  # the first text has 4 real tokens
    elif case == "overflow":
        q = q * 40  # scores in the hundreds: exp(score) is inf in bf16 and fp32
    elif case == "underflow":
        k[:] = 1.0  # every score of a row is q.sum(): make the first text's all about -200
        q[0] = -200.0 / d
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    # the reference: softmax in fp32 over the same bf16 scores (Q is pre-scaled in the bf16 path)
    scores = (q16 @ k16.transpose(-1, -2)).float()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    ref = scores.softmax(-1) @ v16.float()
    got = fused._attention(q16, k16, v16, mask)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), ref, atol=3e-2, rtol=3e-2)


def test_batches_cover_every_text_once_with_little_padding(minilm):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(8, 60, 3000), [120, 131, 200, 256]])  # a long, sparse tail
    batches = minilm.batches(lengths)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded / lengths.sum() - 1 < 0.01
    for b in batches:
        assert len(b) * lengths[b].max() <= max(minilm.batch_tokens, lengths[b].max())
        if len(set(lengths[b])) > 1:  # only rare lengths are merged, and only with little padding
            assert (lengths[b].max() * len(b) - lengths[b].sum()) <= minilm.max_pad_share * lengths[b].max() * len(b)
    assert all(len(b) <= 16 for b in minilm.batches(lengths, batch_size=16))


def test_useful_flops_formula(minilm):
    """2 t P for the linear maps + 4 t^2 h L for QK^T and AV, no pooler, no padding."""
    h, inner, layers = 384, 1536, 6
    per_layer = 3 * h * h + h * h + 2 * h * inner
    assert minilm.linear_weights == layers * per_layer
    t = np.array([10, 32])
    expected = sum(2 * x * layers * per_layer + 4 * x * x * h * layers for x in t)
    assert minilm.useful_flops(t) == pytest.approx(expected)
