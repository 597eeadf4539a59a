"""The CNN, and how it is saved and loaded without pickle.

The network is built from MONAI convolution blocks (conv → norm → dropout → activation),
with max-pooling between levels and a global max+average pooled head, so a small lesion
anywhere in the image can drive the prediction. Dropout in the blocks is channel-wise (2-D):
neighbouring pixels are correlated, so element-wise dropout regularises feature maps little,
and its per-pixel Bernoulli draws took about half of every CPU training step.

The network has ``in_channels`` input channels and ``out_channels`` outputs (one logit for a
binary label, K logits for K classes, one value for a regression); the task decides.

A saved model is two files: ``model.safetensors`` (weights) and ``model.json``
(architecture, preprocessing statistics, the task and its ``output`` spec, and the weights
file's SHA-256 as ``weights_sha256``), so loading never unpickles anything, and
``load_model`` refuses weights that are not the ones saved with the metadata. ``predict`` turns raw outputs into predictions with the saved
``output`` spec, so this file alone (it is what the MLflow model carries) can serve any task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.errors import InputError

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
    "out_channels",
)
# Models saved before a key existed load with these values.
ARCH_DEFAULTS = {"in_channels": 1, "out_channels": 1}
OUTPUT_DEFAULT = {"transform": "sigmoid"}  # the binary classifier of the original radops
FAMILY_NAMES = ("resnet", "densenet")  # 2-D MONAI families (pipeline/models/families.py)


def architecture(
    model_cfg: Any, image_size: int, in_channels: int = 1, out_channels: int = 1
) -> dict[str, Any]:
    """The architecture dict stored in ``model.json`` from a ModelSection-like object."""
    return (
        {
            "depth": int(model_cfg.depth),
            "base_width": int(model_cfg.base_width),
            "kernel_size": int(model_cfg.kernel_size),
            "batch_norm": bool(model_cfg.batch_norm),
            "dropout": float(model_cfg.dropout),
            "activation": str(model_cfg.activation),
            "image_size": int(image_size),
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
        }
        | series_architecture(model_cfg)
        | input_size_key(model_cfg)
    )


def input_size_key(model_cfg: Any) -> dict[str, Any]:
    """``input_size`` when the network resizes its input (``model.input_size`` > 0); none
    otherwise, so ``model.json`` of a default model stays as it was."""
    size = int(getattr(model_cfg, "input_size", 0) or 0)
    return {"input_size": size} if size > 0 else {}


def series_architecture(model_cfg: Any) -> dict[str, Any]:
    """The series keys (``name``, ``rnn``...) of a series model; none for the 2-D CNN, whose
    ``model.json`` stays as it was; only the name for a 2-D family (``resnet``...)."""
    name = str(getattr(model_cfg, "name", "cnn"))
    if name == "cnn":
        return {}
    if name in FAMILY_NAMES:
        return {"name": name}
    return {
        "name": name,
        "rnn": str(model_cfg.rnn),
        "rnn_hidden": int(model_cfg.rnn_hidden),
        "rnn_layers": int(model_cfg.rnn_layers),
        "bidirectional": bool(model_cfg.bidirectional),
        "rnn_pooling": str(model_cfg.rnn_pooling),
        "slice_context": int(model_cfg.slice_context),
    }


def build_network(arch: dict[str, Any]) -> nn.Module:
    """A CNN with ``depth`` levels of width ``base_width * 2**level`` and ``out_channels``
    outputs: shape N for one output (as before), N×K for K."""
    import torch
    from monai.networks.blocks import Convolution
    from torch import nn

    arch = ARCH_DEFAULTS | dict(arch)
    if int(arch.get("ensemble_size", 1)) > 1:  # k seeds averaged (pipeline/models/ensemble.py)
        return _ensemble_module().build_ensemble(arch, build_network)  # type: ignore[no-any-return]
    if arch.get("network") == AUTOENCODER:
        return build_autoencoder(arch)
    if arch.get("name", "cnn") in FAMILY_NAMES:  # a MONAI ResNet / DenseNet
        try:  # the copy logged with the MLflow model
            from radops_families import build_family  # type: ignore[import-not-found]
        except ImportError:
            from pipeline.models.families import build_family
        return build_family(arch)
    if arch.get("name", "cnn") != "cnn":  # a series model (pipeline/models/series_nets.py)
        try:  # the copy logged with the MLflow model
            from radops_series_nets import build_series_network  # type: ignore[import-not-found]
        except ImportError:
            from pipeline.models.series_nets import build_series_network
        return build_series_network(arch, build_network)
    n_out = int(arch["out_channels"])
    if arch.get("network") == "unet":  # segmentation: one logit map per segment
        return _unet(arch)

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
            self.head = nn.Linear(2 * channels, n_out)
            self.input_size = int(arch.get("input_size", 0))  # >0: resize the input first

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.input_size > 0 and tuple(x.shape[-2:]) != (self.input_size,) * 2:
                x = nn.functional.interpolate(
                    x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False
                )
            h = self.features(x)
            pooled = torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1)
            out = self.head(self.dropout(pooled))
            return out.squeeze(1) if n_out == 1 else out

    return Net()


def _ensemble_module() -> Any:
    """``pipeline.models.ensemble``, or its copy logged with the MLflow model."""
    try:
        import radops_ensemble  # type: ignore[import-not-found]
    except ImportError:
        from pipeline.models import ensemble as radops_ensemble
    return radops_ensemble


def _unet(arch: dict[str, Any]) -> nn.Module:
    """MONAI's U-Net: ``depth`` down-sampling levels of ``base_width * 2**level`` channels,
    ``res_units`` residual units each; output N×S×H×W logits (S = ``out_channels``)."""
    from monai.networks.nets import UNet

    depth, width = int(arch["depth"]), int(arch["base_width"])
    return UNet(
        spatial_dims=2,
        in_channels=int(arch["in_channels"]),
        out_channels=int(arch["out_channels"]),
        channels=tuple(width * 2**level for level in range(depth + 1)),
        strides=(2,) * depth,
        kernel_size=int(arch["kernel_size"]),
        up_kernel_size=int(arch["kernel_size"]),
        num_res_units=int(arch.get("res_units", 2)),
        act=str(arch["activation"]),
        norm="batch" if arch["batch_norm"] else "instance",
        dropout=float(arch["dropout"]),
    )


WEIGHTS_DIGEST_KEY = "weights_sha256"  # model.json: the SHA-256 of model.safetensors


class ModelIntegrityError(InputError):
    """A saved model's files do not match what was recorded when it was saved."""


