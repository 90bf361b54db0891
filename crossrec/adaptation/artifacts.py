"""Save / load one trained model as a self-contained artifact directory.

What inference needs and nothing else: weights (without the frozen embedding table, which is big
and reproducible), the model config, the item index (domain, item_id -> row), the adapted item
vectors f_i of every known item (so scoring never re-runs the adaptor over the catalogue), and the
metrics + data fingerprint the gate and humans read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from crossrec.adaptation.data import AdaptData
from crossrec.adaptation.model import CrossDomainModel, ModelConfig


@torch.no_grad()
def write_artifact(out: Path, model: CrossDomainModel, data: AdaptData, strategy: str, view: str, extra: dict | None = None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    cat = data.catalog
    vecs = model.item_vecs(torch.arange(cat.n_items)).numpy().astype(np.float32)
    vecs[0] = 0.0
    torch.save(model.state_dict(), out / "weights.pt")
    np.save(out / "item_vectors.npy", vecs)
    pd.DataFrame(
        {
            "index": np.arange(cat.n_items),
            "domain": [k[0] for k in cat.keys],
            "item_id": [k[1] for k in cat.keys],
            "domain_code": cat.domain.astype(np.int8),
        }
    ).to_parquet(out / "items.parquet", index=False)
    config = {
        "model": model.cfg.to_dict(),
        "strategy": strategy,
        "view": view,
        "encoder": data.encoder,
        "source_domain": data.source_domain,
        "target_domain": data.target_domain,
        "data_fingerprint": data.fingerprint,
        **(extra or {}),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))


@dataclass
class LoadedArtifact:
    model: CrossDomainModel
    config: dict
    items: pd.DataFrame
    vectors: np.ndarray


def read_artifact(path: Path) -> LoadedArtifact:
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    model = _trained_model(path, config)
    return LoadedArtifact(model, config, pd.read_parquet(path / "items.parquet"), np.load(path / "item_vectors.npy"))


def load_with_embeddings(path: Path, data: AdaptData) -> tuple[CrossDomainModel, dict]:
    """A registered model rebuilt over ``data``'s frozen embedding table, ready to re-score, and its config.

    Why a check: the weights only mean something over the data they were trained on; a different
    split or embedding run gives another fingerprint, and re-scoring it would report nonsense.
    """
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if data.fingerprint != config.get("data_fingerprint"):
        raise ValueError(f"data fingerprint {data.fingerprint} != the artifact's {config.get('data_fingerprint')}: not the data it was trained on (check the split)")
    return _trained_model(path, config, torch.from_numpy(data.catalog.embeddings)), config


def _trained_model(path: Path, config: dict, embeddings: torch.Tensor | None = None) -> CrossDomainModel:
    """The artifact's model with its weights, in eval mode (``embeddings``: the frozen table it reads)."""
    cfg = ModelConfig(**{"residual": False, **config["model"]})  # artifacts older than the residual GRU had none
    model = CrossDomainModel(cfg, embeddings)
    model.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model
