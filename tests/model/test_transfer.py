"""Transfer learning (``train.init``), freezing, and ``train.label_fraction``.

A small autoencoder is trained once per module on smooth images and saved like ``train``
saves models (safetensors + JSON); classifiers are then initialised from it through a local
file and through a real MLflow registry (SQLite store in a temporary folder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from pipeline.errors import ConfigError
from pipeline.models.networks import save_model
from pipeline.tasks import get_task
from pipeline.training import transfer
from tests.model.ae_fixtures import write_smooth
from tests.model.conftest import set_target, tiny_params
from tests.model.test_autoencoder import ae_params, fit


@pytest.fixture(scope="module")
def smooth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smooth(tmp_path_factory.mktemp("smooth"), {"train": 96, "val": 48})


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory, smooth: Path) -> Path:
    """A trained autoencoder saved as ``model.safetensors`` + ``model.json``."""
    root = tmp_path_factory.mktemp("ae")
    net, data = fit(ae_params(root, smooth), epochs=2)
    from pipeline.training.lit_module import TaskModule

    params = ae_params(root, smooth)
    arch = TaskModule(data.task, params.train, params.model, 32, 1).arch
    return save_model(net, {"architecture": arch, "output": data.task.output_spec()}, root / "m")


def classifier(tmp_path: Path, data: Path, **train: Any) -> Any:
    """A TaskModule for the binary label, initialised as ``train`` says."""
    from pipeline.training.datasets import make_datamodule
    from pipeline.training.lit_module import TaskModule

    params = tiny_params(tmp_path, data, **train)
    dm = make_datamodule(data, params.train, 0, task=get_task(params))
    return TaskModule(dm.task, params.train, params.model, 32, 1), dm, params


def encoder_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k.startswith("features.")}


def test_transferred_weights_equal_the_source_after_loading(
    tmp_path: Path, smooth: Path, source_dir: Path
) -> None:
    source = load_file(str(source_dir / "model.safetensors"))
    weights = str(source_dir / "model.safetensors")
    module, _, _ = classifier(tmp_path, smooth, init="file", init_source=weights)
    loaded = encoder_state(module.net)
    assert loaded and all(torch.equal(loaded[k], source[k]) for k in loaded)
    assert set(module.init_source.layers) == set(loaded)  # the encoder, not the head
    assert module.init_source.sha256 and module.init_source.resolved.endswith(".safetensors")
    # a bare .safetensors with its architecture in <stem>.json works the same
    shutil.copy(weights, tmp_path / "enc.safetensors")
    meta = json.loads((source_dir / "model.json").read_text())
    (tmp_path / "enc.json").write_text(json.dumps(meta["architecture"]))
    bare = str(tmp_path / "enc.safetensors")
    again, _, _ = classifier(tmp_path, smooth, init="file", init_source=bare)
    assert all(torch.equal(encoder_state(again.net)[k], source[k]) for k in loaded)
    scratch, _, _ = classifier(tmp_path, smooth)
    assert scratch.init_source is None
    assert not torch.equal(
        encoder_state(scratch.net)["features.0.conv.weight"], source["features.0.conv.weight"]
    )


def test_mismatched_architecture_names_the_layers(
    tmp_path: Path, smooth: Path, source_dir: Path
) -> None:
    weights = str(source_dir / "model.safetensors")
    with pytest.raises(
        ConfigError,
        match=r"features\.0\.conv\.weight: shape \(8, 1, 3, 3\) in the source, \(16, 1, 3, 3\) here",
    ):
        classifier(tmp_path, smooth, init="file", init_source=weights, base_width=16)
    with pytest.raises(ConfigError, match=r"features\.2\.conv\.weight: in the source, missing"):
        classifier(tmp_path, smooth, init="file", init_source=weights, depth=1)
    # a whole-network source (a classifier) must match every layer, the head included
    graded = Path(shutil.copytree(smooth, tmp_path / "graded"))
    for split in ("train", "val"):
        set_target(graded, split, "grade", np.arange(48 if split == "val" else 96) % 3)
    module, _, _ = classifier(tmp_path, smooth)
    save_model(module.net, {"architecture": module.arch}, tmp_path / "clf")
    clf = str(tmp_path / "clf" / "model.safetensors")
    with pytest.raises(ConfigError, match="not a radops autoencoder"):
        classifier(tmp_path, smooth, init="autoencoder", init_source=clf)
    loaded, _, _ = classifier(tmp_path, smooth, init="file", init_source=clf)
    assert len(loaded.init_source.layers) == len(load_file(clf))  # every layer
    with pytest.raises(
        ConfigError, match=r"head\.weight: shape \(1, 32\) in the source, \(3, 32\)"
    ):
        classifier(tmp_path, graded, init="file", init_source=clf, task={"target": "grade"})


class Snapshots(Callback):
    """The encoder's weights and batch-norm statistics after every epoch."""

    def __init__(self) -> None:
        self.encoder: list[dict[str, torch.Tensor]] = []
        self.head: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.encoder.append(encoder_state(pl_module.net))  # type: ignore[arg-type]
        self.head.append(pl_module.net.head.weight.detach().clone())  # type: ignore[union-attr,operator]


