"""A lean inference forward for BERT encoders (MiniLM), numerically the HF ``BertModel``'s.

Why not just call ``BertModel``: on this CPU its forward reached ~0.75-0.8 of the fp32 matmul
rate on unpadded batches (torch.profiler, one thread). The gap was not the matmuls themselves
but everything around them: ``addmm`` copies the bias into a freshly allocated output before the
GEMM (first-touch page faults on MBs of new memory per layer), GELU and the residual adds are
separate passes over the activations, Q, K and V are three GEMMs instead of one, the unused
pooler runs, and MKL's sgemm is ~10 % slower than oneDNN's on this AMD core. Here:

* Q, K and V are one GEMM over the concatenated weights (one bigger N, one pass over x);
* every linear is oneDNN's ``_linear_pointwise`` on weights packed once into oneDNN's blocked
  layout, with the bias, the GELU (erf, exact like ``hidden_act="gelu"``) or the residual add
  fused into the GEMM as a post-op;
* attention is ``scaled_dot_product_attention`` straight on strided views of the fused QKV output
  (bf16: two batched matmuls around an in-place exp, see ``_attention``), with no mask at all
  when the batch has no padding (the encoder batches by exact token length);
* no pooler, no dropout modules, no output dicts.

The result matches ``BertModel(...).last_hidden_state`` to ~1e-5 (fp32); where the oneDNN ops are
missing (a torch build without mkldnn) it falls back to plain ``torch.nn.functional.linear``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


PACK_ROWS = 2048  # the GEMM M oneDNN's weight layout is chosen for (any M works): ~ a batch
EXP_SAFE_SCORE = 60.0  # exp(60) ~ 1e26: a row of <= 512 such terms stays far from bf16/fp32 overflow


def _onednn_linear_ok(dtype: torch.dtype) -> bool:
    """True when oneDNN's fused linear and weight packing exist here and agree with F.linear."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 16, generator=g).to(dtype)
        dense = torch.randn(12, 16, generator=g).to(dtype)
        w = torch.ops.mkldnn._reorder_linear_weight(dense, PACK_ROWS)
        b = torch.randn(12, generator=g).to(dtype)
        r = torch.randn(8, 12, generator=g).to(dtype)
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        ref = F.linear(x, dense, b)
        ok = torch.allclose(op(x, w, b, "none", [None], ""), ref, atol=tol, rtol=tol)
        ok &= torch.allclose(op(x, w, b, "gelu", [None], "none"), F.gelu(ref), atol=tol, rtol=tol)
        ok &= torch.allclose(op.binary(x, r, w, b, "add"), ref + r, atol=tol, rtol=tol)
        return bool(ok)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@dataclass
class _Layer:
    wqkv: torch.Tensor
    bqkv: torch.Tensor
    wo: torch.Tensor
    bo: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor


