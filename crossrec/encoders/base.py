"""The shared encode loop: tokenize, forward, mean-pool, (centre), L2-normalise.

Why a base class: MiniLM and SmolLM2 differ only in how their weights are found and whether the
pooled vector is centred; batching by length, dtype handling and normalisation must be identical
so that throughput and cosine comparisons between encoders (and between fp32 and bf16) are fair.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
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


def non_empty(texts: list[str]) -> list[str]:
    """The texts a tokenizer is given: an empty text is read as one space, the same for every
    encoder and tokenizer library, so it still gets a (finite, comparable) vector."""
    return [t if t else " " for t in texts]


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
    causal: bool = False  # decoder LMs attend to earlier tokens only (halves the useful attention FLOPs)
    batch_tokens: int = 4096  # tokens per forward batch: large enough for efficient GEMMs (measured best of 512..4096)
    min_batch_tokens: int = 256  # below this a length bucket may borrow neighbouring lengths...
    max_pad_share: float = 0.125  # ...padding at most this share of the merged batch

    def __init__(self, model: torch.nn.Module | None, tokenizer, dtype: Dtype = "fp32", threads: int | None = 1) -> None:
        """``model=None``: the subclass runs its own forward and provides ``model`` (the HF
        module, for reference and introspection) itself, e.g. lazily."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.dtype = dtype
        self.threads = threads
        self.tokenizer = tokenizer
        if model is not None:
            self.model = self._prepared(model)
        self.centre: np.ndarray | None = None

    def _prepared(self, model: torch.nn.Module) -> torch.nn.Module:
        """The HF module in eval mode and the encoder's dtype."""
        import torch

        model = model.eval()
        return model.to(torch.bfloat16) if self.dtype == "bf16" else model

    @contextmanager
    def _one_torch_thread(self) -> Iterator[None]:
        """torch ops single-threaded while encoding (restored afterwards, for the caller's code)."""
        import torch

        before = torch.get_num_threads()
        if before != 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if before != 1:
                torch.set_num_threads(before)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Last hidden states ``(B, T, dim)``; ``attention_mask=None`` means no padding in the batch.

        The HF module here; MiniLM swaps in :class:`~crossrec.encoders.fused_bert.FusedBert`.
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state

    def _pool_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Mean of the last hidden states over real (non-padding) tokens, as float32."""
        import torch

        longest = max(len(x) for x in ids)
        if all(len(x) == longest for x in ids):  # the common case: an exact-length bucket
            hidden = self._hidden(torch.tensor(ids, dtype=torch.long), None)
            return hidden.float().mean(1).numpy()
        pad = self.pad_id
        input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for row, x in enumerate(ids):  # right padding: positions stay 0..n-1 for every text
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        hidden = self._hidden(input_ids, mask).float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text after truncation, unpadded (an empty text is read as one space)."""
        enc = self.tokenizer(
            non_empty(texts), truncation=True, max_length=self.max_length,
            return_attention_mask=False, return_token_type_ids=False,
        )
        return enc["input_ids"]

    @property
    def pad_id(self) -> int:
        """The token id padding rows are filled with (masked out, so any valid id works)."""
        return self.tokenizer.pad_token_id or 0

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text after truncation (the fast tokenizer makes this cheap next to the model)."""
        return [len(x) for x in self.tokenize(texts)]

    def useful_flops(self, lengths: list[int] | np.ndarray) -> float:
        """Matmul FLOPs needed to encode texts of these token counts, padding excluded.

        Per text of ``t`` tokens: ``2 * t * P`` for the per-token linear maps (``P`` = their weight
        count over all layers: Q, K, V, output and FFN; no pooler, no LM head) plus attention's two
        ``t x t`` products, ``QK^T`` and ``AV``, each ``2 * t^2 * hidden`` per layer, of which a
        causal model only needs the lower half. Embedding lookups, norms, activations and softmax
        are not matmuls and are not counted: they are part of what keeps a forward below the
        matmul roofline.
        """
        t = np.asarray(lengths, dtype=np.float64)
        att = (2.0 if self.causal else 4.0) * self.hidden_size * self.num_layers
        return float((2.0 * t * self.linear_weights + att * t * t).sum())

    @property
    def linear_weights(self) -> int:
        import torch

        return sum(
            m.in_features * m.out_features for name, m in self.model.named_modules()
            if isinstance(m, torch.nn.Linear) and "pooler" not in name and "lm_head" not in name
        )

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def batches(self, lengths: list[int] | np.ndarray, batch_size: int | None = None) -> list[np.ndarray]:
        """Index arrays of the forward batches: texts sorted by token count, one batch per exact
        length (no padding, no attention mask), split at ``batch_tokens`` tokens (and at
        ``batch_size`` texts when given).

        Why exact lengths: on 6k catalogue texts, sorting into batches of 64 still left 5.3 % of
        the executed FLOPs on padding (0.08 % this way), and a mask-free batch also takes the
        cheaper attention path. Only lengths too
        rare to fill ``min_batch_tokens`` on their own are merged with their neighbours, padding
        at most ``max_pad_share`` of the merged batch: a handful of 1-text GEMMs costs more
        than a few padded tokens.
        """
        lengths = np.asarray(lengths)
        order = np.argsort(lengths, kind="stable")
        cap_rows = batch_size if batch_size and batch_size > 0 else None
        out: list[np.ndarray] = []
        start, longest, real = 0, 0, 0
        for pos, i in enumerate(order):
            t = int(lengths[i])
            rows = pos - start
            if rows:
                padded = (rows + 1) * t  # ascending order: this text is the batch's longest
                fits = padded <= max(self.batch_tokens, t) and (cap_rows is None or rows < cap_rows)
                rare = real < self.min_batch_tokens and padded - real - t <= self.max_pad_share * padded
                if fits and (t == longest or rare):
                    longest, real = t, real + t
                    continue
                out.append(order[start:pos])
            start, longest, real = pos, t, t
        if len(order):
            out.append(order[start:])
        return out

    def encode_raw(
        self, texts: list[str], batch_size: int | None = None, on_batch: Callable[[int], object] | None = None
    ) -> np.ndarray:
        """Mean-pooled vectors before centring/normalisation (used to compute the centre).

        ``threads`` decides the parallelism: 1 = one torch thread (a Spark worker); n > 1 = n
        forward batches at a time on n Python threads, each running torch single-threaded;
        None = sequential batches with whatever intra-op threads torch has. Why batches and not
        torch's intra-op threads for n > 1: splitting every op of a few-k-token batch across
        threads synchronises the threads at each of the ~60 ops per forward, and on a shared
        machine one descheduled thread stalls the other at every barrier; measured here with a
        competing process, 2 intra-op threads ran at 0.5x ONE thread, while independent batches
        (like Spark's one-thread workers) degrade only by the CPU time actually taken away.
        ``on_batch(n)`` is called after each forward batch of ``n`` texts (progress bars).
        """
        import torch

        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ids = self.tokenize(list(texts))
        lengths = np.array([len(x) for x in ids])
        batches = self.batches(lengths, batch_size)

        def run(idx: np.ndarray) -> int:
            with torch.inference_mode():  # thread-local: entered in each worker thread
                out[idx] = self._pool_ids([ids[i] for i in idx])
            return len(idx)

        workers = min(self.threads or 1, len(batches))
        with nullcontext() if self.threads is None else self._one_torch_thread():
            if workers <= 1:
                done: Iterable[int] = map(run, batches)
            else:  # most expensive batches first, so the last ones to finish are short
                batches.sort(key=lambda b: -self.useful_flops(lengths[b]))
                # torch.set_num_threads is per OS thread for OpenMP: without it in each worker
                # thread, oneDNN's GEMMs there open a team of all cores (2 x 2 threads on 2 cores)
                pool = ThreadPoolExecutor(workers, thread_name_prefix="encode", initializer=torch.set_num_threads,
                                          initargs=(1,))
                done = pool.map(run, batches)
            try:
                for k in done:
                    if on_batch is not None:
                        on_batch(k)
            finally:
                if workers > 1:
                    pool.shutdown(cancel_futures=True)
        return out

    def encode(
        self, texts: list[str], batch_size: int | None = None, on_batch: Callable[[int], object] | None = None
    ) -> np.ndarray:
        """Texts -> (n, dim) float32, centred when the encoder has a centre, L2-normalised."""
        vecs = self.encode_raw(list(texts), batch_size, on_batch)
        if self.centre is not None:
            vecs -= self.centre
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs /= np.maximum(norms, 1e-12)
        return vecs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, dtype={self.dtype!r}, version={self.version!r})"
