"""The cross-domain model: f_i = MoE adaptor over frozen text embeddings, f_u = causal encoder.

Score (design.md section 4): R_ui = sigma(W . (f_u * f_i) + b). Both f_u and f_i are L2-normalised
and W is divided by a fixed temperature, so the logit is an inner product of (f_u * W) with f_i:
top-K stays a single matmul / inner-product search, and sigma does not change the ranking.

Why this adaptor: frozen sentence embeddings of different domains live in different regions
(anisotropy); UniSRec's parametric whitening (x - b_k) W_k per expert, mixed by a softmax gate,
re-centres and rotates them into a space shared across domains, and it is the only item-side part
that needs training. Items with text but no interactions get f_i from text alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

BOS_DOMAIN = 2  # token-domain id of the beginning-of-sequence token (0 = source, 1 = target)


@dataclass
class ModelConfig:
    in_dim: int = 384
    dim: int = 64
    n_experts: int = 4
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    adaptor_dropout: float = 0.2
    temperature: float = 0.07
    encoder: str = "gru"  # "gru" (cheapest on 2 CPU cores) or "transformer" (SASRec-style causal)
    residual: bool = True  # GRU output + its input (the most recent item): see GRUEncoder
    item_tower: str = "text+id"  # "text" (adaptor over frozen embeddings), "text+id" (plus learned ID offsets) or "id" (SASRec baseline)
    n_items: int = 0  # only for the id tower

    def to_dict(self) -> dict:
        return asdict(self)


class MoEAdaptor(nn.Module):
    """Parametric whitening experts mixed by a gate (UniSRec): sum_k g_k(x) (x - b_k) W_k."""

    def __init__(self, in_dim: int, out_dim: int, n_experts: int, dropout: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_experts, in_dim))
        self.weight = nn.Parameter(torch.randn(n_experts, in_dim, out_dim) * 0.02)
        self.gate = nn.Linear(in_dim, n_experts, bias=False)
        nn.init.zeros_(self.gate.weight)
        self.drop = nn.Dropout(dropout)

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, noise: float = 0.01) -> None:
        """Start every expert at the data's PCA whitening: b_k = mean, W_k = U_d / sqrt(lambda_d).

        Why: frozen sentence embeddings are anisotropic (all items share a large common direction),
        so a random projection + L2 norm makes every item look alike and training crawls. Starting
        from whitening spreads the items out at step 0; the experts then adapt from there.
        """
        mu = x.mean(0)
        xc = x - mu
        cov = xc.T @ xc / max(1, x.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)
        k = self.weight.shape[2]
        top = torch.argsort(evals, descending=True)[:k]
        w0 = evecs[:, top] / torch.sqrt(evals[top].clamp(min=1e-6))
        w0 = w0 / w0.norm(dim=0, keepdim=True).mean()  # keep the scale comparable to the random init
        self.bias.copy_(mu.expand_as(self.bias))
        self.weight.copy_(w0.expand_as(self.weight) + noise * torch.randn_like(self.weight) * w0.std())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # dropout on the 64-d output, not the 384-d input: same regularising role, ~6x cheaper
        # when the adaptor runs over thousands of catalogue items per step
        # (x - b_k) W_k = x W_k - b_k W_k, computed for all experts in one einsum
        proj = torch.einsum("nd,kde->nke", x, self.weight) - torch.einsum("kd,kde->ke", self.bias, self.weight)
        g = torch.softmax(self.gate(x), dim=-1).unsqueeze(-1)
        return self.drop((g * proj).sum(dim=1))


class TextItemTower(nn.Module):
    """f_i from the frozen embedding table (a non-persistent buffer: artifacts don't carry it)."""

    def __init__(self, cfg: ModelConfig, embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        emb = embeddings if embeddings is not None else torch.zeros(0, cfg.in_dim)
        self.register_buffer("emb", emb.float(), persistent=False)
        self.adaptor = MoEAdaptor(cfg.in_dim, cfg.dim, cfg.n_experts, cfg.adaptor_dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.adaptor(self.emb[idx])

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.adaptor(x)


class HybridItemTower(TextItemTower):
    """Text adaptor + a zero-initialised ID embedding (UniSRec's transductive setting).

    Items seen in training get a learned correction on top of their text vector; a new item keeps
    a zero ID part, so it is still scored from its text alone (``encode_raw``).
    """

    def __init__(self, cfg: ModelConfig, embeddings: torch.Tensor | None = None) -> None:
        super().__init__(cfg, embeddings)
        self.ids = nn.Embedding(max(cfg.n_items, 1), cfg.dim)
        nn.init.zeros_(self.ids.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.adaptor(self.emb[idx]) + self.ids(idx)


class IdItemTower(nn.Module):
    """Free item-ID embeddings: the SASRec-style baseline (cannot score items it never saw)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.table = nn.Embedding(cfg.n_items, cfg.dim, padding_idx=0)
        nn.init.normal_(self.table.weight, std=0.02)
        self.adaptor = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


class SeqEncoder(nn.Module):
    """Small causal transformer (pre-LN) over [BOS, f_i of history items] + domain + position.

    The position table starts at the scale of the other small parameters (std 0.02), not at
    ``nn.Embedding``'s N(0, 1): the item vectors it is added to are unit length, and a position
    vector of norm ~sqrt(dim) drowned them, so at the start every history of a given length had
    nearly the same state. Measured on Art -> Office (seed 42, SASRec over IDs, validation
    NDCG@10): .026 with N(0, 1) positions, .060 with this start.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.dom = nn.Embedding(3, cfg.dim)
        nn.init.zeros_(self.dom.weight)  # an unseen domain starts neutral (zero-shot)
        self.bos = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.n_heads, cfg.dim * 2, cfg.dropout, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tok_vecs: torch.Tensor, tok_dom: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B, L, _ = tok_vecs.shape
        x = tok_vecs.clone()
        x[:, 0] = self.bos
        x = x + self.dom(tok_dom) + self.pos(torch.arange(L, device=x.device))[None]
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=1)
        pad = torch.arange(L, device=x.device)[None, :] >= lengths[:, None]
        h = self.layers(self.drop(x), mask=causal, src_key_padding_mask=pad, is_causal=True)
        return self.norm(h)


class GRUEncoder(nn.Module):
    """Causal by construction: a GRU over [BOS, f_i + domain embedding]; ~4x cheaper than attention on CPU.

    With ``residual`` the state at each position is LayerNorm(GRU output + that position's input,
    i.e. the most recent item), as a transformer's residual stream would carry it. Why: on the
    Amazon data "the next item resembles the last one" is the strongest single signal (ranking by
    the last item's raw text embedding alone reaches NDCG@10 ~0.04); the skip path makes that the
    starting point, so the GRU only learns the correction. Measured on Art-Office (3 seeds, test
    NDCG@10): target-only 0.054 -> 0.064; zero-shot transfer from Art 0.003 -> 0.032.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.residual = cfg.residual
        self.dom = nn.Embedding(3, cfg.dim)
        nn.init.zeros_(self.dom.weight)
        self.bos = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.gru = nn.GRU(cfg.dim, cfg.dim, num_layers=1, batch_first=True)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tok_vecs: torch.Tensor, tok_dom: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = tok_vecs.clone()
        x[:, 0] = self.bos
        x = x + self.dom(tok_dom)
        h, _ = self.gru(self.drop(x))  # right padding never leaks backwards into earlier positions
        return self.norm(h + x if self.residual else h)


def make_encoder(cfg: ModelConfig) -> nn.Module:
    if cfg.encoder == "gru":
        return GRUEncoder(cfg)
    if cfg.encoder == "transformer":
        return SeqEncoder(cfg)
    raise ValueError(f"unknown sequence encoder {cfg.encoder!r} (gru | transformer)")


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.lam * grad, None


class DomainDiscriminator(nn.Module):
    """Predicts an item's domain from f_i; trained through gradient reversal so f_i aligns."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, v: torch.Tensor, lam: float) -> torch.Tensor:
        return self.net(GradReverse.apply(v, lam)).squeeze(-1)


class CrossDomainModel(nn.Module):
    def __init__(self, cfg: ModelConfig, embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        towers = {"text": TextItemTower, "text+id": HybridItemTower}
        if cfg.item_tower not in (*towers, "id"):
            raise ValueError(f"unknown item tower {cfg.item_tower!r} (text | text+id | id)")
        self.items = towers[cfg.item_tower](cfg, embeddings) if cfg.item_tower in towers else IdItemTower(cfg)
        self.encoder = make_encoder(cfg)
        self.w = nn.Parameter(torch.ones(cfg.dim))
        self.b = nn.Parameter(torch.zeros(1))

    def item_vecs(self, idx: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.items(idx), dim=-1)

    def raw_item_vecs(self, x: torch.Tensor) -> torch.Tensor:
        """f_i for an embedding that is not in the table (a brand-new item)."""
        if not isinstance(self.items, TextItemTower):
            raise TypeError("an ID model cannot represent an item from its text")
        return F.normalize(self.items.encode_raw(x), dim=-1)

    def user_states(self, tok_vecs: torch.Tensor, tok_dom: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(tok_vecs, tok_dom, lengths), dim=-1)

    def query(self, h: torch.Tensor) -> torch.Tensor:
        """f_u * W / temperature: the left side of the inner product."""
        return h * self.w / self.cfg.temperature

    def logits(self, h: torch.Tensor, item_vecs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(users, items) logits; ``out`` (inference only) receives them without a fresh allocation
        (the same values: the product, then the bias added in place)."""
        if out is None:
            return self.query(h) @ item_vecs.T + self.b
        torch.mm(self.query(h), item_vecs.T, out=out)
        return out.add_(self.b)

    def adaptor_parameters(self) -> list[nn.Parameter]:
        """What 'fine-tune only the adaptor' trains: the MoE adaptor plus the scorer (W, b)."""
        params = [self.w, self.b]
        if getattr(self.items, "adaptor", None) is not None:
            params += list(self.items.adaptor.parameters())
        return params
