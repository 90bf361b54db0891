"""The shared encode loop: tokenize, forward, mean-pool, (centre), L2-normalise.

Why a base class: MiniLM and SmolLM2 differ only in how their weights are found and whether the
pooled vector is centred; batching by length, dtype handling and normalisation must be identical
so that throughput and cosine comparisons between encoders (and between fp32 and bf16) are fair.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

DTYPES = ("fp32", "bf16")
Dtype = Literal["fp32", "bf16"]


def offline_env() -> None:
    """No model hub here: make transformers fail fast instead of trying the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def file_digest(path: Path) -> str:
    """sha256 of a weights file (part of the encoder version, so new weights re-embed everything).

    Memoised on (path, size, mtime): the driver and each worker ask for it per run.
    """
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class TextEncoder:
    """A loaded transformer plus tokenizer that maps texts to L2-normalised float32 vectors.

    Subclasses set ``name``, ``dim``, ``version`` and load ``model``/``tokenizer``. ``version``
    changes whenever the weights, the pooling or the numeric dtype change: the embedding job puts
    it in the content hash, so a changed encoder re-embeds the whole catalogue.
    """

    name: str
    dim: int
    version: str
    max_length: int = 256

    def __init__(self, model: torch.nn.Module, tokenizer, dtype: Dtype = "fp32", threads: int | None = 1) -> None:
        import torch

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.dtype = dtype
        self.threads = threads
        self._set_threads()
        self.tokenizer = tokenizer
        self.model = model.eval()
        if dtype == "bf16":
            self.model = self.model.to(torch.bfloat16)
        self.centre: np.ndarray | None = None

    def _set_threads(self) -> None:
        import torch

        if self.threads is not None and self.threads > 0 and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _pool(self, texts: list[str]) -> np.ndarray:
        """Mean of the last hidden states over real (non-padding) tokens, as float32."""
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            hidden = out.last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled.numpy()

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text after truncation (the fast tokenizer makes this cheap next to the model)."""
        ids = self.tokenizer([t if t else " " for t in texts], truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]

    def encode_raw(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Mean-pooled vectors before centring/normalisation (used to compute the centre)."""
        self._set_threads()
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # Sort by token count so each batch pads to similar lengths (character length left ~25 %
        # of the FLOPs on padding); the same in the Spark job and the plain loop.
        order = np.argsort(self.token_lengths(texts), kind="stable")
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._pool([texts[i] if texts[i] else " " for i in idx])
        return out

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> (n, dim) float32, centred when the encoder has a centre, L2-normalised."""
        vecs = self.encode_raw(list(texts), batch_size)
        if self.centre is not None:
            vecs -= self.centre
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs /= np.maximum(norms, 1e-12)
        return vecs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, dtype={self.dtype!r}, version={self.version!r})"