class FusedBert:
    """Inference-only forward over the weights of a HF ``BertModel`` (absolute positions, GELU).

    Built from a ``BertModel`` state dict and its ``config.json`` fields, so a caller can read the
    weights straight from the safetensors file without constructing the HF module (importing
    transformers' BERT code is ~2 s of every fresh process); :meth:`from_module` takes a module.
    Holds its own (dtype-converted, contiguous) copies of the weights. Call with token ids
    ``(B, T)`` and an optional 0/1 mask ``(B, T)``.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                 dtype: torch.dtype = torch.float32) -> None:
        if config.get("position_embedding_type", "absolute") != "absolute" or config.get("hidden_act") != "gelu":
            raise ValueError("FusedBert supports absolute positions and exact GELU only")
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.head_dim = self.hidden // self.heads
        self.eps = float(config["layer_norm_eps"])
        self.dtype = dtype
        self.onednn = _onednn_linear_ok(dtype)
        self.prescaled = dtype != torch.float32  # bf16 attention = explicit matmuls (see _attention)
        # every float weight in the model dtype first, exactly as ``module.to(dtype)`` would
        # (the fp32 products below then round once more, as they always have)
        w = {k: t.detach().to(dtype) if t.is_floating_point() else t for k, t in weights.items()}

        def c(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype).contiguous()

        def weight(t: torch.Tensor) -> torch.Tensor:
            """oneDNN's own blocked layout, packed once (~4 % faster GEMMs than repacking per call)."""
            self.n_linear_weights += t.numel()
            return torch.ops.mkldnn._reorder_linear_weight(c(t), PACK_ROWS) if self.onednn else c(t)

        self.n_linear_weights = 0

        self.word = c(w["embeddings.word_embeddings.weight"])
        # token type is always 0 for a single text: fold its vector into the position table
        self.pos_type = c(w["embeddings.position_embeddings.weight"].float() + w["embeddings.token_type_embeddings.weight"][0].float())
        self.emb_ln = (c(w["embeddings.LayerNorm.weight"]), c(w["embeddings.LayerNorm.bias"]))
        self.layers: list[_Layer] = []
        qs = self.head_dim**-0.5 if self.prescaled else 1.0
        for i in range(int(config["num_hidden_layers"])):
            pre = f"encoder.layer.{i}."
            p = {k.removeprefix(pre): t for k, t in w.items() if k.startswith(pre)}
            att, q, k, v = "attention.output.", "attention.self.query.", "attention.self.key.", "attention.self.value."
            self.layers.append(_Layer(
                wqkv=weight(torch.cat([p[q + "weight"].float() * qs, p[k + "weight"].float(), p[v + "weight"].float()])),
                bqkv=c(torch.cat([p[q + "bias"].float() * qs, p[k + "bias"].float(), p[v + "bias"].float()])),
                wo=weight(p[att + "dense.weight"]), bo=c(p[att + "dense.bias"]),
                ln1_w=c(p[att + "LayerNorm.weight"]), ln1_b=c(p[att + "LayerNorm.bias"]),
                w1=weight(p["intermediate.dense.weight"]), b1=c(p["intermediate.dense.bias"]),
                w2=weight(p["output.dense.weight"]), b2=c(p["output.dense.bias"]),
                ln2_w=c(p["output.LayerNorm.weight"]), ln2_b=c(p["output.LayerNorm.bias"]),
            ))

    @classmethod
    def from_module(cls, model: Any, dtype: torch.dtype = torch.float32) -> FusedBert:
        """The fused forward of a loaded HF ``BertModel``."""
        return cls(model.state_dict(), model.config.to_dict(), dtype)

    # the three fused GEMM shapes (oneDNN post-ops, or the plain equivalent)
    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [None], "")
        return F.linear(x, w, b)

    def _linear_gelu(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [None], "none")
        return F.gelu(F.linear(x, w, b))

    def _linear_add(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, b, "add")
        return torch.addmm(b, x, w.t()).add_(residual)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(QK^T / sqrt(d)) V per head, ``(B, heads, T, head_dim)``.

        fp32: SDPA's flash kernel. bf16: SDPA runs no faster than in fp32 on these short
        sequences, so it is two bf16 batched matmuls with the 1/sqrt(d) folded into Q's weights,
        and no softmax kernel: torch's bf16 softmax over rows of a few dozen scores ran at up to
        9 ns per score (half the attention time). Instead E = exp(S) in place, and one matmul of
        E with [V | 1] gives the numerators and, in the extra column, the row sums; dividing
        them is the softmax, normalised after the product. Skipping the row-max shift is exact
        math and safe while no score can overflow exp (checked: max score <= 60) and no row
        underflows (checked: row sums > 1e-30); otherwise the batch takes the shifted softmax.
        """
        if not self.prescaled:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        B, H, T, d = q.shape  # Q is pre-scaled by 1/sqrt(d) (folded into its weights)

        def masked_scores() -> torch.Tensor:
            scores = torch.bmm(q.reshape(B * H, T, d), k.reshape(B * H, T, d).transpose(1, 2))
            if mask is not None:
                scores.view(B, H, T, T).masked_fill_(~mask, float("-inf"))
            return scores

        scores, v = masked_scores(), v.reshape(B * H, T, d)
        if float(scores.max()) <= EXP_SAFE_SCORE:
            out = torch.bmm(scores.exp_(), torch.cat([v, v.new_ones(B * H, T, 1)], dim=2))
            sums = out[..., d:]
            if float(sums.min()) > 1e-30:
                return (out[..., :d] / sums).view(B, H, T, d)
            scores = masked_scores()  # the exp above was in place
        return torch.bmm(scores.softmax(-1), v).view(B, H, T, d)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states ``(B, T, hidden)`` in the model dtype (padding rows are garbage)."""
        B, T = input_ids.shape
        h, M = self.hidden, B * T
        x = F.embedding(input_ids, self.word)
        x += self.pos_type[:T]
        x = F.layer_norm(x, (h,), *self.emb_ln, self.eps).view(M, h)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for p in self.layers:
            qkv = self._linear(x, p.wqkv, p.bqkv).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            ctx = self._attention(qkv[0], qkv[1], qkv[2], mask).transpose(1, 2).reshape(M, h)
            x = F.layer_norm(self._linear_add(ctx, p.wo, p.bo, x), (h,), p.ln1_w, p.ln1_b, self.eps)
            inner = self._linear_gelu(x, p.w1, p.b1)
            x = F.layer_norm(self._linear_add(inner, p.w2, p.b2, x), (h,), p.ln2_w, p.ln2_b, self.eps)
        return x.view(B, T, h)

    def linear_weights_per_token(self) -> int:
        """Weights of the per-token linear maps (QKV, output, FFN) over all layers: the matmul
        FLOPs per token are twice this (the pooler is not run, so it is not counted)."""
        return self.n_linear_weights
