"""Transfer learning: where a network's first weights come from (``train.init``), freezing
them for a while (``train.freeze_epochs``) and training them slower (``finetune_lr_factor``).

* ``scratch``: random initialisation (as before).
* ``autoencoder``: the encoder (``features.*``) of a radops autoencoder, whose encoder is the
  classifier's feature extractor by construction (``networks.build_autoencoder``);
  ``init_source`` is a ``models:/`` URI or a model folder, default
  ``models:/radops-autoencoder@champion``.
* ``registry``: every weight of a registered radops model (``models:/name@alias`` or
  ``models:/name/N``), e.g. another site's champion of the same architecture.
* ``file``: a ``.safetensors`` file with its JSON architecture next to it (``model.json`` or
  ``<stem>.json``, either a whole ``model.json`` or the architecture dict), or a model folder.

Weights are read with ``safetensors`` only: nothing is unpickled. A layer the source has that
this network lacks, or has with another shape (or, for ``registry``/``file``, a layer this
network has that the source lacks) is a ConfigError naming each mismatched layer.

Reproducibility: a ``models:/name@alias`` is resolved to its version number once, by the DVC
stage ``init`` (``python -m pipeline.training.transfer``), which writes
``models/init/init_source.json`` (the pinned URI, the version and the weights' SHA-256);
``train`` depends on that file and uses the pinned version, so a new champion reruns train and
an unchanged one does not. The MLflow run gets tags ``radops.init*`` (the source's version,
run id and weights hash: the lineage).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback

from pipeline import catalog
from pipeline.errors import ConfigError, RadopsError

if TYPE_CHECKING:
    import lightning as L
    import torch
    from torch import nn

    from pipeline.config import Params, TrainSection

log = logging.getLogger("radops.transfer")

DEFAULT_AUTOENCODER_URI = "models:/radops-autoencoder@champion"
INIT_DIR = catalog.INIT_DIR  # the DVC stage ``init``'s output folder
ENCODER_PREFIX = "features."


@dataclass(frozen=True)
class InitSource:
    """Where the weights came from: ``source`` as configured, ``resolved`` (a pinned
    ``models:/name/N`` or an absolute path), the registry ``version`` and ``run_id`` when
    known, the weights file's ``sha256`` and the transferred ``layers``."""

    init: str
    source: str
    resolved: str
    version: str = ""
    run_id: str = ""
    sha256: str = ""
    layers: tuple[str, ...] = ()

    def tags(self) -> dict[str, str]:
        return {
            "radops.init": self.init,
            "radops.init_source": self.source[:500],
            "radops.init_resolved": self.resolved[:500],
            "radops.init_version": self.version,
            "radops.init_source_run": self.run_id,
            "radops.init_sha256": self.sha256,
        }