def weights_sha256(path: Path | str) -> str:
    """The SHA-256 (hex) of a weights file, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(network: nn.Module, meta: dict[str, Any], out_dir: Path | str) -> Path:
    """Write weights (safetensors) and metadata (JSON, with the weights' SHA-256) into
    ``out_dir`` atomically.

    ``meta["architecture"]`` must hold ``ARCH_KEYS`` (``in_channels`` / ``out_channels``
    default to 1); ``meta["output"]`` (default: sigmoid) must name a known transform.
    """
    from safetensors.torch import save_file

    from pipeline.io import atomic_path, ensure_parent, write_json

    arch = ARCH_DEFAULTS | dict(meta.get("architecture", {}))
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f"model metadata lacks architecture keys: {missing}")
    transform = meta.get("output", OUTPUT_DEFAULT).get("transform")
    if transform not in ("sigmoid", "softmax", "identity", RECONSTRUCTION_ERROR):
        raise ValueError(f"model metadata has an unknown output transform {transform!r}")
    out_dir = Path(out_dir)
    ensure_parent(out_dir / WEIGHTS_FILE)  # a folder radops creates is marked as its own
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
        digest = weights_sha256(tmp)
    write_json(out_dir / META_FILE, meta | {"architecture": arch, WEIGHTS_DIGEST_KEY: digest})
    return out_dir


def load_model(model_dir: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Load a saved model (eval mode, CPU) and its metadata; no pickle involved.

    The weights file must have the SHA-256 recorded in ``model.json`` (``weights_sha256``);
    otherwise, or when the files cannot be read as the model they describe, a
    ``ModelIntegrityError`` says so in one line. A model saved before the digest was
    recorded loads with a warning that its weights are not verified.
    """
    import logging

    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    weights = model_dir / WEIGHTS_FILE
    try:
        meta = json.loads((model_dir / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"cannot read {model_dir / META_FILE}: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("architecture"), dict):
        raise ModelIntegrityError(f"{model_dir / META_FILE} is not a radops model description")
    if not weights.is_file():
        raise ModelIntegrityError(f"{weights} is missing")
    recorded = meta.get(WEIGHTS_DIGEST_KEY)
    if recorded:
        actual = weights_sha256(weights)
        if actual != recorded:
            raise ModelIntegrityError(
                f"refusing the model in {model_dir}: {WEIGHTS_FILE} has SHA-256 "
                f"{actual[:16]}…, not the {str(recorded)[:16]}… recorded in {META_FILE} when "
                "it was saved (the weights were replaced or damaged)"
            )
    else:
        logging.getLogger(__name__).warning(
            "%s records no weights SHA-256 (saved by an older radops): its weights are not "
            "verified",
            model_dir / META_FILE,
        )
    try:
        network = build_network(meta["architecture"])
        network.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # wrong architecture, keys or shapes; not a safetensors file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelIntegrityError(
            f"refusing the model in {model_dir}: its weights do not load into the network "
            f"{META_FILE} describes ({first})"
        ) from None
    network.eval()
    return network, meta


def raw_outputs(
    network: nn.Module,
    x: np.ndarray,
    batch_size: int = 256,
    tta: str = "none",
    transform: str = "sigmoid",
) -> np.ndarray:
    """The network's raw outputs (N or N×K float32) for an N×C×H×W array (e.g. a read-only
    memmap); with ``tta`` (``flips``, ``flips_shifts``) averaged over transformed copies as
    probabilities of the output ``transform`` (``ensemble.tta_forward``).

    Each batch is copied into a writable float32 array: torch refuses to share memory with a
    read-only memmap without a warning, and the copy is negligible next to the forward pass.
    """
    import torch

    network.eval()
    views = _ensemble_module().tta_views(tta) if tta != "none" else None
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.array(x[start : start + batch_size], dtype=np.float32))
            if views is None:
                out.append(network(batch).float().numpy())
            else:
                tta_out = _ensemble_module().tta_forward(network, batch, views, transform)
                out.append(tta_out.float().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def apply_output(raw: np.ndarray, output: dict[str, Any] | None = None) -> np.ndarray:
    """Raw outputs → predictions by a model's ``output`` spec: ``sigmoid`` (N probabilities
    of class 1), ``softmax`` (N×K class probabilities) or ``identity`` (``raw · scale +
    shift``: N values in the target's units). Calibration fitted on validation
    (``pipeline.training.calibration``) is part of the spec: ``temperature`` divides the
    logits (sigmoid, softmax); ``isotonic`` (``{"x": [...], "y": [...]}``) maps the sigmoid's
    probabilities piecewise linearly."""
    spec = output or OUTPUT_DEFAULT
    raw = np.asarray(raw, dtype=np.float32)
    transform = spec.get("transform")
    temperature = float(spec.get("temperature", 1.0))
    if transform == "sigmoid":
        p = 1.0 / (1.0 + np.exp(-raw.astype(np.float64) / temperature))
        iso: Any = spec.get("isotonic")
        if iso:
            p = np.interp(p, np.asarray(iso["x"], np.float64), np.asarray(iso["y"], np.float64))
        return p.astype(np.float32)
    if transform == "softmax":
        shifted = raw.astype(np.float64) / temperature
        shifted = shifted - shifted.max(axis=1, keepdims=True)
        e = np.exp(shifted.astype(np.float64))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    if transform == "identity":
        scale, shift = float(spec.get("scale", 1.0)), float(spec.get("shift", 0.0))
        return (raw.astype(np.float64) * scale + shift).astype(np.float32)
    raise ValueError(f"unknown output transform {transform!r}")


CALIBRATION_KEYS = ("temperature", "isotonic")


def uncalibrated(output: dict[str, Any] | None) -> dict[str, Any]:
    """An ``output`` spec without its calibration (for before/after comparisons)."""
    return {k: v for k, v in (output or OUTPUT_DEFAULT).items() if k not in CALIBRATION_KEYS}


def predict(
    network: nn.Module,
    meta: dict[str, Any],
    x: np.ndarray,
    batch_size: int = 256,
    tta: str | None = None,
) -> np.ndarray:
    """Predictions of a loaded model (``load_model``'s pair) for N×C×H×W inputs, optionally
    averaged over test-time augmentations (``tta``: none, flips, flips_shifts; None: the
    model's own default, ``model.json``'s ``inference.tta``, as evaluated and served)."""
    if tta is None:
        tta = str((meta.get("inference") or {}).get("tta", "none"))
    transform = (meta.get("output") or OUTPUT_DEFAULT).get("transform")
    if transform == RECONSTRUCTION_ERROR:
        if tta != "none":
            raise ValueError("test-time augmentation does not apply to an autoencoder")
        return reconstruction_quality(network, x, batch_size)
    if tta != "none" and not (meta.get("output") or OUTPUT_DEFAULT).get("tta", True):
        raise ValueError("test-time augmentation is not supported for this model's task")
    raw = raw_outputs(network, x, batch_size, tta=tta, transform=str(transform))
    return apply_output(raw, meta.get("output"))


# --------------------------------------------------------------------------- autoencoder
# Here and not in a module of its own: the served MLflow model carries only this file.
AUTOENCODER = "autoencoder"  # ``architecture["network"]`` of a convolutional autoencoder
RECONSTRUCTION_ERROR = "reconstruction"  # its ``output`` transform: per-image quality


def build_autoencoder(arch: dict[str, Any]) -> nn.Module:
    """An encoder-decoder whose encoder *is* the classifier's ``features`` (same blocks, same
    parameter names ``features.*``), so its weights can initialise a classifier
    (``pipeline.training.transfer``). A 1×1 bottleneck to ``latent_channels``, then per level
    nearest upsampling + a MONAI convolution block back to the image's channels (linear
    output: the images are z-scored, not in [0, 1])."""
    import torch.nn.functional as F
    from monai.networks.blocks import Convolution
    from torch import nn

    depth, base = int(arch["depth"]), int(arch["base_width"])
    latent = int(arch.get("latent_channels", 16))
    act, norm = arch["activation"], ("batch" if arch["batch_norm"] else None)
    encoder_arch = {k: v for k, v in arch.items() if k != "network"}

    def block(c_in: int, c_out: int, kernel: int, last: bool = False) -> nn.Module:
        return Convolution(
            spatial_dims=2,
            in_channels=c_in,
            out_channels=c_out,
            kernel_size=kernel,
            act=None if last else act,
            norm=None if last else norm,
            conv_only=last,
        )

    class AutoEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = build_network(encoder_arch).features  # the classifier's encoder
            top = base * 2 ** (depth - 1)
            self.bottleneck = block(top, latent, 1)
            layers: list[nn.Module] = []
            channels = latent
            for level in reversed(range(depth)):
                width = base * 2**level
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), block(channels, width, 3)]
                channels = width
            layers.append(block(channels, int(arch["in_channels"]), 1, last=True))
            self.decoder = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.decoder(self.bottleneck(self.features(x)))  # type: ignore[operator]
            if out.shape[-2:] != x.shape[-2:]:  # sizes not divisible by 2**depth
                out = F.interpolate(out, size=x.shape[-2:], mode="bilinear")
            return out  # type: ignore[no-any-return]

    return AutoEncoder()


