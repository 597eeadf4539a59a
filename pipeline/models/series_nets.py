"""Series networks: a slice CNN + GRU/LSTM (``cnn_rnn``) and a small 3-D CNN (``cnn3d``).

Input: B×D×C×S×S volumes (``series`` stage), slices in anatomical order. Padding slices (a
series shorter than the stored depth, ``series.slices: 0``) are all-NaN: the networks find
them from the input itself, so one array is still the whole input (as for the served MLflow
model). The valid slices must come first.

``cnn_rnn``: every slice (with ``slice_context`` neighbours on either side as extra channels,
"2.5-D": a lesion is a change along the slices) goes through the classifier's 2-D conv
feature extractor (the
``features`` of ``networks.build_network``, shared weights; its state-dict keys are the
classifier's with ``features.`` → ``encoder.``, so a trained classifier or pretrained encoder
can initialise it: ``load_encoder``, the centre-slice channel of the first layer), max+mean pooled to one embedding per slice; a GRU or
LSTM (``rnn``, ``rnn_hidden``, ``rnn_layers``, ``bidirectional``) reads the embeddings in
order, packed to each series' length (``pack_padded_sequence``), so padding never enters;
``rnn_pooling``: ``attention`` (a learned softmax weight per valid slice; the weights say
which slice contributed most), ``mean`` over valid slices, or ``last`` (the final states),
concatenated with the maximum of the RNN outputs over the valid slices, so a lesion in a few
of many slices has a direct path to the head.

``cnn3d``: ``depth`` levels of MONAI 3-D convolution blocks (width ``base_width·2^level``),
max-pooled in-plane at every level and across slices while more than one remains; global
max+mean pooling and a linear head. Padding slices are zeros here.

This file imports only torch and MONAI (it is copied into the served MLflow model beside
``networks.py``, which passes its 2-D builder in, so no ``pipeline`` import is needed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

SERIES_NAMES = ("cnn_rnn", "cnn3d")
SERIES_KEYS = (
    "name",
    "rnn",
    "rnn_hidden",
    "rnn_layers",
    "bidirectional",
    "rnn_pooling",
    "slice_context",
)


def valid_slices(x: torch.Tensor) -> torch.Tensor:
    """B×D booleans: the slices that are not all-NaN padding."""
    return ~torch.isnan(x).flatten(2).all(dim=-1)


def _encoder_arch(arch: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "depth",
        "base_width",
        "kernel_size",
        "batch_norm",
        "dropout",
        "activation",
        "image_size",
        "in_channels",
    )
    return {k: arch[k] for k in keep} | {"out_channels": 1, "name": "cnn"}


class CnnRnn(nn.Module):
    def __init__(self, arch: dict[str, Any], build2d: Callable[[dict[str, Any]], nn.Module]):
        super().__init__()
        self.context = int(arch.get("slice_context", 0))
        encoder = _encoder_arch(arch)
        encoder["in_channels"] = int(arch["in_channels"]) * (2 * self.context + 1)
        self.encoder = build2d(encoder).features  # type: ignore[union-attr]
        width = int(arch["base_width"]) * 2 ** (int(arch["depth"]) - 1)
        hidden, layers = int(arch["rnn_hidden"]), int(arch["rnn_layers"])
        self.bidirectional = bool(arch["bidirectional"])
        rnn = nn.LSTM if arch["rnn"] == "lstm" else nn.GRU
        self.rnn = rnn(
            2 * width,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=self.bidirectional,
            dropout=float(arch["dropout"]) if layers > 1 else 0.0,
        )
        out = hidden * (2 if self.bidirectional else 1)
        self.pooling = str(arch["rnn_pooling"])
        self.attention = nn.Linear(out, 1)
        self.dropout = nn.Dropout(float(arch["dropout"]))
        self.n_out = int(arch["out_channels"])
        self.head = nn.Linear(2 * out, self.n_out)  # the pooled state and the max over slices

    def with_context(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """B×D×C×S×S → B×D×(2k+1)C×S×S: each slice, then its differences to its ``k``
        neighbours on either side, as channels (the series' own edge slice repeated beyond
        its ends, so padding never leaks in)."""
        k = self.context
        x = torch.nan_to_num(x, nan=0.0)
        if k == 0:
            return x
        b, d = x.shape[:2]
        last = (valid.sum(dim=1) - 1).clamp(min=0)
        offsets = torch.arange(-k, k + 1, device=x.device)
        pos = (torch.arange(d, device=x.device)[None, :, None] + offsets[None, None, :]).clamp(
            min=0
        )
        pos = torch.minimum(pos, last[:, None, None])
        gathered = x[torch.arange(b, device=x.device)[:, None, None], pos]  # B×D×K×C×S×S
        centre = gathered[:, :, k : k + 1]
        others = torch.cat([gathered[:, :, :k], gathered[:, :, k + 1 :]], dim=2)
        # the slice, then its differences to each neighbour: a lesion is a change along the
        # slices, which these make explicit (a plain neighbour stack trained only by luck)
        return torch.cat([centre, centre - others], dim=2).flatten(2, 3)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slice embeddings B×D×E and the valid-slice mask B×D."""
        valid = valid_slices(x)
        b, d = x.shape[:2]
        planes = self.with_context(x, valid)
        planes = planes.reshape(b * d, *planes.shape[2:])
        # channels-last: about 25 % faster convolutions on CPU (as for the 2-D CNN)
        h = self.encoder(planes.contiguous(memory_format=torch.channels_last))  # type: ignore[operator]
        e = torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1)
        return e.reshape(b, d, -1), valid

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs and each slice's contribution to the logit (B×D, zero on padding):
        the head is linear in the pooled state (a weighted sum of the slices' RNN states, or
        the last one) and in the max over slices (each feature taken from one slice), so the
        logit minus the bias splits exactly into one share per slice (for K classes: of the
        most probable class)."""
        e, valid = self.embed(x)
        lengths = valid.sum(dim=1).clamp(min=1)
        packed = pack_padded_sequence(e, lengths.cpu(), batch_first=True, enforce_sorted=False)
        seq, state = self.rnn(packed)
        out, _ = pad_packed_sequence(seq, batch_first=True, total_length=e.shape[1])
        mask = torch.arange(e.shape[1], device=x.device)[None] < lengths[:, None]
        if self.pooling == "attention":
            scores = self.attention(torch.tanh(out)).squeeze(-1).masked_fill(~mask, -1e9)
            weights = torch.softmax(scores, dim=1)
            pooled = (weights[..., None] * out).sum(dim=1)
        elif self.pooling == "mean":
            weights = mask.float() / lengths[:, None].float()
            pooled = (weights[..., None] * out).sum(dim=1)
        else:  # last: the final hidden state of each direction
            h = state[0] if isinstance(state, tuple) else state
            pooled = torch.cat([h[-2], h[-1]], dim=1) if self.bidirectional else h[-1]
            weights = F.one_hot(lengths - 1, e.shape[1]).float()
        # the max over valid slices too: a lesion in one of 16 slices then has a direct path to
        # the head (with the pooled state alone training was at the mercy of the seed)
        peak, where = out.masked_fill(~mask[..., None], float("-inf")).max(dim=1)
        logits = self.head(self.dropout(torch.cat([pooled, peak], dim=1)))
        cls = logits.argmax(dim=1) if self.n_out > 1 else torch.zeros_like(lengths)
        w = self.head.weight[cls]  # B×2H: the row of the explained output
        w_pool, w_peak = w[:, : out.shape[2]], w[:, out.shape[2] :]
        if self.pooling == "last":
            share = weights * (pooled * w_pool).sum(dim=1, keepdim=True)
        else:
            share = weights * (out * w_pool[:, None]).sum(dim=2)
        share = share.scatter_add(1, where, w_peak * peak)
        return (logits.squeeze(1) if self.n_out == 1 else logits), share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_weights(x)[0]


class Cnn3d(nn.Module):
    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        from monai.networks.blocks import Convolution

        blocks: list[nn.Module] = []
        channels = int(arch["in_channels"])
        for level in range(int(arch["depth"])):
            width = int(arch["base_width"]) * 2**level
            blocks.append(
                Convolution(
                    spatial_dims=3,
                    in_channels=channels,
                    out_channels=width,
                    kernel_size=int(arch["kernel_size"]),
                    act=arch["activation"],
                    norm="batch" if arch["batch_norm"] else None,
                    dropout=float(arch["dropout"]) or None,
                    dropout_dim=3,
                )
            )
            channels = width
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(float(arch["dropout"]))
        self.n_out = int(arch["out_channels"])
        self.head = nn.Linear(2 * channels, self.n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nan_to_num(x, nan=0.0).transpose(1, 2)  # B×C×D×S×S
        for block in self.blocks:
            h = block(h)
            h = F.max_pool3d(h, (2 if h.shape[2] > 1 else 1, 2, 2))
        pooled = torch.cat([h.amax(dim=(2, 3, 4)), h.mean(dim=(2, 3, 4))], dim=1)
        logits = self.head(self.dropout(pooled))
        return logits.squeeze(1) if self.n_out == 1 else logits


def build_series_network(
    arch: dict[str, Any], build2d: Callable[[dict[str, Any]], nn.Module]
) -> nn.Module:
    """The series network named by ``arch["name"]``."""
    if arch["name"] == "cnn_rnn":
        return CnnRnn(arch, build2d)
    if arch["name"] == "cnn3d":
        return Cnn3d(arch)
    raise ValueError(f"unknown series model {arch['name']!r}; choose one of {SERIES_NAMES}")


def load_encoder(network: nn.Module, classifier_state: dict[str, torch.Tensor]) -> int:
    """Initialise a ``cnn_rnn`` slice encoder from a 2-D classifier's state dict (its
    ``features.*`` tensors); returns how many tensors were loaded."""
    own = network.state_dict()
    picked = {}
    for k, v in classifier_state.items():
        name = "encoder." + k[len("features.") :]
        if not k.startswith("features.") or name not in own:
            continue
        if v.ndim == 4 and own[name].shape[1] != v.shape[1]:  # first conv with slice context:
            inflated = torch.zeros_like(own[name])  # the classifier sees the slice itself
            inflated[:, : v.shape[1]] = v
            v = inflated
        picked[name] = v
    network.load_state_dict(picked, strict=False)
    return len(picked)


def slice_weights(network: nn.Module, x: Any, batch_size: int = 32) -> Any:
    """Per-slice contributions to the logit (B×D numpy; see ``CnnRnn.forward_with_weights``)
    of a ``cnn_rnn``; None for other networks."""
    import numpy as np

    if not hasattr(network, "forward_with_weights"):
        return None
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.array(x[start : start + batch_size], dtype=np.float32))
            out.append(network.forward_with_weights(batch)[1].numpy())  # type: ignore[operator]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
