"""The DataModule: train/val only, seeded shuffling, augmentation on the training split only
(a MONAI dictionary transform that moves a mask with its image), targets from the task
(images without one left out), images with or without a channel axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import AugmentationSection
from pipeline.errors import ConfigError, InputError
from pipeline.tasks import make_task
from pipeline.training.datasets import (
    ArrayDataset,
    BatchAugment,
    RadDataModule,
    load_split,
    make_datamodule,
)
from tests.model.conftest import set_target, write_preprocessed

STRONG = BatchAugment(rotation_deg=20, flip=True, scale=0.2, intensity=0.2)


def epoch(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_batches_shapes_and_labels(tiny_data: Path) -> None:
    dm = RadDataModule(tiny_data, batch_size=16, seed=0)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1}
    assert dm.image_shape == (1, 32, 32)
    raw_y = np.load(tiny_data / "train_y.npy")
    assert dm.task.state["class_counts"] == [(raw_y == 0).sum(), (raw_y == 1).sum()]
    assert dm.task.n_outputs == 1 and dm.task.monitor == "val_auc"


def test_val_is_unshuffled_and_unaugmented(tiny_data: Path) -> None:
    dm = RadDataModule(tiny_data, batch_size=10, seed=0, augment=STRONG)
    x, y = epoch(dm.val_dataloader())
    np.testing.assert_array_equal(x.numpy(), np.load(tiny_data / "val_x.npy"))
    np.testing.assert_array_equal(y.numpy(), np.load(tiny_data / "val_y.npy"))


def test_train_shuffle_is_seeded_and_complete(tiny_data: Path) -> None:
    raw = np.load(tiny_data / "train_x.npy")
    orders = []
    for seed in (0, 0, 1):
        x, _ = epoch(RadDataModule(tiny_data, batch_size=16, seed=seed).train_dataloader())
        orders.append(x.sum(dim=(1, 2, 3)).numpy())
        # augmentation off: every image exactly once, unchanged
        np.testing.assert_allclose(np.sort(orders[-1]), np.sort(raw.sum(axis=(1, 2, 3))), rtol=1e-5)
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])


def test_augmentation_changes_train_batches_only(tiny_data: Path) -> None:
    plain = make_datamodule(tiny_data, _train_cfg(enabled=False), seed=0)
    augmented = make_datamodule(tiny_data, _train_cfg(enabled=True), seed=0)
    assert plain.augment is None and augmented.augment is not None
    xp, yp = epoch(plain.train_dataloader())
    xa, ya = epoch(augmented.train_dataloader())
    torch.testing.assert_close(yp, ya)  # same shuffled order, same labels
    assert not torch.allclose(xp, xa)
    torch.testing.assert_close(
        epoch(plain.val_dataloader())[0], epoch(augmented.val_dataloader())[0]
    )
    # and a second epoch draws new augmentations
    xa2, _ = epoch(augmented.train_dataloader())
    assert not torch.allclose(xa, xa2)


def _train_cfg(**aug: object):  # type: ignore[no-untyped-def]
    from pipeline.config import TrainSection

    return TrainSection(batch_size=16, augmentation=AugmentationSection(**aug))  # type: ignore[arg-type]


def test_augmentation_config() -> None:
    assert BatchAugment.from_config(AugmentationSection(enabled=False)) is None
    assert BatchAugment.from_config(AugmentationSection(strength=0.0, flip=False)) is None
    aug = BatchAugment.from_config(AugmentationSection(strength=0.5, rotation_deg=10, scale=0.2))
    assert aug is not None
    assert aug.rotation == pytest.approx(np.radians(5)) and aug.scale == pytest.approx(0.1)


def test_flip_only_augmentation_is_an_exact_flip() -> None:
    x = torch.randn(64, 1, 8, 8)
    out = BatchAugment(0, True, 0, 0).image(x, torch.Generator().manual_seed(0))
    kinds = set()
    for a, b in zip(x, out, strict=True):
        for dims in ((), (2,), (1,), (1, 2)):
            if torch.allclose(b, a.flip(dims) if dims else a, atol=1e-5):
                kinds.add(dims)
                break
        else:
            pytest.fail("an image was not an exact flip of its input")
    assert len(kinds) == 4


def test_rotation_zoom_and_intensity_change_images() -> None:
    x = torch.randn(8, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    for aug in (BatchAugment(30, False, 0, 0), BatchAugment(0, False, 0.3, 0)):
        out = aug.image(x, g)
        assert out.shape == x.shape and not torch.allclose(out, x)
    out = BatchAugment(0, False, 0, 0.2).image(x, g)
    for a, b in zip(x, out, strict=True):  # b = a·gain + shift
        gain, shift = np.polyfit(a.flatten().numpy(), b.flatten().numpy(), 1)
        assert 0.8 <= gain <= 1.2 and -0.2 <= shift <= 0.2


def test_mask_keys_are_warped_with_the_image() -> None:
    """The same random affine moves image and mask (nearest-neighbour: labels stay labels);
    intensity jitter touches the image only."""
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(6, 1, 16, 16)
    image[:, :, 2:7, 3:9] = 1.0
    mask = (image[:, 0] > 0.5).long()  # N×H×W class indices
    aug = BatchAugment(25, True, 0.2, 0.3, mask_keys=("mask",))
    out = aug({"image": image, "mask": mask}, g)
    assert out["mask"].dtype == torch.int64 and set(out["mask"].unique().tolist()) <= {0, 1}
    assert not torch.equal(out["mask"], mask)
    moved = BatchAugment(25, True, 0.2, 0.0, mask_keys=("mask",))(
        {"image": image, "mask": mask}, torch.Generator().manual_seed(0)
    )
    # without intensity jitter the warped image, thresholded, is the warped mask
    agree = ((moved["image"][:, 0] > 0.5).long() == moved["mask"]).float().mean()
    assert agree > 0.97


def test_memmap_path_equals_in_memory(tiny_data: Path) -> None:
    x, targets = load_split(tiny_data, "train")
    in_memory = ArrayDataset(x, targets.values)
    streamed = ArrayDataset(x, targets.values, in_memory_limit_bytes=0)
    assert in_memory.in_memory and not streamed.in_memory
    idx = [5, 1, 40, 2]
    torch.testing.assert_close(in_memory.__getitems__(idx), streamed.__getitems__(idx))
    rows = np.array([3, 7, 11, 50, 60])  # a subset, as when some images lack the target
    kept = ArrayDataset(x, targets.values[rows], rows=rows)
    kept_streamed = ArrayDataset(x, targets.values[rows], in_memory_limit_bytes=0, rows=rows)
    got = kept.__getitems__([4, 0, 2])
    torch.testing.assert_close(got, kept_streamed.__getitems__([4, 0, 2]))
    np.testing.assert_array_equal(got[0].numpy(), np.asarray(x[[60, 3, 11]]))


def test_images_without_a_channel_axis_get_one(tmp_path: Path) -> None:
    data = write_preprocessed(tmp_path / "d", n_train=12, n_val=6, size=8)
    for split in ("train", "val"):
        np.save(data / f"{split}_x.npy", np.load(data / f"{split}_x.npy")[:, 0])  # N×S×S
    dm = RadDataModule(data, batch_size=4)
    assert dm.image_shape == (1, 8, 8)
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 1, 8, 8)


def test_rows_without_a_target_are_left_out_and_counted(graded_data: Path) -> None:
    task = make_task("regression", "lesion_diameter_mm")
    dm = RadDataModule(graded_data, batch_size=8, task=task)
    dm.setup()
    _, targets = load_split(graded_data, "train", task)
    assert targets.n_missing == 32 and len(targets.rows) == 64  # a third has no lesion
    assert len(dm.train_set) == 64 and dm.train_set.y.dtype == torch.float32  # type: ignore[union-attr]
    assert dm.notes[0] == (
        "train: 64 of 96 images have 'lesion_diameter_mm' (32 without it left out)"
    )
    grade = RadDataModule(graded_data, task=make_task("classification", "grade"))
    grade.setup()
    assert grade.task.n_classes == 3 and grade.task.n_outputs == 3
    assert len(grade.train_set) == 96  # type: ignore[arg-type]


def test_only_train_and_val_can_be_opened(tiny_data: Path) -> None:
    with pytest.raises(ValueError, match="only"):
        load_split(tiny_data, "test")


def test_missing_or_bad_input_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="preprocess"):
        RadDataModule(tmp_path / "nowhere").setup()
    data = write_preprocessed(tmp_path / "d", n_train=8, n_val=4, size=8)
    set_target(data, "train", "label", np.zeros(8, dtype=np.int64))
    with pytest.raises(InputError, match="every class"):
        RadDataModule(data).setup()
    set_target(data, "train", "label", [0, 1, 0, 1, 0, 1, 0, 2])
    set_target(data, "val", "label", [0, 1, 0, 3])
    with pytest.raises(InputError, match="class 3 of 'label'"):
        RadDataModule(data).setup()
    set_target(data, "val", "label", [0.0, 0.5, 1.0, 1.0])
    with pytest.raises(InputError, match="class indices"):
        RadDataModule(data).setup()
    set_target(data, "val", "label", [-1, -1, -1, -1])
    with pytest.raises(InputError, match="no image with a target"):
        RadDataModule(data).setup()
    np.save(data / "val_x.npy", np.zeros((3, 1, 8, 8), dtype=np.float32))
    with pytest.raises(InputError, match="3 images but the val index has 4 rows"):
        RadDataModule(data).setup()
    with pytest.raises(ConfigError, match="candidate targets: label"):
        RadDataModule(data, task=make_task("regression", "nope")).setup()


def test_worker_processes_give_the_same_batches(tiny_data: Path) -> None:
    main = RadDataModule(tiny_data, batch_size=16, seed=0)
    workers = RadDataModule(tiny_data, batch_size=16, seed=0, num_workers=1)
    torch.testing.assert_close(epoch(main.train_dataloader()), epoch(workers.train_dataloader()))
    augmented = RadDataModule(tiny_data, batch_size=16, seed=0, num_workers=1, augment=STRONG)
    x, _ = epoch(augmented.train_dataloader())
    assert torch.isfinite(x).all() and not torch.allclose(x, epoch(main.train_dataloader())[0])
