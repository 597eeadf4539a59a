"""Issue 15's network families (``model.name: resnet / densenet``) and ``model.input_size``:
each family trains for each task's output, saves and loads without pickle to identical
predictions, is served by MLflow identically, and is refused where it does not apply."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import ModelSection, TrainSection
from pipeline.errors import ConfigError
from pipeline.models.networks import architecture, build_network, load_model, predict, save_model
from pipeline.tasks import ClassificationTask, RegressionTask, SegmentationTask, Task
from pipeline.training.lit_module import TaskModule
from tests.model.conftest import tiny_params

SMALL_TRAIN = TrainSection(batch_size=8, accelerator="cpu", devices=1)
TASKS: dict[str, tuple[Task, Any]] = {
    "binary": (ClassificationTask(state={"n_classes": 2, "class_counts": [1, 1]}), (8,)),
    "three_classes": (
        ClassificationTask(state={"n_classes": 3, "class_counts": [1, 1, 1]}),
        (8, 3),
    ),
    "regression": (
        RegressionTask(
            target="size", state={"mean": 1.0, "std": 2.0, "min": 0.0, "max": 5.0, "n_train": 8}
        ),
        (8,),
    ),
}


def small(name: str, **model: Any) -> ModelSection:
    sizes = {"depth": 1, "base_width": 4} | model
    return ModelSection(name=name, **sizes)  # type: ignore[arg-type]


def targets(kind: str) -> torch.Tensor:
    if kind == "regression":
        return torch.linspace(0, 5, 8)
    return torch.arange(8) % (3 if kind == "three_classes" else 2)


@pytest.mark.parametrize("family", ["resnet", "densenet"])
@pytest.mark.parametrize("kind", list(TASKS))
def test_a_family_fits_the_task_and_trains_a_step(family: str, kind: str) -> None:
    task, shape = TASKS[kind]
    torch.manual_seed(0)
    module = TaskModule(task, SMALL_TRAIN, small(family), image_size=16)
    assert module.arch["name"] == family and module.planar
    x, y = torch.randn(8, 1, 16, 16), targets(kind)
    outputs = module(x)
    assert outputs.shape == shape
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    before = module.training_loss(outputs, y)
    assert torch.isfinite(before)
    before.backward()
    opt.step()
    with torch.no_grad():
        assert module.training_loss(module(x), y) != before  # the step changed the network


@pytest.mark.parametrize("family", ["resnet", "densenet"])
def test_save_and_load_predict_identically(family: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    arch = architecture(small(family, dropout=0.3), 16, 1, 3)
    net = build_network(arch).eval()
    meta = {"architecture": arch, "output": {"transform": "softmax"}}
    save_model(net, meta, tmp_path / "m")
    loaded, loaded_meta = load_model(tmp_path / "m")
    assert loaded_meta["architecture"]["name"] == family
    x = np.random.default_rng(0).normal(size=(5, 1, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(predict(net, meta, x), predict(loaded, loaded_meta, x))


def test_the_default_architecture_is_unchanged() -> None:
    """``model.json`` of a default CNN gets neither a name nor an input size."""
    arch = architecture(ModelSection(), 64)
    assert "name" not in arch and "input_size" not in arch
    assert architecture(ModelSection(input_size=32), 64)["input_size"] == 32


@pytest.mark.parametrize("family", ["cnn", "resnet"])
def test_input_size_resizes_inside_the_network(family: str) -> None:
    """A 32-input network takes 64×64 arrays and equals the plain network on the bilinearly
    resized images (same weights): the resize is its first operation."""
    torch.manual_seed(2)
    resized = build_network(architecture(small(family, input_size=32), 64)).eval()
    plain = build_network(architecture(small(family), 32)).eval()
    plain.load_state_dict(resized.state_dict())  # no weights of its own: same state dict
    x = torch.randn(4, 1, 64, 64)
    small_x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear")
    with torch.no_grad():
        torch.testing.assert_close(resized(x), plain(small_x))
        assert not torch.allclose(resized(x), plain(x))  # a 64×64 input does differ
        torch.testing.assert_close(resized(small_x), plain(small_x))  # 32 in: no resize


def test_families_are_refused_where_they_do_not_apply() -> None:
    seg = SegmentationTask(state={"segments": ["lesion"]})
    with pytest.raises(ConfigError, match="unet"):
        TaskModule(seg, SMALL_TRAIN, small("resnet"), image_size=16)
    with pytest.raises(ConfigError, match="input_size"):
        TaskModule(seg, SMALL_TRAIN, small("cnn", input_size=8), image_size=16)
    binary = TASKS["binary"][0]
    transfer = SMALL_TRAIN.model_copy(update={"init": "autoencoder"})
    with pytest.raises(ConfigError, match="autoencoder"):
        TaskModule(binary, transfer, small("densenet"), image_size=16)


def test_a_resnet_served_by_mlflow_predicts_as_in_process(
    tmp_path: Path, tiny_data: Path, mlflow_uri: str
) -> None:
    """train logs ``families.py`` with the model (``radops_families``), so the pyfunc builds
    the same network: its predictions equal the saved network's."""
    import mlflow

    from pipeline.training import train

    params = tiny_params(tmp_path, tiny_data, mlflow_uri, name="resnet", max_epochs=1)
    paths = train.Paths.from_params(params)
    paths = train.Paths(tiny_data, paths.best_params, paths.out_dir, paths.checkpoint_dir)
    result = train.run(params, paths)
    network, meta = load_model(result.out_dir)
    assert meta["architecture"]["name"] == "resnet"
    x = np.load(tiny_data / "val_x.npy")[:6]
    mlflow.set_tracking_uri(mlflow_uri)
    served = mlflow.pyfunc.load_model(result.model_uri).predict(x)
    np.testing.assert_allclose(served, predict(network, meta, x), rtol=1e-6, atol=1e-7)
    # built by the logged copy, not by the radops this process happens to have
    assert "radops_families" in sys.modules
    logged = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    assert (logged / "code" / "radops_families.py").is_file()


def test_a_narrow_resnet_trains_on_64_pixel_images() -> None:
    """Width 8 at 64×64 segfaulted torch's CPU backward in channels-last (a strided 1×1
    shortcut convolution); the families therefore train in the standard layout."""
    torch.manual_seed(3)
    binary = TASKS["binary"][0]
    module = TaskModule(binary, SMALL_TRAIN, small("resnet", depth=2, base_width=8), 64)
    assert not module.channels_last
    x, y = torch.randn(32, 1, 64, 64), torch.arange(32) % 2
    module.training_loss(module(x), y).backward()
    assert all(p.grad is not None for p in module.net.parameters())