def requested_source(cfg: TrainSection) -> str:
    if cfg.init == "autoencoder" and not cfg.init_source:
        return DEFAULT_AUTOENCODER_URI
    if not cfg.init_source:
        raise ConfigError(f"train.init {cfg.init!r} needs train.init_source")
    return cfg.init_source


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry_version(uri: str) -> tuple[str, str, str]:
    """``(models:/name/N, N, run id)`` of a ``models:/name@alias`` or ``models:/name/N``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    rest = uri.removeprefix("models:/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = rest.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except (MlflowException, ValueError) as exc:
        raise ConfigError(f"train.init_source {uri!r}: no such registered model ({exc})") from None
    return f"models:/{name}/{version.version}", str(version.version), str(version.run_id or "")


def _architecture_json(weights: Path) -> dict[str, Any]:
    for candidate in (weights.parent / catalog.MODEL_META_FILE, weights.with_suffix(".json")):
        if candidate.is_file():
            doc = json.loads(candidate.read_text())
            return doc if "architecture" in doc else {"architecture": doc}
    raise ConfigError(
        f"train.init_source {weights}: no JSON architecture next to it "
        f"({catalog.MODEL_META_FILE} or {weights.with_suffix('.json').name})"
    )


def fetch(init: str, source: str, workdir: Path) -> tuple[Path, dict[str, Any], InitSource]:
    """``(weights file, its model.json, provenance)`` for a source (no pickle: the weights
    are only ever read by ``safetensors``)."""
    from pipeline.models.locate import check_no_climb, find_model_dir
    from pipeline.models.networks import WEIGHTS_DIGEST_KEY

    version = run_id = ""
    if source.startswith(("models:/", "runs:/")):
        import mlflow

        check_no_climb(source, "train.init_source")
        resolved = source
        if source.startswith("models:/"):
            resolved, version, run_id = _registry_version(source)
        model_dir = find_model_dir(
            mlflow.artifacts.download_artifacts(resolved, dst_path=str(workdir))
        )
        weights = model_dir / catalog.WEIGHTS_FILE
        meta = json.loads((model_dir / catalog.MODEL_META_FILE).read_text())
    else:
        path = Path(source)
        if path.is_dir():
            path = find_model_dir(path) / catalog.WEIGHTS_FILE
        if not path.is_file() or path.suffix != ".safetensors":
            raise ConfigError(
                f"train.init_source {source!r}: not a .safetensors file or model folder"
            )
        weights, meta, resolved = path, _architecture_json(path), str(path.resolve())
    digest = _sha256(weights)
    recorded = meta.get(WEIGHTS_DIGEST_KEY)
    if recorded and recorded != digest:  # model.json's own record (networks.save_model)
        raise ConfigError(
            f"train.init_source {source!r}: {weights.name} is not the file its "
            f"{catalog.MODEL_META_FILE} was saved with (SHA-256 differs); refusing it"
        )
    info = InitSource(init, source, resolved, version, run_id, digest)
    return weights, meta, info


def transfer_keys(init: str, meta: dict[str, Any], source_keys: list[str]) -> list[str]:
    """The source's weights that are transferred: an autoencoder's encoder, else all."""
    from pipeline.models.networks import AUTOENCODER

    is_ae = meta.get("architecture", {}).get("network") == AUTOENCODER
    if init == "autoencoder" and not is_ae:
        raise ConfigError("train.init autoencoder: the source model is not a radops autoencoder")
    return [k for k in source_keys if k.startswith(ENCODER_PREFIX)] if is_ae else source_keys


def check_compatible(
    target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], keys: list[str], whole: bool
) -> None:
    """ConfigError naming every mismatched layer (missing, or another shape)."""
    problems = [f"{k}: in the source, missing in this network" for k in keys if k not in target]
    problems += [
        f"{k}: shape {tuple(source[k].shape)} in the source, {tuple(target[k].shape)} here"
        for k in keys
        if k in target and tuple(source[k].shape) != tuple(target[k].shape)
    ]
    if whole:
        problems += [
            f"{k}: in this network, missing in the source" for k in target if k not in source
        ]
    if problems:
        shown = "; ".join(problems[:12]) + (
            f"; ... ({len(problems)} in all)" if len(problems) > 12 else ""
        )
        raise ConfigError(
            "train.init_source has an incompatible architecture (check model.depth, "
            f"base_width, kernel_size, batch_norm and the task): {shown}"
        )


_CACHE: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], InitSource]] = {}


def load_source(init: str, source: str) -> tuple[dict[str, Any], dict[str, Any], InitSource]:
    """``(state dict, meta, provenance)``; cached per process (tuning builds many modules)."""
    from safetensors.torch import load_file

    if (init, source) not in _CACHE:
        with tempfile.TemporaryDirectory(prefix="radops-init-") as tmp:
            weights, meta, info = fetch(init, source, Path(tmp))
            _CACHE[(init, source)] = (load_file(str(weights)), meta, info)
    return _CACHE[(init, source)]


def initialise(net: nn.Module, cfg: TrainSection, source: str | None = None) -> InitSource | None:
    """Load ``train.init``'s weights into ``net`` (None for ``scratch``); ``source``
    overrides ``train.init_source``; otherwise the version pinned in ``init_source.json`` (if
    it was pinned for this source) is used, and must still have the pinned SHA-256."""
    if cfg.init == "scratch":
        return None
    pin = pinned(cfg)
    source = source or (pin or {}).get("resolved") or requested_source(cfg)
    state, meta, info = load_source(cfg.init, source)
    if pin and source == pin.get("resolved") and pin.get("sha256") not in ("", info.sha256):
        raise ConfigError(
            f"train.init_source {source!r} changed since it was pinned in {pin_file()} "
            "(another SHA-256); run `dvc repro -f init` to pin it again"
        )
    keys = transfer_keys(cfg.init, meta, list(state))
    target = net.state_dict()
    check_compatible(target, state, keys, whole=len(keys) == len(state))
    net.load_state_dict({k: state[k] for k in keys}, strict=False)
    log.info("initialised %d tensors from %s (%s)", len(keys), info.resolved, cfg.init)
    configured = requested_source(cfg)  # as in params.yaml; ``resolved`` says what was loaded
    return InitSource(**(asdict(info) | {"layers": tuple(keys), "source": configured}))


# --------------------------------------------------------------------------- DVC pin
def pin_file(folder: Path = INIT_DIR) -> Path:
    return folder / catalog.INIT_SOURCE_FILE


def pinned(cfg: TrainSection, folder: Path = INIT_DIR) -> dict[str, Any] | None:
    """``init_source.json`` (pinned ``resolved`` URI, ``sha256``) when it was written for
    this ``train.init`` and ``init_source``, else None."""
    path = pin_file(folder)
    if not path.is_file():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("init") != cfg.init or doc.get("source") != requested_source(cfg):
        return None
    return doc


def write_pin(params: Params, folder: Path = INIT_DIR) -> dict[str, Any]:
    """Resolve ``train.init_source`` now and write ``init_source.json`` (the DVC stage)."""
    from pipeline.io import write_json
    from pipeline.tracking import configure

    cfg = params.train
    doc: dict[str, Any] = {"init": cfg.init}
    if cfg.init != "scratch":
        configure(params)
        with tempfile.TemporaryDirectory(prefix="radops-init-") as tmp:
            _, _, info = fetch(cfg.init, requested_source(cfg), Path(tmp))
        doc |= {k: v for k, v in asdict(info).items() if k not in ("layers", "init")}
    write_json(pin_file(folder), doc)
    return doc


# --------------------------------------------------------------------------- training
def param_groups(net: nn.Module, info: InitSource | None, cfg: TrainSection) -> Any:
    """The optimiser's parameters: transferred ones at ``lr · finetune_lr_factor``."""
    if info is None or cfg.finetune_lr_factor == 1.0:
        return net.parameters()
    names = set(info.layers)
    moved = [p for n, p in net.named_parameters() if n in names]
    rest = [p for n, p in net.named_parameters() if n not in names]
    return [{"params": moved, "lr": cfg.lr * cfg.finetune_lr_factor}, {"params": rest}]