QUALITY_COLUMNS = ("recon_mse", "recon_mae", "psnr", "ssim")  # an autoencoder's predictions


def reconstruction_quality(network: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Per-image reconstruction quality of an autoencoder, N×4 float32 in the order of
    ``QUALITY_COLUMNS`` (see ``quality``)."""
    import torch

    out: list[np.ndarray] = []
    network.eval()
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            clean = torch.from_numpy(np.array(x[start : start + batch_size], dtype=np.float32))
            out.append(quality(clean, network(clean).float()).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 4), np.float32)


def quality(clean: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """N×4: mean squared and absolute error (``recon_mse`` is the anomaly score and the
    data-quality signal), PSNR and SSIM (MONAI's), both with the input image's own range
    (max - min) as data range, since the images are z-scored rather than in [0, 1]."""
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    flat = (recon - clean).flatten(1)
    mse, mae = flat.pow(2).mean(1), flat.abs().mean(1)
    lo = clean.flatten(1).amin(1).view(-1, 1, 1, 1)
    rng = (clean.flatten(1).amax(1).view(-1, 1, 1, 1) - lo).clamp_min(1e-6)
    a, b = (clean - lo) / rng, (recon - lo) / rng  # the input's range → [0, 1]
    psnr = 10 * torch.log10(1.0 / (a - b).flatten(1).pow(2).mean(1).clamp_min(1e-10))
    ssim_map, _ = compute_ssim_and_cs(
        b,
        a,
        spatial_dims=2,
        kernel_size=(7, 7),
        kernel_sigma=(1.5, 1.5),
        data_range=1.0,
        kernel_type="gaussian",
        k1=0.01,
        k2=0.03,
    )
    return torch.stack([mse, mae, psnr, ssim_map.flatten(1).mean(1)], dim=1)