def test_frozen_layers_do_not_change_during_frozen_epochs_and_do_after(
    tmp_path: Path, smooth: Path, source_dir: Path
) -> None:
    from pipeline.training.lit_module import make_trainer

    source = load_file(str(source_dir / "model.safetensors"))
    module, dm, params = classifier(
        tmp_path,
        smooth,
        init="file",
        init_source=str(source_dir / "model.safetensors"),
        freeze_epochs=2,
        finetune_lr_factor=0.5,
    )
    snaps = Snapshots()
    trainer = make_trainer(params.train, max_epochs=3, callbacks=[snaps], checkpointing=False)
    trainer.fit(module, datamodule=dm)
    lrs = sorted(
        g["initial_lr"] if "initial_lr" in g else g["lr"]
        for g in trainer.optimizers[0].param_groups
    )
    assert lrs == pytest.approx([0.005, 0.01])  # transferred layers at lr × 0.5
    for epoch in (0, 1):  # frozen: weights and running statistics untouched
        assert all(
            torch.equal(snaps.encoder[epoch][k], source[k])
            for k in source
            if k.startswith("features.")
        )
    assert not torch.equal(snaps.head[0], snaps.head[1])  # the head trained meanwhile
    changed = [k for k in snaps.encoder[2] if not torch.equal(snaps.encoder[2][k], source[k])]
    assert "features.0.conv.weight" in changed  # unfrozen from epoch 2 on
    assert all(p.requires_grad for p in module.net.parameters())


def test_registry_source_is_resolved_pinned_and_recorded(
    tmp_path: Path, smooth: Path, mlflow_uri: str
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.io import read_json
    from pipeline.tracking import configure
    from pipeline.training import train

    ae = ae_params(tmp_path / "ae", smooth)
    ae = ae.model_copy(update={"base": ae.base.model_copy(update={"tracking_uri": mlflow_uri})})
    ae_run = train.run(ae, train.Paths.from_params(ae))
    configure(ae)
    client = MlflowClient()
    first = mlflow.register_model(ae_run.model_uri, "radops-autoencoder")
    client.set_registered_model_alias("radops-autoencoder", "champion", first.version)

    params = tiny_params(tmp_path, smooth, mlflow_uri, init="autoencoder", max_epochs=1)
    pin = transfer.write_pin(params, tmp_path / "init")
    assert pin["resolved"] == f"models:/radops-autoencoder/{first.version}"
    assert pin["version"] == str(first.version) and pin["run_id"] == ae_run.run_id
    # the alias moves on; the pinned version stays what train uses (a reproducible rerun)
    second = mlflow.register_model(ae_run.model_uri, "radops-autoencoder")
    client.set_registered_model_alias("radops-autoencoder", "champion", second.version)
    assert transfer.pinned(params.train, tmp_path / "init") == pin
    shutil.copytree(tmp_path / "init", transfer.INIT_DIR)  # where train looks (cwd = tmp_path)

    result = train.run(params, train.Paths.from_params(params))
    tags = MlflowClient().get_run(result.run_id).data.tags
    assert tags["radops.init_version"] == str(first.version)
    assert tags["radops.init_source"] == transfer.DEFAULT_AUTOENCODER_URI  # as configured
    assert tags["radops.init_source_run"] == ae_run.run_id
    meta = read_json(params.train.out_dir / "model.json")
    assert meta["init"]["radops.init_resolved"] == pin["resolved"]
    source = load_file(str(ae.train.out_dir / "model.safetensors"))
    trained = load_file(str(params.train.out_dir / "model.safetensors"))
    assert trained["features.0.conv.weight"].shape == source["features.0.conv.weight"].shape
    # registry init by explicit version, from a fresh process cache
    transfer._CACHE.clear()
    uri = f"models:/radops-autoencoder/{second.version}"
    module, _, _ = classifier(tmp_path, smooth, init="registry", init_source=uri)
    assert module.init_source.version == str(second.version)
    assert torch.equal(
        module.net.state_dict()["features.0.conv.weight"], source["features.0.conv.weight"]
    )
    with pytest.raises(ConfigError, match="no such registered model"):
        classifier(tmp_path, smooth, init="registry", init_source="models:/nothing@champion")


def test_label_fraction_keeps_a_seeded_stratified_subset_of_patients(
    tmp_path: Path, smooth: Path
) -> None:
    from pipeline.training.datasets import make_datamodule

    def train_rows(fraction: float, seed: int) -> tuple[np.ndarray, int, list[str]]:
        params = tiny_params(tmp_path, smooth, label_fraction=fraction)
        dm = make_datamodule(smooth, params.train, seed, task=get_task(params))
        dm.setup()
        assert dm.train_set is not None and dm.val_set is not None
        return dm.train_set.rows, len(dm.val_set), dm.notes

    full, n_val, _ = train_rows(1.0, 0)
    quarter, n_val_q, notes = train_rows(0.25, 0)
    assert n_val_q == n_val == 48  # validation untouched
    assert 20 <= len(quarter) <= 30 and set(quarter) < set(full)
    assert np.array_equal(quarter, train_rows(0.25, 0)[0])  # same seed, same patients
    assert not np.array_equal(quarter, train_rows(0.25, 1)[0])
    assert any("label_fraction 0.25" in n for n in notes)
    labels = np.load(smooth / "train_y.npy")[quarter]
    assert set(labels) == {0, 1}  # both classes even in a small subset