class FreezeTransferred(Callback):
    """Transferred layers frozen for the first ``epochs`` epochs: no gradient, and their
    normalisation/dropout modules in eval mode (batch-norm running statistics unchanged);
    from epoch ``epochs`` on they train like the rest."""

    def __init__(self, layers: tuple[str, ...], epochs: int, attr: str = "net") -> None:
        self.layers, self.epochs, self.attr = set(layers), epochs, attr

    def _apply(self, module: L.LightningModule, frozen: bool) -> None:
        net: nn.Module = getattr(module, self.attr)
        for name, p in net.named_parameters():
            if name in self.layers:
                p.requires_grad_(not frozen)
        if frozen:
            for name, sub in net.named_modules():
                own = [f"{name}.{n}" if name else n for n, _ in sub.named_parameters(recurse=False)]
                own += [f"{name}.{n}" if name else n for n, _ in sub.named_buffers(recurse=False)]
                if own and all(n in self.layers for n in own):
                    sub.eval()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module, trainer.current_epoch < self.epochs)


def callbacks(info: InitSource | None, cfg: TrainSection) -> list[Callback]:
    """``[FreezeTransferred]`` when layers were transferred and ``freeze_epochs`` > 0."""
    if info is None or cfg.freeze_epochs <= 0:
        return []
    return [FreezeTransferred(info.layers, cfg.freeze_epochs)]


if __name__ == "__main__":  # the DVC stage ``init``
    import sys

    from pipeline.config import load_params

    try:
        print(json.dumps(write_pin(load_params()), indent=1))
    except RadopsError as exc:
        print(f"radops: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
