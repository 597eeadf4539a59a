"""Segmentation: metrics against independent references (MONAI, scikit-image), empty masks,
joint image/mask augmentation, and the DICOM SEG written for predictions read back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.metrics import seg_stats


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


CASES = [
    (_disk((48, 48), 20, 20, 8), _disk((48, 48), 22, 23, 7), (0.7, 0.9)),
    (
        _disk((48, 48), 10, 10, 4) | _disk((48, 48), 35, 30, 6),
        _disk((48, 48), 11, 10, 5),
        (1.0, 1.0),
    ),
    (np.pad(np.ones((10, 20), bool), ((5, 33), (8, 20))), _disk((48, 48), 12, 18, 9), (0.5, 0.8)),
]


@pytest.mark.parametrize(("pred", "true", "spacing"), CASES)
def test_overlap_and_surface_metrics_match_monai(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float]
) -> None:
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
    )

    p = torch.from_numpy(pred[None, None].astype(np.float32))
    t = torch.from_numpy(true[None, None].astype(np.float32))
    dice, iou = seg_stats.overlap(pred, true)
    assert dice == pytest.approx(float(compute_dice(p, t)), abs=1e-6)
    assert iou == pytest.approx(float(compute_iou(p, t)), abs=1e-6)
    hd95, assd = seg_stats.surface_distances(pred, true, spacing)
    ref_hd = compute_hausdorff_distance(p, t, percentile=95, spacing=list(spacing))
    ref_assd = compute_average_surface_distance(p, t, symmetric=True, spacing=list(spacing))
    assert hd95 == pytest.approx(float(ref_hd), rel=1e-5)
    assert assd == pytest.approx(float(ref_assd), rel=1e-5)


def test_lesion_detection_against_skimage_components() -> None:
    from skimage.measure import label

    true = _disk((64, 64), 15, 15, 5) | _disk((64, 64), 45, 45, 6) | _disk((64, 64), 15, 50, 3)
    pred = _disk((64, 64), 16, 15, 5) | _disk((64, 64), 50, 10, 4)  # one hit, one FP blob
    n_true, detected, fp = seg_stats.lesions(pred, true)
    assert n_true == label(true, connectivity=2).max() == 3
    assert (detected, fp) == (1, 1)


def test_empty_masks_are_explicit() -> None:
    empty = np.zeros((32, 32), bool)
    blob = _disk((32, 32), 16, 16, 3)
    both = seg_stats.image_metrics(empty, empty, (0.5, 0.5))
    assert (both["dice"], both["iou"], both["hd95_mm"], both["fp"]) == (1.0, 1.0, 0.0, 0.0)
    fp = seg_stats.image_metrics(blob, empty, (0.5, 0.5))  # a false blob on an empty image
    assert fp["dice"] == 0.0 and fp["fp"] == 1.0 and fp["lesions"] == 0.0
    assert math.isnan(fp["hd95_mm"]) and fp["area_pred_mm2"] == pytest.approx(blob.sum() * 0.25)
    missed = seg_stats.image_metrics(empty, blob, (0.5, 0.5))
    assert missed["dice"] == 0.0 and missed["detected"] == 0.0 and missed["lesions"] == 1.0


def test_patient_bootstrap_and_paired_test() -> None:
    groups = np.repeat(np.arange(20), 3).astype(str)
    rng = np.random.default_rng(0)
    old = rng.uniform(0.5, 0.7, size=60)
    lo, hi = seg_stats.bootstrap_mean_ci(old, groups, 500, 0.95, 1)
    assert lo < old.mean() < hi
    _, _, p_better = seg_stats.paired_dice_test(old + 0.1, old, groups)
    _, _, p_same = seg_stats.paired_dice_test(old, old, groups)
    assert p_better < 0.01 and p_same == 1.0


def test_augmentation_keeps_image_and_mask_aligned() -> None:
    from pipeline.training.datasets import BatchAugment

    masks = torch.from_numpy(
        np.stack(
            [_disk((40, 40), 12 + 2 * i, 20, 6) | _disk((40, 40), 28, 10 + i, 4) for i in range(8)]
        )[:, None].astype(np.float32)
    )
    images = masks.clone() * 2.0 - 1.0  # the image is the mask, so they must coincide
    aug = BatchAugment(20.0, True, 0.2, 0.0, mask_keys=("mask",))
    out = aug({"image": images, "mask": masks}, torch.Generator().manual_seed(3))
    warped, wmask = out["image"], out["mask"]
    assert not torch.equal(wmask, masks)  # something moved
    assert set(torch.unique(wmask).tolist()) <= {0.0, 1.0}  # nearest: still binary
    agree = ((warped > 0) == (wmask > 0.5)).float().mean()
    assert agree > 0.98
    for i in range(len(masks)):  # each mask stays on its own image
        inter = ((warped[i] > 0) & (wmask[i] > 0.5)).sum()
        assert 2 * inter / ((warped[i] > 0).sum() + (wmask[i] > 0.5).sum()) > 0.9


def test_seg_output_round_trip(small_cohort: Any, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    from pipeline.data.seg_io import build_seg

    image = next(p for p in sorted(small_cohort.dicom_dir.rglob("IM*")) if p.is_file())
    source = pydicom.dcmread(image)
    mask = _disk((source.Rows, source.Columns), 18, 25, 7)
    seg = build_seg(
        source, mask[None], ["Lesion"], series_uid=generate_uid(), sop_uid=generate_uid()
    )
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert back.SegmentationType == "BINARY"
    uids = [u for _, _, u in back.get_source_image_uids()]
    assert uids == [source.SOPInstanceUID]
    arr = back.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(arr[0, :, :, 0] > 0, mask)


def test_targets_use_seg_masks_and_empty_negatives_only(tmp_path: Path) -> None:
    """Images with the chosen segment's SEG keep it; label-0 images without any SEG are empty
    lesion masks; a lesion image whose SEG is missing is left out (and so is every image
    without a lung mask when the lung is learned)."""
    import json

    import pandas as pd

    from pipeline import catalog
    from pipeline.tasks import make_task
    from pipeline.tasks.segmentation import SegmentationTask

    masks = np.zeros((4, 2, 8, 8), np.uint8)
    masks[0, 0, 2:4, 2:4] = 1  # image 0: lesion + lung SEG
    masks[0, 1, 1:7, 1:7] = 1
    known = [[1, 1], [0, 0], [0, 0], [1, 0]]  # 1: negative, no SEG; 2: positive, no SEG
    masks[3, 0, 5:7, 5:7] = 1  # image 3: lesion-only SEG
    pd.DataFrame({"label": [1, 0, 1, 1], "patient_id": list("abcd")}).to_parquet(
        catalog.split_file(tmp_path, "train", catalog.INDEX_SUFFIX)
    )
    np.save(catalog.split_file(tmp_path, "train", catalog.MASKS_SUFFIX), masks)
    info = {"segments": ["lesion", "lung"], "known": known, "spacing_mm": [[1.0, 1.0]] * 4}
    catalog.split_file(tmp_path, "train", catalog.MASK_INFO_SUFFIX).write_text(json.dumps(info))
    lesion = make_task("segmentation").read_targets(tmp_path, "train")
    assert list(lesion.rows) == [0, 1, 3] and lesion.n_missing == 1
    assert lesion.values.shape == (3, 1, 8, 8)
    assert lesion.values[1].sum() == 0 and lesion.values[0].sum() == 4
    both = SegmentationTask(segments=("lesion", "lung")).read_targets(tmp_path, "train")
    assert list(both.rows) == [0] and both.values.shape == (1, 2, 8, 8)


def test_promotion_compares_per_patient_dice() -> None:
    from pipeline.config import RegisterSection
    from pipeline.tasks import make_task

    rng = np.random.default_rng(0)
    truth = np.zeros((30, 1, 16, 16), np.float32)
    for i in range(30):
        truth[i, 0, 4 + i % 5 : 10 + i % 5, 4:10] = 1
    good = truth * 0.9 + 0.05
    worse = np.clip(good + rng.uniform(-0.3, 0.6, size=good.shape), 0, 1).astype(np.float32)
    groups = np.repeat(np.arange(15), 2).astype(str)
    task = make_task("segmentation").with_state({"segments": ["lesion"]})
    verdict = task.paired_test(truth, good, worse, groups, RegisterSection())
    assert verdict.better and verdict.new > verdict.champion and verdict.p_value < 0.05
    assert not task.paired_test(truth, worse, good, groups, RegisterSection()).better
