"""The CNN classifier, and how it is saved and loaded without pickle.

The network is built from MONAI convolution blocks (conv → norm → dropout → activation),
with max-pooling between levels and a global max+average pooled head, so a small lesion
anywhere in the image can drive the prediction. Dropout in the blocks is channel-wise (2-D):
neighbouring pixels are correlated, so element-wise dropout regularises feature maps little,
and its per-pixel Bernoulli draws took about half of every CPU training step.

A saved model is two files: ``model.safetensors`` (weights) and ``model.json``
(architecture, preprocessing statistics and anything else needed to use it), so loading
never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS_FILE = catalog.WEIGHTS_FILE
META_FILE = catalog.MODEL_META_FILE
ARCH_KEYS = (
    "depth",
    "base_width",
    "kernel_size",
    "batch_norm",
    "dropout",
    "activation",
    "image_size",
    "in_channels",
)


def architecture(train_cfg: Any, image_size: int, in_channels: int = 1) -> dict[str, Any]:
    """The architecture dict stored in ``model.json`` from a TrainSection-like object."""
    return {
        "depth": int(train_cfg.depth),
        "base_width": int(train_cfg.base_width),
        "kernel_size": int(train_cfg.kernel_size),
        "batch_norm": bool(train_cfg.batch_norm),
        "dropout": float(train_cfg.dropout),
        "activation": str(train_cfg.activation),
        "image_size": int(image_size),
        "in_channels": int(in_channels),
    }


def build_network(arch: dict[str, Any]) -> nn.Module:
    """A CNN with ``depth`` levels of width ``base_width * 2**level`` and one logit output."""
    import torch
    from monai.networks.blocks import Convolution
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = int(arch["in_channels"])
            for level in range(int(arch["depth"])):
                width = int(arch["base_width"]) * 2**level
                layers.append(
                    Convolution(
                        spatial_dims=2,
                        in_channels=channels,
                        out_channels=width,
                        kernel_size=int(arch["kernel_size"]),
                        act=arch["activation"],
                        norm="batch" if arch["batch_norm"] else None,
                        dropout=float(arch["dropout"]) or None,
                        dropout_dim=2,
                    )
                )
                layers.append(nn.MaxPool2d(2))
                channels = width
            self.features = nn.Sequential(*layers)
            self.dropout = nn.Dropout(float(arch["dropout"]))
            self.head = nn.Linear(2 * channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.features(x)
            pooled = torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1)
            return self.head(self.dropout(pooled)).squeeze(1)

    return Net()


def save_model(network: nn.Module, meta: dict[str, Any], out_dir: Path | str) -> Path:
    """Write weights (safetensors) and metadata (JSON) into ``out_dir`` atomically."""
    from safetensors.torch import save_file

    from pipeline.io import atomic_path, ensure_parent, write_json

    out_dir = Path(out_dir)
    ensure_parent(out_dir / WEIGHTS_FILE)  # a folder radops creates is marked as its own
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    missing = [k for k in ARCH_KEYS if k not in meta.get("architecture", {})]
    if missing:
        raise ValueError(f"model metadata lacks architecture keys: {missing}")
    write_json(out_dir / META_FILE, meta)
    return out_dir


def load_model(model_dir: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Load a saved model (eval mode, CPU) and its metadata; no pickle involved."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    network = build_network(meta["architecture"])
    network.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
    network.eval()
    return network, meta


def predict_proba(network: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Positive-class probabilities for an N×C×H×W array (e.g. a read-only memmap).

    Each batch is copied into a writable float32 array: torch refuses to share memory with a
    read-only memmap without a warning, and the copy is negligible next to the forward pass.
    """
    import torch

    network.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.array(x[start : start + batch_size], dtype=np.float32))
            out.append(torch.sigmoid(network(batch)).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
